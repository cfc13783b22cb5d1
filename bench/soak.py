"""Load held through faults: tasks through the API at a steady rate while a worker is killed, the
Redis primary dies (Sentinel fails over) or Redis loses everything, and the API restarts; no
accepted task may be lost.

    .venv/bin/python bench/soak.py                               # 1,000 tasks/s for 10 minutes
    .venv/bin/python bench/soak.py --seconds 60 --rate 200       # the short run in docs/benchmarks.md
    .venv/bin/python bench/soak.py --faults redis-restart        # one fault only (on a plain Redis)

On loopback: a private Redis without persistence (a plain ``redis-server``; with the
``redis-failover`` fault, a primary, a replica and three Sentinels, tests/fixtures/sentinel.py,
and every process reaches it through Sentinel), ``stalk api`` (SQLite records),
``--workers`` Celery workers of the stalk app draining the ``default`` queue, and ``stalk recover``
looping (``STALK_RECOVER_AFTER_SECONDS`` at its least, 10 s). A load process sends
``POST /v1/tasks`` at ``--rate`` (open loop: request i leaves at start + i/rate, on
``--connections`` keep-alive connections; ``--batch N`` sends N tasks a request). The task,
``soak.run`` (bench/soak_tasks.py), appends its id to a file per process, so runs are counted
outside Redis and the database.

The faults are spread evenly over the run, in ``--faults`` order:
  worker-kill    SIGKILL to one worker's process group (its running task is lost with it; Redis
                 keeps the message in ``unacked`` until the visibility timeout, 20 s here), and a
                 new worker of the same name, as Kubernetes restarts a container;
  redis-failover SIGKILL to the Sentinel-managed primary (what it had not yet replicated is gone);
                 back once Sentinel promoted the replica and the API publishes again; the old
                 primary is started again, empty, as a replica of the new one, as Kubernetes
                 restarts its pod;
  redis-restart  SIGKILL to redis-server and a new one on the same port, empty (no persistence):
                 every waiting and unacked message is gone, the records remain (a plain Redis
                 only: under Sentinel the same kill is the failover above);
  api-restart    SIGTERM to the API (uvicorn finishes what it has) and a new one.
Each is a function of the ``Stack`` in ``FAULTS`` that injects the fault and returns once the
stack is back. The default is the issue's three: worker-kill, redis-failover, api-restart.

After the load, the workers drain and the recoverer republishes what Redis lost, until every
accepted task (a 202 answer) is SUCCESS or ``--drain-seconds`` pass. Printed: accepted, finished,
recovered, run twice, lost (accepted and not finished: must be 0), the rate achieved (this
machine may not reach ``--rate``; the achieved one is what was held), and the submit latency
p50/p99 before, during and after each fault. A benchmark, not a test: it asserts nothing but
exits 1 when a task was lost. Every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core_throughput import STARTUP_DEADLINE, BenchError, Processes, free_port, percentiles, wait_for

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the Sentinel set-up the tests use (tests/fixtures/sentinel.py)
TASK = "soak.run"
QUEUE = "default"  # no route matches soak.run: the default queue
# Short limits so a killed worker's message comes back within the run (the default is an hour).
TIME_LIMITS = {"STALK_SOFT_TIME_LIMIT_SECONDS": "8", "STALK_HARD_TIME_LIMIT_SECONDS": "10",
               "STALK_VISIBILITY_TIMEOUT_SECONDS": "20"}
RECOVER_AFTER = "10"  # STALK_RECOVER_AFTER_SECONDS' least
RECOVER_EVERY = "2"
REQUEST_TIMEOUT = 30.0
UNFINISHED = ("PENDING", "STARTED", "RETRY")


# --- the stack ------------------------------------------------------------------------------------

@dataclass
class Stack:
    """Redis, the API, the workers and the recoverer, each a process of its own on loopback."""

    work: Path
    processes: Processes
    workers: int
    concurrency: int
    sentinel: bool = False  # a primary, a replica and three Sentinels instead of one redis-server
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()  # a fault and the supervisor never act on the processes at once
        self.crashes: Counter = Counter()
        self.runs_dir = self.work / "runs"
        self.runs_dir.mkdir()
        self.database = self.work / "stalk.db"
        self.cluster = None  # the SentinelCluster, once started
        if self.sentinel:
            from tests.fixtures.sentinel import MASTER_NAME

            self.master_name = MASTER_NAME
            self.sentinel_ports = [free_port() for _ in range(3)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
        env.update(TIME_LIMITS, STALK_BROKER_URL=self.redis_url(0), STALK_RESULT_BACKEND=self.redis_url(1),
                   STALK_DATABASE_URL=f"sqlite:///{self.database}", STALK_TASK_MODULES="soak_tasks",
                   STALK_WORKER_METRICS_PORT="0", SOAK_RUNS_DIR=str(self.runs_dir), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]))
        if self.sentinel:
            env["STALK_BROKER_MASTER_NAME"] = self.master_name
        self.env = env

    def redis_url(self, db: int) -> str:
        if self.sentinel:  # kombu's spelling: one address per Sentinel, the database in the first
            first, *rest = self.sentinel_ports
            return ";".join([f"sentinel://127.0.0.1:{first}/{db}", *(f"sentinel://127.0.0.1:{p}" for p in rest)])
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def redis(self):
        import redis

        return redis.Redis(port=self.redis_port, socket_timeout=5, socket_connect_timeout=2)

    def start_sentinel_cluster(self) -> None:
        from tests.fixtures.sentinel import start_sentinel_cluster

        self.cluster = start_sentinel_cluster(self.work / "sentinel", sentinel_ports=self.sentinel_ports)

    # Redis --------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (`make system-deps`)")
        data = self.work / "redis"
        data.mkdir(exist_ok=True)
        # No persistence: a restart comes back empty, as a Redis without a volume or AOF does.
        self.processes.start("redis", [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir",
                                       str(data), "--save", "", "--appendonly", "no"], env=dict(os.environ), cwd=data)
        wait_for(lambda: self.redis().ping(), deadline=STARTUP_DEADLINE, what="redis-server",
                 processes=self.processes, name="redis")

    def kill(self, name: str) -> None:
        process = self.processes.running.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    # The API ------------------------------------------------------------------------------------
    def start_api(self) -> None:
        import httpx

        self.processes.start("api", [sys.executable, "-m", "stalk_workers", "api", "--host", "127.0.0.1",
                                     "--port", str(self.api_port)], env=self.env, cwd=self.work)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2).status_code == 200,
                 deadline=STARTUP_DEADLINE, what="the API's /readyz", processes=self.processes, name="api",
                 interval=0.1)

    # Workers and the recoverer --------------------------------------------------------------------
    def start_worker(self, n: int) -> None:
        name = f"worker-{n}"
        self.processes.start(name, [sys.executable, "-m", "celery", "-A", "stalk_workers.app", "worker", "-Q", QUEUE,
                                    "-n", f"soak-{n}@soak", "--concurrency", str(self.concurrency), "--pool",
                                    "prefork", "--loglevel", "warning", "--without-gossip", "--without-mingle"],
                             env=self.env, cwd=self.work)

    def wait_workers(self, numbers: list[int] | None = None) -> None:
        from celery import Celery

        nodes = [f"soak-{n}@soak" for n in (range(self.workers) if numbers is None else numbers)]

        def answered() -> bool:
            # A connection per try: the one before may have gone with a Redis restart.
            app = Celery("soak-ping", broker=self.redis_url(0), set_as_current=False)
            if self.sentinel:
                app.conf.broker_transport_options = {"master_name": self.master_name}
            with app.connection_for_write() as connection:
                return len(app.control.ping(nodes, timeout=0.5, connection=connection)) >= len(nodes)

        wait_for(answered, deadline=STARTUP_DEADLINE, what=f"{', '.join(nodes)} to answer a ping",
                 processes=self.processes, interval=0.5)

    def start_recoverer(self) -> None:
        env = {**self.env, "STALK_RECOVER_AFTER_SECONDS": RECOVER_AFTER, "STALK_RECOVER_METRICS_PORT": "0"}
        self.processes.start("recover", [sys.executable, "-m", "stalk_workers", "recover", "--every", RECOVER_EVERY],
                             env=env, cwd=self.work)

    def start(self) -> None:
        if self.sentinel:
            self.start_sentinel_cluster()
        else:
            self.start_redis()
        self.start_api()  # migrates the database first (STALK_MIGRATE_ON_START)
        for n in range(self.workers):
            self.start_worker(n)
        self.wait_workers()
        self.start_recoverer()

    def restart_exited(self) -> None:
        """What Kubernetes does for a container that exits: a worker or the recoverer that died by
        itself (not by a fault) is started again, and counted."""
        with self.lock:
            for name, process in list(self.processes.running.items()):
                if process.poll() is None or not name.startswith(("worker-", "recover")):
                    continue
                self.crashes[name] += 1
                self.processes.running.pop(name)
                print(f"  {name} exited by itself (code {process.returncode}), started again; "
                      f"its log: {self.processes.log_dir / (name + '.log')}", flush=True)
                if name == "recover":
                    self.start_recoverer()
                else:
                    self.start_worker(int(name.removeprefix("worker-")))

    def supervise(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(1.0):
                self.restart_exited()

        thread = threading.Thread(target=loop, name="soak-supervisor", daemon=True)
        thread.start()
        return thread


# --- the faults: each returns once the stack is back ----------------------------------------------

def kill_a_worker(stack: Stack) -> None:
    stack.kill("worker-0")
    stack.start_worker(0)
    stack.wait_workers([0])


def restart_redis_empty(stack: Stack) -> None:
    stack.kill("redis")
    stack.start_redis()
    wait_api_ready(stack, "after the Redis restart")


def fail_over_redis(stack: Stack) -> None:
    from tests.fixtures.sentinel import restart_as_replica

    cluster = stack.cluster
    old = cluster.kill_primary()
    new = cluster.wait_promoted(old, timeout=STARTUP_DEADLINE)
    wait_api_ready(stack, "after the failover")
    restart_as_replica(cluster, old, new)


def wait_api_ready(stack: Stack, when: str) -> None:
    """Back when the API can publish again (its readiness pings Redis)."""
    import httpx

    wait_for(lambda: httpx.get(f"http://127.0.0.1:{stack.api_port}/readyz", timeout=2).status_code == 200,
             deadline=STARTUP_DEADLINE, what=f"the API's /readyz {when}", processes=stack.processes,
             name="api", interval=0.1)


def restart_the_api(stack: Stack) -> None:
    stack.processes.stop("api")  # SIGTERM: uvicorn answers what it has, then exits
    stack.start_api()


FAULTS: dict[str, Callable[[Stack], None]] = {
    "worker-kill": kill_a_worker,
    "redis-restart": restart_redis_empty,
    "redis-failover": fail_over_redis,
    "api-restart": restart_the_api,
}
DEFAULT_FAULTS = ["worker-kill", "redis-failover", "api-restart"]


# --- the load: a process of its own, so faults and bookkeeping do not slow it ---------------------

def load_process(config: dict) -> None:
    """Send the requests; write one line per request: wall time sent, seconds, status, task ids."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_load(config))


