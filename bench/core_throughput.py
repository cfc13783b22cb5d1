"""Task platform core benchmark: stalk against plain Celery, side by side, in one run on one Redis.

    .venv/bin/python bench/core_throughput.py            # full run (what `make bench` runs)
    .venv/bin/python bench/core_throughput.py --quick    # a short run, a few minutes
    .venv/bin/python bench/core_throughput.py --tls      # the same over TLS (`make bench` runs both)

Measures
  1. submit throughput: ``POST /v1/tasks`` with many concurrent HTTP connections and
     ``POST /v1/tasks/batch`` with 1,000 tasks a request, both against the real API (uvicorn in
     its own process), against ``task.delay()`` in a loop from one Python process;
  2. worker drain: how fast one stalk worker (records on, SQLite) empties a queue of no-op tasks,
     against a bare Celery worker (``bench/bare_app.py``) with the same pool and concurrency.

Everything runs on loopback: a private ``redis-server`` on a free port (a fresh pair of database
numbers per scenario) and a fresh SQLite file per scenario in a temporary directory. With ``--tls``
that Redis listens on a TLS port only (certificates made by openssl, as tests/fixtures/tls.py makes
them), and stalk and plain Celery alike connect with ``rediss://…?ssl_cert_reqs=required&ssl_ca_certs=…``.
Every wait has a deadline, and every process started here is stopped on exit, Ctrl-C or error. A full run
records its table in ``docs/benchmarks.md`` (section "Task platform core").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import harness  # bench/harness.py, next to this script
from harness import BenchError, free_port
from procfs import proc_status  # bench/procfs.py, next to this script

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN = "<!-- bench/core_throughput.py: begin (generated, a full run rewrites this section) -->"
DOC_END = "<!-- bench/core_throughput.py: end -->"
# A full run with --tls keeps its own section next to it.
TLS_DOC_BEGIN = "<!-- bench/core_throughput.py --tls: begin (generated, a full --tls run rewrites this section) -->"
TLS_DOC_END = "<!-- bench/core_throughput.py --tls: end -->"

# The targets, as ratios to the plain-Celery baseline measured in the same run.
TARGET_SINGLE = 1.0
TARGET_BATCH = 10.0
TARGET_DRAIN = 0.8

QUEUE = "default"  # stalk.echo routes here ("stalk.*")
BARE_QUEUE = "celery"  # plain Celery's default queue
STARTUP_DEADLINE = 90.0  # seconds for Redis, the API or a worker to come up on a busy machine
STOP_DEADLINE = 20.0  # seconds a process gets after SIGTERM before SIGKILL


@dataclass(frozen=True)
class Plan:
    delay_tasks: int
    single_requests: int
    single_connections: int
    batch_requests: int
    batch_size: int
    batch_connections: int
    drain_tasks: int
    concurrency: int
    warmup: int
    # Each scenario runs this many times, interleaved with its baseline; the median run is reported.
    rounds: int
    client: str = "raw"


FULL = Plan(delay_tasks=5000, single_requests=5000, single_connections=64, batch_requests=20, batch_size=1000,
            batch_connections=2, drain_tasks=3000, concurrency=4, warmup=200, rounds=3)
QUICK = Plan(delay_tasks=1000, single_requests=1000, single_connections=32, batch_requests=4, batch_size=1000,
             batch_connections=2, drain_tasks=1000, concurrency=4, warmup=50, rounds=1)


# --- processes ------------------------------------------------------------------------------------

class Processes:
    """Every process the benchmark starts, each in its own process group, stopped by its own id."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.running[name] = process
        return process

    def check(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is not None:
            raise BenchError(f"{name} exited with code {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, name: str) -> None:
        process = self.running.pop(name, None)
        if process is None:
            return
        # The group holds the process and its children (prefork pool); it was started here.
        for sig, wait in ((signal.SIGTERM, STOP_DEADLINE), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # prefork children left behind by a dead parent

    def stop_all(self) -> None:
        for name in [n for n in self.running if n != "redis"] + ["redis"]:
            self.stop(name)


def wait_for(ready, *, deadline: float, what: str, processes: Processes, name: str | None = None,
             interval: float = 0.05):
    """``harness.wait_for``, failing at once if process ``name`` dies, with its log's tail at the deadline."""
    try:
        return harness.wait_for(ready, deadline=deadline, what=what, interval=interval,
                                alive=(lambda: processes.check(name)) if name else None)
    except BenchError as exc:
        raise BenchError(f"{exc}\n{processes.tail(name)}" if name else str(exc)) from None


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of a process group: live members, plus the leader's reaped children (prefork recycling)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")" of comm: state is fields[0], pgrp fields[2], utime/stime/cutime/cstime fields[11:15].
        if int(fields[2]) != pgid:
            continue
        total += int(fields[11]) + int(fields[12])
        if int(entry.name) == pgid:
            total += int(fields[13]) + int(fields[14])
    return total / tick


# --- the environment -------------------------------------------------------------------------------

class Bench:
    def __init__(self, plan: Plan, work: Path, processes: Processes, say, *, tls: bool = False) -> None:
        self.plan, self.work, self.processes, self.say = plan, work, processes, say
        self.tls = tls
        self.certs = None  # tests.fixtures.tls.Certificates, with --tls
        self.redis_port = 0
        self._next_db = 0
        self._runs = 0

    # Redis ------------------------------------------------------------------------------------
    def start_redis(self) -> str:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise BenchError("redis-server is not installed (Debian: apt-get install redis-server; or `make system-deps`)")
        self.redis_port = free_port()
        data = self.work / "redis"
        data.mkdir()
        listen = ["--port", str(self.redis_port)]
        if self.tls:
            sys.path.insert(0, str(ROOT))  # the certificates are made as the tests make them
            from tests.fixtures.tls import make_certificates

            (self.work / "tls").mkdir()
            self.certs = make_certificates(self.work / "tls")
            listen = ["--port", "0", "--tls-port", str(self.redis_port), "--tls-cert-file", str(self.certs.server_cert),
                      "--tls-key-file", str(self.certs.server_key), "--tls-ca-cert-file", str(self.certs.ca),
                      "--tls-auth-clients", "no"]
        self.processes.start("redis", [binary, *listen, "--bind", "127.0.0.1",
                                       "--dir", str(data), "--save", "", "--appendonly", "no",
                                       "--databases", "256"], env=dict(os.environ), cwd=data)
        wait_for(lambda: self.redis(0).ping(), deadline=STARTUP_DEADLINE, what="redis-server",
                 processes=self.processes, name="redis")
        version = self.redis(0).info("server")["redis_version"]
        return f"redis-server {version} ({binary}){', TLS only' if self.tls else ''}"

    def redis(self, db: int):
        import redis

        return redis.Redis.from_url(self.url(db), socket_timeout=30)

    def fresh_dbs(self) -> tuple[int, int]:
        """A broker and a result-backend database number nobody used before in this run."""
        broker, backend = self._next_db, self._next_db + 1
        self._next_db += 2
        return broker, backend

    def url(self, db: int) -> str:
        if self.tls:
            return (f"rediss://127.0.0.1:{self.redis_port}/{db}?ssl_cert_reqs=required"
                    f"&ssl_ca_certs={self.certs.ca}")
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def fresh_scenario(self, name: str) -> tuple[int, int, Path, dict[str, str]]:
        self._runs += 1
        broker, backend = self.fresh_dbs()
        run_dir = self.work / f"{self._runs:02d}-{name}"
        run_dir.mkdir()
        database = run_dir / "stalk.db"
        # Only what the benchmark sets: no STALK_* from the caller's shell, no .env (cwd is run_dir).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STALK_", "BARE_"))}
        env.update(STALK_BROKER_URL=self.url(broker), STALK_RESULT_BACKEND=self.url(backend),
                   STALK_DATABASE_URL=f"sqlite:///{database}", PYTHONUNBUFFERED="1")
        return broker, backend, run_dir, env

    # child processes that return JSON ----------------------------------------------------------
    def run_child(self, role: str, config: dict, env: dict[str, str], cwd: Path, deadline: float) -> dict:
        name = f"{self._runs:02d}-{role}"
        out = cwd / f"{role}.json"
        process = self.processes.start(name, [sys.executable, str(Path(__file__).resolve()), "_child", role,
                                              json.dumps(config), str(out)], env=env, cwd=cwd)
        try:
            process.wait(deadline)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{role} did not finish in {deadline:.0f}s") from exc
        finally:
            self.processes.stop(name)
        if process.returncode != 0 or not out.exists():
            raise BenchError(f"{role} failed (exit {process.returncode}):\n{self.processes.tail(name)}")
        return json.loads(out.read_text())

    # 1. submit -----------------------------------------------------------------------------------
    def submit_delay(self) -> dict:
        broker, _, run_dir, env = self.fresh_scenario("delay")
        result = self.run_child("delay", {"tasks": self.plan.delay_tasks, "warmup": self.plan.warmup},
                                env, run_dir, deadline=600)
        result["queued"] = self.redis(broker).llen(QUEUE)
        return result

    def submit_api(self, kind: str) -> dict:
        broker, _, run_dir, env = self.fresh_scenario(f"api-{kind}")
        port = free_port()
        name = f"{self._runs:02d}-api"
        api = self.processes.start(name, [sys.executable, "-m", "stalk_workers", "api", "--host", "127.0.0.1",
                                          "--port", str(port)], env=env, cwd=run_dir)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            import httpx

            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200

        wait_for(ready, deadline=STARTUP_DEADLINE, what="the API's /readyz", processes=self.processes, name=name,
                 interval=0.2)
        if kind == "single":
            config = {"url": f"{base}/v1/tasks", "requests": self.plan.single_requests, "batch": 0,
                      "connections": self.plan.single_connections, "warmup": self.plan.warmup}
        else:
            config = {"url": f"{base}/v1/tasks/batch", "requests": self.plan.batch_requests,
                      "batch": self.plan.batch_size, "connections": self.plan.batch_connections, "warmup": 2}
        result, cpu = self._load(config, env, run_dir, api, name, "load")
        memory = proc_status(api.pid)
        result.update(api_cpu_seconds=cpu, rss_kb=memory.get("VmRSS"), hwm_kb=memory.get("VmHWM"))
        if kind == "single":
            # The HTTP stack's share: the same requests for a task that is not registered are answered
            # 404 after routing, middlewares, dependencies and validation, before any submission work.
            floor, floor_cpu = self._load({**config, "task": "bench.not-registered", "warmup": 0}, env, run_dir,
                                          api, name, "load-404")
            result["floor_cpu_per_request"] = floor_cpu / max(1, floor["requests"])
            result["floor_statuses"] = floor["statuses"]
        self.processes.stop(name)
        result["queued"] = self.redis(broker).llen(QUEUE)
        with contextlib.closing(sqlite3.connect(run_dir / "stalk.db")) as conn:
            result["recorded"] = conn.execute("SELECT COUNT(*) FROM task_records").fetchone()[0]
        return result

    def _load(self, config: dict, env: dict[str, str], run_dir: Path, api: subprocess.Popen, api_name: str,
              role: str) -> tuple[dict, float]:
        """Run the HTTP load generator; return its result and the API's CPU seconds over the timed part."""
        out = run_dir / f"{role}.json"
        # The load generator warms up first, then signals; the API's CPU is read around the timed part.
        config = {**config, "client": self.plan.client, "mark": str(run_dir / f"{role}.warm")}
        name = f"{self._runs:02d}-{role}"
        load = self.processes.start(name, [sys.executable, str(Path(__file__).resolve()), "_child", "http",
                                           json.dumps(config), str(out)], env=env, cwd=run_dir)
        try:
            wait_for(lambda: Path(config["mark"]).exists(), deadline=300, what="the load generator's warm-up",
                     processes=self.processes, name=name)
            cpu_before = group_cpu_seconds(api.pid)
            try:
                load.wait(900)
            except subprocess.TimeoutExpired as exc:
                raise BenchError("the load generator did not finish in 900s") from exc
            cpu = group_cpu_seconds(api.pid) - cpu_before
            self.processes.check(api_name)
        finally:
            self.processes.stop(name)
        if not out.exists():
            raise BenchError(f"the load generator failed:\n{self.processes.tail(name)}")
        return json.loads(out.read_text()), cpu

    # 2. drain ----------------------------------------------------------------------------------
    def drain(self, kind: str) -> dict:
        """``kind``: "bare", "stalk" (records on) or "stalk-norecords" (diagnostic)."""
        broker, backend, run_dir, env = self.fresh_scenario(f"drain-{kind}")
        c = str(self.plan.concurrency)
        if kind == "bare":
            env.update(BARE_BROKER_URL=env["STALK_BROKER_URL"], BARE_RESULT_BACKEND=env["STALK_RESULT_BACKEND"],
                       PYTHONPATH=str(BENCH_DIR))
            argv = [sys.executable, "-m", "celery", "-A", "bare_app", "worker", "--pool", "prefork",
                    "--concurrency", c, "--loglevel", "warning"]
            task, queue = "bare.echo", BARE_QUEUE
        else:
            from stalk_workers.records import db

            db.upgrade(env["STALK_DATABASE_URL"])
            if kind == "stalk-norecords":
                env["STALK_RECORD_TASKS"] = "false"
            # Worker metrics stay on, as deployed, on a free port instead of the fixed default.
            env["STALK_WORKER_METRICS_PORT"] = str(free_port())
            argv = [sys.executable, "-m", "stalk_workers", "worker", "-Q", QUEUE, "--concurrency", c,
                    "--pool", "prefork", "--loglevel", "warning"]
            task, queue = "stalk.echo", QUEUE
        name = f"{self._runs:02d}-worker-{kind}"
        worker = self.processes.start(name, argv, env=env, cwd=run_dir)
        broker_client, backend_client = self.redis(broker), self.redis(backend)
        database = run_dir / "stalk.db"

        def finished() -> int:
            if kind == "stalk":
                # What the spec asks of a stalk worker: the task's record says SUCCESS.
                with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
                    return conn.execute("SELECT COUNT(*) FROM task_records WHERE status = 'SUCCESS'").fetchone()[0]
            # One result key per task in a backend database nobody else uses. stalk acks late
            # (after the result is stored) and tracks STARTED, so also wait for no unacked message.
            if kind == "stalk-norecords" and broker_client.hlen("unacked"):
                return 0
            return backend_client.dbsize()

        def drained(total: int) -> bool:
            return broker_client.llen(queue) == 0 and finished() >= total

        publisher = Publisher(self.url(broker), queue)
        warmup = max(20, 4 * self.plan.concurrency)
        try:
            # Warm up: the worker is up, its pool forked and connected before the clock starts.
            publisher.send(task, warmup, start=0)
            wait_for(lambda: drained(warmup), deadline=STARTUP_DEADLINE, what=f"the {kind} worker's warm-up",
                     processes=self.processes, name=name, interval=0.1)
            cpu_before = group_cpu_seconds(worker.pid)
            started = time.perf_counter()
            publisher.send(task, self.plan.drain_tasks, start=warmup)
            published = time.perf_counter() - started
            total = warmup + self.plan.drain_tasks
            # Generous bound: 20 tasks/s would be a broken worker, not a slow one.
            wait_for(lambda: drained(total), deadline=60 + self.plan.drain_tasks / 20,
                     what=f"the {kind} worker to drain {self.plan.drain_tasks} tasks", processes=self.processes,
                     name=name, interval=0.02)
            elapsed = time.perf_counter() - started
            cpu = group_cpu_seconds(worker.pid) - cpu_before
        finally:
            publisher.close()
            self.processes.stop(name)
        return {"tasks": self.plan.drain_tasks, "seconds": elapsed, "rate": self.plan.drain_tasks / elapsed,
                "publish_seconds": published, "worker_cpu_seconds": cpu}


class Publisher:
    """Pre-loads a queue with no-op tasks in pipelined batches, as a plain Celery client would send them."""

    def __init__(self, broker_url: str, queue: str) -> None:
        from celery import Celery

        self.app = Celery("bench-publisher", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        self.queue = queue

    def send(self, task: str, count: int, *, start: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for first in range(start, start + count, 1000):
                with producer.batch():
                    for i in range(first, min(first + 1000, start + count)):
                        self.app.send_task(task, args=[i], queue=self.queue, producer=producer)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.pool.force_close_all()


# --- children: run in their own processes --------------------------------------------------------

def child_delay(config: dict) -> dict:
    """The baseline: ``stalk.echo.delay(i)`` in a loop, one process, the stalk app's own settings."""
    from stalk_workers.app import app  # noqa: F401 - configures the current app from STALK_* variables
    from stalk_workers.builtin_tasks import echo

    for i in range(config["warmup"]):
        echo.delay(-i)
    latencies = []
    cpu_before = time.process_time()
    started = time.perf_counter()
    for i in range(config["tasks"]):
        t = time.perf_counter()
        echo.delay(i)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    return {"tasks": config["tasks"], "seconds": elapsed, "rate": config["tasks"] / elapsed,
            "cpu_seconds": time.process_time() - cpu_before, **percentiles(latencies)}


def child_http(config: dict) -> dict:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(_http_load(config))


async def _http_load(config: dict) -> dict:
    batch, connections = config["batch"], config["connections"]

    def body(i: int) -> bytes:
        # Pre-encoded: the client should spend its CPU on HTTP, not on building JSON.
        task = config.get("task", "stalk.echo")
        if batch:
            return json.dumps({"tasks": [{"task": task, "args": [i * batch + j]} for j in range(batch)]}).encode()
        return json.dumps({"task": task, "args": [i]}).encode()

    post = _RawPost(config["url"]) if config["client"] == "raw" else _HttpxPost(config["url"], connections)

    async def run(count: int, offset: int) -> tuple[list[float], dict[int, int]]:
        bodies = [body(offset + i) for i in range(count)]
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        next_index = iter(range(count))

        async def connection() -> None:
            async with post.connection() as send:
                for i in next_index:
                    t = time.perf_counter()
                    status = await send(bodies[i])
                    latencies.append(time.perf_counter() - t)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(connection() for _ in range(min(connections, count))))
        return latencies, statuses

    try:
        await run(config["warmup"], 10_000_000)
        Path(config["mark"]).touch()
        cpu_before = time.process_time()
        started = time.perf_counter()
        latencies, statuses = await run(config["requests"], 0)
        elapsed = time.perf_counter() - started
    finally:
        await post.close()
    tasks = statuses.get(202, 0) * (batch or 1)
    return {"requests": config["requests"], "tasks": tasks, "seconds": elapsed, "rate": tasks / elapsed,
            "statuses": {str(k): v for k, v in statuses.items()}, "client_cpu_seconds": time.process_time() - cpu_before,
            **percentiles(latencies)}


class _RawPost:
    """HTTP/1.1 keep-alive POSTs over asyncio streams: ~20x less client CPU per request than httpx,
    which matters when the load generator shares two cores with the API it measures."""

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path

    @contextlib.asynccontextmanager
    async def connection(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: ").encode()

        async def send(body: bytes) -> int:
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status = int((await reader.readline()).split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise BenchError(f"response {status} without Content-Length: the raw client cannot read it")
            await reader.readexactly(length)
            return status

        try:
            yield send
        finally:
            writer.close()

    async def close(self) -> None:
        pass


class _HttpxPost:
    def __init__(self, url: str, connections: int) -> None:
        import httpx

        self.url = url
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))

    @contextlib.asynccontextmanager
    async def connection(self):
        async def send(body: bytes) -> int:
            response = await self.client.post(self.url, content=body, headers={"content-type": "application/json"})
            return response.status_code

        yield send

    async def close(self) -> None:
        await self.client.aclose()


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate (its latencies and memory belong to it), with the range of all rates."""
    ordered = sorted(runs, key=lambda run: run["rate"])
    return {**ordered[(len(ordered) - 1) // 2], "min_rate": ordered[0]["rate"], "max_rate": ordered[-1]["rate"],
            "rounds": len(ordered)}


def rate(result: dict) -> str:
    if result["rounds"] == 1:
        return f"{result['rate']:,.0f}"
    return f"{result['rate']:,.0f} ({result['min_rate']:,.0f}-{result['max_rate']:,.0f})"


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000}


CHILDREN = {"delay": child_delay, "http": child_http}


# --- reporting -------------------------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version() -> str:
    """The commit measured, and whether the measured code (api/, workers/) differed from it."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "api", "workers")
    return f"commit {commit}" + (" with uncommitted changes in api/ or workers/" if dirty else "")


def code_fingerprint() -> str:
    """What the measured processes run: the last commit touching api/ or workers/, and local changes."""
    return _git("log", "-1", "--format=%h", "--", "api", "workers") + _git("diff", "HEAD", "--", "api", "workers")


def machine_notes() -> dict:
    import celery
    import kombu
    import sqlalchemy
    import uvicorn

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "load": os.getloadavg(), "code": code_version(),
        "fingerprint": code_fingerprint(),
        "python": platform.python_version(), "celery": celery.__version__, "kombu": kombu.__version__,
        "sqlalchemy": sqlalchemy.__version__, "uvicorn": uvicorn.__version__, "sqlite": sqlite3.sqlite_version,
    }


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio >= target else "MISS"


def table(plan: Plan, r: dict) -> list[list[str]]:
    rows = []
    if "delay" in r:
        delay, single, batch = r["delay"], r["single"], r["batch"]
        rows += [
            ["submit: `delay()` loop, 1 process (baseline)", rate(delay), "1.00x", "", "",
             f"p50 {delay['p50_ms']:.2f} / p99 {delay['p99_ms']:.2f} ms per call"],
            [f"submit: `POST /v1/tasks`, {plan.single_connections} connections ({plan.client} client)",
             rate(single), f"{single['ratio']:.2f}x", f">= {TARGET_SINGLE:g}x",
             verdict(single["ratio"], TARGET_SINGLE),
             f"p50 {single['p50_ms']:.1f} / p99 {single['p99_ms']:.1f} ms per request"],
            [f"submit: `POST /v1/tasks/batch`, {plan.batch_size:,} tasks/request, {plan.batch_connections} connections",
             rate(batch), f"{batch['ratio']:.2f}x", f">= {TARGET_BATCH:g}x",
             verdict(batch["ratio"], TARGET_BATCH),
             f"p50 {batch['p50_ms']:.0f} / p99 {batch['p99_ms']:.0f} ms per request"],
        ]
    if "drain-bare" in r:
        bare, c = r["drain-bare"], plan.concurrency

        def cpu(result: dict) -> str:
            return f"{result['worker_cpu_seconds'] * 1000 / result['tasks']:.2f} ms worker CPU/task"

        rows.append([f"drain: bare Celery worker, prefork x{c} (baseline)", rate(bare), "1.00x", "", "",
                     cpu(bare)])
        stalk = r["drain-stalk"]
        rows.append([f"drain: stalk worker, prefork x{c}, records on (SQLite)", rate(stalk),
                     f"{stalk['ratio']:.2f}x", f">= {TARGET_DRAIN:g}x",
                     verdict(stalk["ratio"], TARGET_DRAIN), cpu(stalk)])
        if "drain-stalk-norecords" in r:
            norec = r["drain-stalk-norecords"]
            rows.append([f"drain: stalk worker, prefork x{c}, records off (diagnostic)", rate(norec),
                         f"{norec['ratio']:.2f}x", "", "", cpu(norec)])
    return rows


HEADER = ["scenario", "tasks/s (range)", "ratio", "target", "result", "detail"]


def render_text(rows: list[list[str]]) -> str:
    plain = [[cell.replace("`", "") for cell in row] for row in [HEADER, *rows]]
    widths = [max(len(row[i]) for row in plain) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) if i != 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in plain]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---", "---:", "---:", "---", "---", "---"]) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def extras(r: dict) -> list[str]:
    lines = []
    if "delay" in r:
        single, batch = r["single"], r["batch"]
        mb = lambda kb: f"{kb / 1024:.0f} MiB" if kb else "n/a"  # noqa: E731
        lines += [
            f"API process memory: VmRSS {mb(single['rss_kb'])} (peak VmHWM {mb(single['hwm_kb'])}) after the "
            f"single-submit run; VmRSS {mb(batch['rss_kb'])} (peak {mb(batch['hwm_kb'])}) after the batch run.",
            f"API CPU per task: single {single['api_cpu_seconds'] * 1000 / max(1, single['tasks']):.2f} ms, "
            f"batch {batch['api_cpu_seconds'] * 1000 / max(1, batch['tasks']):.3f} ms; `delay()` loop "
            f"{r['delay']['cpu_seconds'] * 1000 / r['delay']['tasks']:.2f} ms; the HTTP load generator (same cores) "
            f"{single['client_cpu_seconds'] * 1000 / max(1, single['requests']):.2f} ms per single request.",
            f"HTTP stack floor: the same single requests for an unregistered task (answered 404 before any "
            f"submission work) cost the API {single['floor_cpu_per_request'] * 1000:.2f} ms CPU each "
            f"(statuses {single['floor_statuses']}).",
            f"HTTP statuses: single {single['statuses']}, batch {batch['statuses']}. Messages queued / records "
            f"written (warm-up included): single {single['queued']:,} / {single['recorded']:,}, batch "
            f"{batch['queued']:,} / {batch['recorded']:,}.",
        ]
    if "drain-stalk" in r:
        lines.append(
            "Drain: time from the first publish of {n:,} pre-loaded `echo` tasks until the queue is empty and every "
            "task finished (stalk: SUCCESS records; bare: result keys); publishing took {p:.2f} s of it.".format(
                n=r["drain-stalk"]["tasks"], p=r["drain-stalk"]["publish_seconds"]))
    return lines


def write_doc(markdown: str, *, tls: bool = False) -> None:
    begin, end, title = ((TLS_DOC_BEGIN, TLS_DOC_END, "Task platform core over TLS") if tls
                         else (DOC_BEGIN, DOC_END, "Task platform core"))
    DOC.parent.mkdir(parents=True, exist_ok=True)
    section = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n" + section + "\n"
    DOC.write_text(text)


# --- main ------------------------------------------------------------------------------------------

def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        role, config, out = argv[1], json.loads(argv[2]), Path(argv[3])
        out.write_text(json.dumps(CHILDREN[role](config)))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (fewer tasks); not recorded unless --record")
    parser.add_argument("--concurrency", type=int, help="worker pool size for the drain (default 4, the default queue's)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="HTTP load generator: raw asyncio HTTP/1.1 (default, cheap) or httpx (heavier)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help=f"write the results into {DOC.relative_to(ROOT)} (default: on for a full run)")
    parser.add_argument("--rounds", type=int, help="runs of each scenario, median reported (default 3; --quick 1)")
    parser.add_argument("--only", choices=["submit", "drain"], help="run one half (not recorded unless --record)")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the records-off stalk worker run")
    parser.add_argument("--note", default="", help="a machine note for the record (e.g. other load on the machine)")
    parser.add_argument("--strict", action="store_true", help="exit with status 2 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, SQLite files)")
    parser.add_argument("--tls", action="store_true",
                        help="Redis on a TLS port only; stalk and plain Celery both connect over TLS")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    plan = Plan(**{**asdict(plan), "concurrency": args.concurrency or plan.concurrency, "client": args.client,
                       "rounds": args.rounds or plan.rounds})
    record = (not args.quick and not args.only) if args.record is None else args.record

    def say(message: str) -> None:
        print(message, flush=True)

    # SIGTERM takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="stalk-bench-"))
    processes = Processes(work)
    bench = Bench(plan, work, processes, say, tls=args.tls)
    notes = machine_notes()
    started_at = datetime.now(UTC)
    results: dict[str, dict] = {}
    try:
        say(f"work dir {work}; {bench.start_redis()}")
        steps = []
        if args.only in (None, "submit"):
            steps += [
                ("delay", "submit: delay() loop", bench.submit_delay),
                ("single", "submit: POST /v1/tasks", lambda: bench.submit_api("single")),
                ("batch", "submit: POST /v1/tasks/batch", lambda: bench.submit_api("batch")),
            ]
        if args.only in (None, "drain"):
            steps += [
                ("drain-bare", "drain: bare Celery worker", lambda: bench.drain("bare")),
                ("drain-stalk", "drain: stalk worker, records on", lambda: bench.drain("stalk")),
            ]
        if args.only in (None, "drain") and not args.no_diagnostics:
            steps.append(("drain-stalk-norecords", "drain: stalk worker, records off",
                          lambda: bench.drain("stalk-norecords")))
        runs: dict[str, list[dict]] = {}
        for round_ in range(1, plan.rounds + 1):
            for key, label, step in steps:
                t = time.perf_counter()
                runs.setdefault(key, []).append(step())
                say(f"  round {round_}/{plan.rounds} {label}: {runs[key][-1]['rate']:,.0f} tasks/s "
                    f"({time.perf_counter() - t:.0f} s)")
        results = {key: median_run(values) for key, values in runs.items()}
        # Each round runs a scenario right after its baseline: the ratio is taken within a round (same
        # machine conditions), and the median of those per-round ratios is reported.
        for key, base in (("single", "delay"), ("batch", "delay"), ("drain-stalk", "drain-bare"),
                          ("drain-stalk-norecords", "drain-bare")):
            if key in runs:
                ratios = sorted(run["rate"] / baseline["rate"] for run, baseline in zip(runs[key], runs[base]))
                results[key]["ratio"] = ratios[(len(ratios) - 1) // 2] if len(ratios) % 2 else (
                    (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2)
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    finally:
        processes.stop_all()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    notes["load_after"] = os.getloadavg()
    # Each scenario starts fresh processes, so a change to api/ or workers/ mid-run is measured in part.
    if code_fingerprint() != notes["fingerprint"]:
        notes["code"] += f" (api/ or workers/ changed during the run; now {code_version().removeprefix('commit ')})"
    rows = table(plan, results)
    say("")
    say(render_text(rows))
    for line in extras(results):
        say(f"  {line}")
    if record:
        write_doc(markdown_section(plan, rows, results, notes, started_at, args), tls=args.tls)
        say(f"\nrecorded in {DOC.relative_to(ROOT)}")
    # A miss is a result, not a failure of the benchmark: exit 2 for it only when asked (--strict).
    missed = [row[0] for row in rows if row[4] == "MISS"]
    return 2 if missed and args.strict else 0


def markdown_section(plan: Plan, rows, results, notes, started_at: datetime, args) -> str:
    command = ".venv/bin/python bench/core_throughput.py" + (" --quick" if args.quick else "") + (
        f" --concurrency {args.concurrency}" if args.concurrency else "") + (" --tls" if args.tls else "")
    load = lambda values: " / ".join(f"{v:.2f}" for v in values)  # noqa: E731
    lines = [
        f"Measured {started_at:%Y-%m-%d %H:%M} UTC on {notes['code']} with `{command}` (`make bench` runs the same "
        + ("after the run without it)." if args.tls else "without flags)."),
        "",
        render_markdown(rows),
        "",
        *[f"- {line}" for line in extras(results)],
        "",
        "Machine: {cpus} CPUs ({cpu}); Python {python}, Celery {celery}, kombu {kombu}, SQLAlchemy {sqlalchemy}, "
        "uvicorn {uvicorn}, SQLite {sqlite}; one private redis-server on loopback{tls}, SQLite file records.".format(
            **notes, tls=" on a TLS port only (both sides over TLS)" if args.tls else ""),
        f"Load average (1/5/15 min) at the start {load(notes['load'])}, at the end {load(notes['load_after'])}. "
        f"Each scenario ran {plan.rounds} time(s), each time right after its baseline, on the same Redis: a ratio is "
        "the median of the per-round ratios, a rate the median run (range in brackets). The ratios compare like "
        "with like; the absolute figures move with whatever else the machine does.",
    ]
    if args.note:
        lines.append(f"Note: {args.note}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
