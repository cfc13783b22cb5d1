"""Recovering accepted tasks whose messages Redis lost: the decision (``rules``, no I/O)."""
