"""A bare Celery app: the baseline ``bench/core_throughput.py`` measures stalk's worker against.

Plain Celery defaults on purpose (early ack, prefetch multiplier 4, no events, no signals, no
task records): what a team running Celery without stalk has. Only the broker and the result
backend come from the environment, so both workers in the benchmark use the same Redis.

    BARE_BROKER_URL=redis://127.0.0.1:6379/6 BARE_RESULT_BACKEND=redis://127.0.0.1:6379/7 \\
        celery -A bare_app worker --pool prefork --concurrency 4
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bare", broker=os.environ["BARE_BROKER_URL"], backend=os.environ["BARE_RESULT_BACKEND"])


@app.task(name="bare.echo")
def echo(*args, **kwargs) -> dict:
    """The same no-op as ``stalk.echo``: return the arguments."""
    return {"args": list(args), "kwargs": kwargs}
