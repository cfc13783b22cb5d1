"""The module ``celery -A stalk_workers.app worker -Q <queue>`` loads: the app, built on first use.

Importing this module builds nothing (the API, the operator and tests import ``create_app``
without a Celery app made from the environment); Celery's ``-A`` looks up ``app``, and only that
builds it, once, from ``Settings()``. ``create_app`` lives in ``factory.py``.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from stalk_workers.factory import create_app, default_node_name

__all__ = ["create_app", "default_node_name"]


@cache
def _app() -> Celery:
    return create_app()


def __getattr__(name: str) -> Celery:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
