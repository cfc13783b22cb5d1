"""Durable task records: the SQLAlchemy models, the engine factory, and the functions that read and write them.

The API and the workers' signal handlers both go through ``store``; nothing else writes records.
"""
