"""The API under many concurrent connections: mixed reads and submits, SQLite and PostgreSQL.

    .venv/bin/python bench/api_concurrency.py                      # 16, 64, 256, 1000 connections, 15 s each
    .venv/bin/python bench/api_concurrency.py --connections 64 --seconds 5 --database sqlite

For each database and number of connections: a fresh API process (``stalk api``, uvicorn), a
private ``redis-server`` and a fresh database (an SQLite file, or a private PostgreSQL server);
every connection sends, one after another, ``GET /v1/tasks/{id}`` (4 in 5 requests, ids of tasks
submitted before) and ``POST /v1/tasks`` (1 in 5) for ``--seconds``, while one more connection
polls ``/healthz`` every 20 ms. Printed: requests per second, p50/p99 latency of the load and of
``/healthz``, and the answers by status; "reset" and "timeout" (no answer in 60 s) are the
failures the API must not have (issue 12: 60 connections wedged it before). A benchmark, not a
test: nothing here asserts a speed. Everything listens on 127.0.0.1; every process started here is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ scripts share the process handling and the percentiles of core_throughput.py.
from core_throughput import STARTUP_DEADLINE, Bench, BenchError, Processes, free_port, percentiles, wait_for

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
READ_SHARE = 4  # reads per submit
REQUEST_TIMEOUT = 60.0
SEED_TASKS = 200


class RawHttp:
    """Keep-alive HTTP/1.1 over asyncio streams (core_throughput's raw client, for any method)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    @contextlib.asynccontextmanager
    async def connection(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        host = f"Host: {self.host}:{self.port}\r\n"

        async def send(method: str, path: str, body: bytes = b"") -> int:
            head = f"{method} {path} HTTP/1.1\r\n{host}"
            if body:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            line = await reader.readline()
            if not line:
                raise ConnectionResetError("connection closed")
            status = int(line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            return status

        try:
            yield send
        finally:
            writer.close()


async def load(host: str, port: int, task_ids: list[str], connections: int, seconds: float) -> dict:
    http = RawHttp(host, port)
    latencies: list[float] = []
    health: list[float] = []
    statuses: dict[str, int] = {}
    end = time.monotonic() + seconds
    submit = json.dumps({"task": "stalk.echo", "args": ["bench"]}).encode()

    def count(status) -> None:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    async def connection(n: int) -> None:
        i = n
        while time.monotonic() < end:
            try:
                async with http.connection() as send:
                    while time.monotonic() < end:
                        i += 1
                        started = time.perf_counter()
                        if i % (READ_SHARE + 1) == 0:
                            call = send("POST", "/v1/tasks", submit)
                        else:
                            call = send("GET", f"/v1/tasks/{task_ids[i % len(task_ids)]}")
                        count(await asyncio.wait_for(call, REQUEST_TIMEOUT))
                        latencies.append(time.perf_counter() - started)
            except TimeoutError:
                count("timeout")
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                count("reset")
                await asyncio.sleep(0.1)

    async def probe() -> None:
        async with http.connection() as send:
            while time.monotonic() < end:
                started = time.perf_counter()
                await asyncio.wait_for(send("GET", "/healthz"), REQUEST_TIMEOUT)
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    started = time.perf_counter()
    await asyncio.gather(probe(), *(connection(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    answered = sum(v for k, v in statuses.items() if k.isdigit())
    return {"connections": connections, "seconds": elapsed, "rate": answered / elapsed, "statuses": statuses,
            **percentiles(latencies), "healthz": percentiles(health)}


class PrivatePostgres:
    """A PostgreSQL server of the benchmark's own, in its work directory, run as the postgres user."""

    def __init__(self) -> None:
        # Not under the work directory: that is private to root, and the server runs as postgres.
        self.base = Path(tempfile.mkdtemp(prefix="stalk-bench-pg-"))
        self.port = free_port()
        self.ctl = [str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.base / "data"), "-w", "-l", str(self.base / "log")]

    def _run(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"{argv[-1]}: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        if not (POSTGRES_BIN / "postgres").exists():
            raise BenchError("PostgreSQL 15 is not installed (`make system-deps`)")
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self._run([str(POSTGRES_BIN / "initdb"), "-D", str(self.base / "data"), "-A", "trust", "-U", "postgres",
                   "--no-sync"])
        # Durable commits, as a deployment runs them (the tests turn fsync off; a benchmark must not).
        self._run([*self.ctl, "start", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.base} -c max_connections=200"])

    def fresh_url(self, name: str) -> str:
        import sqlalchemy as sa

        admin = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres",
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(BenchError):
            self._run([*self.ctl, "-m", "fast", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)


def scenario(bench: Bench, postgres: PrivatePostgres | None, database: str, connections: int,
             seconds: float) -> dict:
    import httpx

    _, _, run_dir, env = bench.fresh_scenario(f"{database}-{connections}")
    if database == "postgres":
        env["STALK_DATABASE_URL"] = postgres.fresh_url(f"bench_{connections}")
    port = free_port()
    name = f"api-{database}-{connections}"
    bench.processes.start(name, [sys.executable, "-m", "stalk_workers", "api", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, cwd=run_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, deadline=STARTUP_DEADLINE,
                 what="the API's /readyz", processes=bench.processes, name=name, interval=0.2)
        seeded = httpx.post(f"{base}/v1/tasks/batch", timeout=30,
                            json={"tasks": [{"task": "stalk.echo", "args": [i]} for i in range(SEED_TASKS)]})
        task_ids = [t["task_id"] for t in seeded.json()["tasks"]]
        result = asyncio.run(load("127.0.0.1", port, task_ids, connections, seconds))
        bench.processes.check(name)
        after = time.perf_counter()
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, deadline=60,
                 what="/healthz after the load", processes=bench.processes, name=name)
        result["recovered_s"] = time.perf_counter() - after
    finally:
        bench.processes.stop(name)
    return {"database": database, **result}


def row(r: dict) -> list[str]:
    def ms(value) -> str:
        return "-" if value is None else f"{value:,.1f}"

    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
    return [r["database"], f"{r['connections']:,}", f"{r['rate']:,.0f}", ms(r["p50_ms"]), ms(r["p99_ms"]),
            ms(r["healthz"]["p50_ms"]), ms(r["healthz"]["p99_ms"]), ms(r["healthz"].get("max_ms")), statuses]


HEADER = ["database", "connections", "requests/s", "p50 ms", "p99 ms", "/healthz p50 ms", "/healthz p99 ms",
          "/healthz max ms", "answers by status"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64, 256, 1000])
    parser.add_argument("--database", choices=["sqlite", "postgres"], nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite files)")
    args = parser.parse_args(argv)

    # 1,000 client sockets here and as many in the API (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    work = Path(tempfile.mkdtemp(prefix="stalk-bench-api-"))
    processes = Processes(work)
    bench = Bench(plan=None, work=work, processes=processes, say=print)
    postgres = PrivatePostgres() if "postgres" in args.database else None
    results = []
    try:
        print(bench.start_redis(), flush=True)
        if postgres:
            postgres.start()
        for database in args.database:
            for connections in args.connections:
                result = scenario(bench, postgres, database, connections, args.seconds)
                results.append(result)
                print(" | ".join(row(result)), flush=True)
    except BenchError as exc:
        print(f"bench/api_concurrency.py: {exc}", file=sys.stderr)
        return 1
    finally:
        processes.stop_all()
        if postgres:
            postgres.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + " --- |" * len(HEADER))
    for result in results:
        print("| " + " | ".join(row(result)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
