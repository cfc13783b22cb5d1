"""The soak benchmark's one task (bench/soak.py): it writes its task id to a file of its process,
so the benchmark counts how many times each task really ran, whatever Redis forgot."""

from __future__ import annotations

import os
from pathlib import Path

from celery import shared_task

from stalk_workers.base import IdempotentTask


@shared_task(name="soak.run", bind=True, base=IdempotentTask)
def run(self, i: int) -> int:
    # One short line appended per run: O_APPEND writes of it are whole, so the files never interleave.
    runs = Path(os.environ["SOAK_RUNS_DIR"]) / f"{os.getpid()}.runs"
    with runs.open("a") as out:
        out.write(f"{self.request.id}\n")
    return i