async def _load(config: dict) -> None:
    host, port, rate, batch = "127.0.0.1", config["port"], config["rate"], config["batch"]
    start, end = config["start"], config["start"] + config["seconds"]
    requests_per_second = rate / batch
    counter = iter(range(10**12))
    out = open(config["out"], "w", buffering=1 << 20)  # noqa: SIM115 - closed below

    def body(i: int) -> bytes:
        if batch == 1:
            return json.dumps({"task": TASK, "args": [i]}).encode()
        return json.dumps({"tasks": [{"task": TASK, "args": [i * batch + j]} for j in range(batch)]}).encode()

    path = "/v1/tasks" if batch == 1 else "/v1/tasks/batch"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: "

    async def connection() -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:  # the API is restarting
                i = next(counter)
                sent = start + i / requests_per_second
                if sent >= end:
                    return
                await asyncio.sleep(max(0.0, sent - time.time()))
                out.write(f"{sent:.6f} 0 refused -\n")
                continue
            try:
                while True:
                    i = next(counter)
                    scheduled = start + i / requests_per_second
                    if scheduled >= end:
                        return
                    await asyncio.sleep(max(0.0, scheduled - time.time()))
                    payload = body(i)
                    sent = time.time()
                    writer.write(head.encode() + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                    try:
                        status, answer = await asyncio.wait_for(_answer(reader), REQUEST_TIMEOUT)
                    except TimeoutError:
                        out.write(f"{sent:.6f} {time.time() - sent:.6f} timeout -\n")
                        break
                    except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                        out.write(f"{sent:.6f} {time.time() - sent:.6f} reset -\n")
                        break
                    ids = "-"
                    if status == 202:
                        data = json.loads(answer)
                        ids = ",".join(t["task_id"] for t in data["tasks"]) if batch > 1 else data["task_id"]
                    out.write(f"{sent:.6f} {time.time() - sent:.6f} {status} {ids}\n")
            finally:
                writer.close()

    try:
        await asyncio.gather(*(connection() for _ in range(config["connections"])))
    finally:
        out.close()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("closed")
    status, length = int(line.split()[1]), 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


# --- the outcome ----------------------------------------------------------------------------------

@dataclass
class Sample:
    sent: float
    seconds: float
    status: str
    ids: list[str]


def read_samples(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text().splitlines():
        sent, seconds, status, ids = line.split(" ", 3)
        samples.append(Sample(float(sent), float(seconds), status, [] if ids == "-" else ids.split(",")))
    return sorted(samples, key=lambda s: s.sent)


def records(database: Path) -> dict[str, tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
        return {task_id: (status, recovered or 0) for task_id, status, recovered
                in conn.execute("SELECT task_id, status, recovered FROM task_records")}


def run_counts(runs_dir: Path) -> Counter:
    counts: Counter = Counter()
    for path in runs_dir.glob("*.runs"):
        counts.update(path.read_text().split())
    return counts


def window(samples: list[Sample], start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s.sent < end and s.status not in ("refused",)]
    answered = [s.seconds for s in inside if s.status.isdigit()]
    return {"requests": len(inside), "not_202": sum(s.status != "202" for s in inside), **percentiles(answered)}


def fault_windows(samples: list[Sample], faults: list[dict], span: float) -> list[dict]:
    """Before: ``span`` seconds up to the fault; during: from the fault until the stack is back
    (at least ``span``); after: the ``span`` seconds that follow."""
    rows = []
    for fault in faults:
        during_end = max(fault["back"], fault["at"] + span)
        rows.append({"fault": fault["name"], "took": fault["back"] - fault["at"],
                     "before": window(samples, fault["at"] - span, fault["at"]),
                     "during": window(samples, fault["at"], during_end),
                     "after": window(samples, during_end, during_end + span)})
    return rows


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def report(args, samples: list[Sample], faults: list[dict], outcome: dict) -> str:
    statuses = Counter(s.status for s in samples)
    # What the machine held: tasks accepted while the API was up (while it restarts, every request
    # is refused at once, which says nothing about capacity).
    down = sum(f["back"] - f["at"] for f in faults if f["name"] == "api-restart")
    held = outcome["accepted"] / max(1e-9, args.seconds - down)
    lines = [
        f"target {args.rate:,} tasks/s for {args.seconds:g} s ({args.connections} connections, {args.batch} task(s) "
        f"a request, {args.workers} workers x {args.concurrency} prefork)",
        f"accepted {outcome['accepted'] / args.seconds:,.0f} tasks/s over the run, {held:,.0f} tasks/s while the API "
        f"was up ({down:.1f} s down for its restart)"
        + ("" if held >= 0.95 * args.rate else f" -- below the target: this machine did not sustain {args.rate:,}/s"),
        "requests by answer: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items())),
        "",
        "| accepted | finished | recovered | run twice | lost |",
        "| --- | --- | --- | --- | --- |",
        f"| {outcome['accepted']:,} | {outcome['finished']:,} | {outcome['recovered']:,} | {outcome['run_twice']:,} "
        f"| {outcome['lost']:,} |",
        "",
        f"Run twice: {outcome['twice_recovered']:,} of them had been recovered, {outcome['twice_other']:,} not "
        f"(redelivered after the worker kill, or run by a worker Redis forgot). Never ran: {outcome['never_ran']:,}. "
        f"Drained {outcome['drain_seconds']:.0f} s after the load ended. Processes that exited by themselves and "
        f"were started again: {', '.join(f'{k} x{v}' for k, v in sorted(outcome['crashes'].items())) or 'none'}.",
        "",
        "| fault | back after s | before p50 / p99 ms | during p50 / p99 ms | after p50 / p99 ms "
        "| not 202 before / during / after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in fault_windows(samples, faults, args.window):
        b, d, a = row["before"], row["during"], row["after"]
        lines.append(f"| {row['fault']} | {row['took']:.1f} | {ms(b['p50_ms'])} / {ms(b['p99_ms'])} "
                     f"| {ms(d['p50_ms'])} / {ms(d['p99_ms'])} | {ms(a['p50_ms'])} / {ms(a['p99_ms'])} "
                     f"| {b['not_202']:,} / {d['not_202']:,} / {a['not_202']:,} |")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load lasts (default 600)")
    parser.add_argument("--rate", type=int, default=1000, help="tasks per second to submit (default 1,000)")
    parser.add_argument("--batch", type=int, default=1, help="tasks per request (1: POST /v1/tasks; more: batch)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="prefork processes per worker")
    parser.add_argument("--faults", nargs="*", default=DEFAULT_FAULTS, choices=sorted(FAULTS),
                        help=f"faults in order, spread evenly over the run (default: {' '.join(DEFAULT_FAULTS)})")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds of latency before and after each fault (default: a fifth of the spacing, at most 20)")
    parser.add_argument("--drain-seconds", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, database, run files)")
    args = parser.parse_args(argv)
    if args.rate < 1 or args.batch < 1 or args.seconds <= 0:
        parser.error("--rate, --batch and --seconds must be positive")
    if {"redis-restart", "redis-failover"} <= set(args.faults):
        parser.error("redis-restart needs a plain Redis and redis-failover a Sentinel-managed one: "
                     "give them to separate runs")
    spacing = args.seconds / (len(args.faults) + 1)
    args.window = args.window or min(20.0, spacing / 5)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    work = Path(tempfile.mkdtemp(prefix="stalk-soak-"))
    processes = Processes(work)
    stack = Stack(work=work, processes=processes, workers=args.workers, concurrency=args.concurrency,
                  sentinel="redis-failover" in args.faults)
    faults: list[dict] = []
    try:
        stack.start()
        redis_at = (f"sentinels :{','.join(map(str, stack.sentinel_ports))}" if stack.sentinel
                    else f"redis :{stack.redis_port}")
        print(f"stack up in {work} ({redis_at}, api :{stack.api_port}); load for {args.seconds:g} s", flush=True)
        start = time.time() + 1.0
        config = {"port": stack.api_port, "rate": args.rate, "batch": args.batch, "connections": args.connections,
                  "seconds": args.seconds, "start": start, "out": str(work / "samples.txt")}
        load = processes.start("load", [sys.executable, str(Path(__file__).resolve()), "_load", json.dumps(config)],
                               env={**stack.env, "PYTHONPATH": str(BENCH_DIR)}, cwd=work)
        stop = threading.Event()
        supervisor = stack.supervise(stop)
        for n, name in enumerate(args.faults, 1):
            time.sleep(max(0.0, start + n * spacing - time.time()))
            at = time.time()
            with stack.lock:
                FAULTS[name](stack)
            faults.append({"name": name, "at": at, "back": time.time()})
            print(f"{at - start:6.1f} s  {name}: back after {time.time() - at:.1f} s", flush=True)
        try:
            load.wait(max(0.0, start + args.seconds - time.time()) + REQUEST_TIMEOUT + 30)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the load process did not end") from exc
        processes.running.pop("load", None)
        samples = read_samples(work / "samples.txt")
        accepted = {task_id for s in samples if s.status == "202" for task_id in s.ids}
        print(f"load done: {len(accepted):,} accepted; draining", flush=True)

        ended = time.time()

        def drained() -> bool:
            processes.check("api")
            known = records(stack.database)
            return all(known.get(task_id, ("?", 0))[0] == "SUCCESS" for task_id in accepted)

        try:
            wait_for(drained, deadline=args.drain_seconds, what="every accepted task to finish",
                     processes=processes, interval=2.0)
        except BenchError:  # not drained in time: the tasks left count as lost
            print(f"not drained after {args.drain_seconds:g} s", flush=True)
        drain_seconds = time.time() - ended
        stop.set()
        supervisor.join(30)
        known, runs = records(stack.database), run_counts(stack.runs_dir)
        twice = {task_id for task_id in accepted if runs[task_id] >= 2}
        recovered = {task_id for task_id in accepted if known.get(task_id, ("?", 0))[1] > 0}
        outcome = {
            "accepted": len(accepted),
            "finished": sum(known.get(t, ("?", 0))[0] == "SUCCESS" for t in accepted),
            "recovered": len(recovered),
            "run_twice": len(twice),
            "twice_recovered": len(twice & recovered),
            "twice_other": len(twice - recovered),
            "never_ran": sum(runs[t] == 0 for t in accepted),
            "lost": sum(known.get(t, ("?", 0))[0] != "SUCCESS" for t in accepted),
            "drain_seconds": drain_seconds,
            "crashes": dict(stack.crashes),
        }
        print()
        print(report(args, samples, faults, outcome))
        return 1 if outcome["lost"] else 0
    except BenchError as exc:
        print(f"bench/soak.py: {exc}", file=sys.stderr)
        return 2
    finally:
        processes.stop_all()
        if stack.cluster is not None:
            stack.cluster.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_load":
        load_process(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
