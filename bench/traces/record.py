"""Record a task trace from a real run: a private Redis, a real Celery worker, a driver sending tasks.

    .venv/bin/python bench/traces/record.py [--minutes 20] [--out bench/traces/enrichment.csv]

There is no production data in this project, so the "recorded" trace of the policy simulation
(bench/policy_sim.py --trace) is recorded here, on loopback, from real parts: a ``redis-server`` on a
free port, one Celery prefork worker (``--concurrency 8``) consuming the queue, and kombu's real
priority sub-lists. What is recorded per task is what the operator would see: when the message
was published (stamped by the sender, whether the driver or a task fanning out) and how long the
worker ran it (task_prerun to task_postrun, measured in the worker process), with its priority.

The workload is the "issue enrichment" service of the Celery setup guides this project was seeded
with (an API files issues, a worker enriches each with a model call that takes "~5 seconds",
issues can be filed with priority "high"; a beat job re-processes in bulk): people file issues at
a rate that climbs from 0.3/s to 1.2/s and back over the run, a third of them with priority 6; the
model call is a sleep (there is no model here) with a median of 5 s and a long tail; every 5
minutes a scheduled task (running on the worker) fans out 80 re-enrichments at once. The driver's
arrivals are ours; the timing (publish, delivery, fan-out from a worker, measured run times) is
the real system's.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery
from celery.signals import task_postrun, task_prerun
from kombu.transport.redis import PRIORITY_STEPS, Channel
from redis import Redis

QUEUE = "enrichment"
HIGH = 6  # priority "high": kombu files it in the sub-list <queue>\x06\x166
FANOUT_EVERY = float(os.environ.get("TRACE_FANOUT_EVERY", 300))
FANOUT_TASKS = 80

app = Celery("trace", broker=os.environ.get("TRACE_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue=QUEUE, task_acks_late=True, worker_prefetch_multiplier=1)
_started: dict[str, float] = {}


def model_seconds(rng: random.Random) -> float:
    # "After ~5 seconds: Task succeeded" (the guide); a long tail capped by its 300 s time limit.
    return min(rng.lognormvariate(math.log(5), 0.8), 300.0)


@app.task(name="trace.enrich")
def enrich(seconds: float, sent_at: float) -> float:
    time.sleep(seconds)  # stands in for the model call
    return seconds


@app.task(name="trace.reenrich_all")
def reenrich_all(count: int, seed: int, sent_at: float) -> int:
    rng = random.Random(seed)
    for _ in range(count):
        enrich.apply_async((model_seconds(rng), time.time()))
    return count


@task_prerun.connect
def _prerun(task_id=None, **_):
    _started[task_id] = time.time()


@task_postrun.connect
def _postrun(task_id=None, task=None, args=None, **_):
    started = _started.pop(task_id, None)
    out = os.environ.get("TRACE_OUT")
    if started is None or out is None or task.name != "trace.enrich":
        return
    priority = (task.request.delivery_info or {}).get("priority") or 0
    line = f"{args[1]:.3f},{time.time() - started:.3f},{priority}\n"
    with open(out, "a") as f:  # one short line per write: O_APPEND keeps lines from the pool whole
        f.write(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(minutes: float, rng: random.Random) -> None:
    """Send the issues as people file them; the fan-outs are sent by a task on the worker."""
    start = time.time()
    end = start + minutes * 60
    next_fanout = start + FANOUT_EVERY / 2
    while (now := time.time()) < end:
        phase = (now - start) / (end - start)
        rate = 0.3 + 0.9 * math.sin(math.pi * phase)  # 0.3/s -> 1.2/s -> 0.3/s
        time.sleep(rng.expovariate(rate))
        enrich.apply_async((model_seconds(rng), time.time()), priority=HIGH if rng.random() < 1 / 3 else 0)
        if time.time() >= next_fanout:
            reenrich_all.apply_async((FANOUT_TASKS, rng.randrange(1 << 30), time.time()))
            next_fanout += FANOUT_EVERY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "enrichment.csv")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        parser.error("redis-server is not installed (Debian: apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="stalk-trace-") as tmp:
        port = free_port()
        raw = Path(tmp) / "raw.csv"
        env = {**os.environ, "TRACE_BROKER": f"redis://127.0.0.1:{port}/0", "TRACE_OUT": str(raw),
               "PYTHONPATH": str(Path(__file__).resolve().parent)}
        redis = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, cwd=tmp)
        worker = None
        lists = [QUEUE] + [f"{QUEUE}{Channel.sep}{step}" for step in PRIORITY_STEPS if step]
        try:
            time.sleep(0.5)
            app.conf.broker_url = env["TRACE_BROKER"]
            worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "record", "worker", "-Q", QUEUE,
                                       "--pool", "prefork", "--concurrency", "8", "--loglevel", "WARNING",
                                       "--without-gossip", "--without-mingle"],
                                      env=env, cwd=tmp)
            time.sleep(5)  # the pool forks and connects before the first issue is filed
            drive(args.minutes, random.Random(args.seed))
            # Wait for the last tasks (up to the model's 300 s limit) so every duration is recorded.
            client, deadline = Redis(port=port), time.time() + 330
            while time.time() < deadline and sum(client.llen(name) for name in lists):
                time.sleep(2)
            time.sleep(30)
        finally:
            for process in (worker, redis):
                if process is not None:
                    process.terminate()
                    process.wait(timeout=60)
        rows = sorted(tuple(map(float, line.split(","))) for line in raw.read_text().splitlines())
    first = rows[0][0]
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arrival", "duration", "priority"])
        writer.writerows([f"{sent - first:.3f}", f"{duration:.3f}", int(priority)] for sent, duration, priority in rows)
    print(f"recorded {len(rows)} tasks over {rows[-1][0] - first:.0f} s to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
