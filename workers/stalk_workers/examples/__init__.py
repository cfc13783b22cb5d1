"""Example task modules. Load one with ``STALK_TASK_MODULES=stalk_workers.examples.documents``."""
