"""The API under many concurrent connections: mixed reads and submits, SQLite and PostgreSQL.

    .venv/bin/python bench/api_concurrency.py                      # 16, 64, 256, 1000 connections, 15 s each
    .venv/bin/python bench/api_concurrency.py --connections 64 --seconds 5 --database sqlite
    .venv/bin/python bench/api_concurrency.py --connections 1000 --before cca60a2   # against an older API

For each database and number of connections: a fresh API process (``stalk api``, uvicorn), a
private ``redis-server`` and a fresh database (an SQLite file, or a private PostgreSQL server);
every connection sends, one after another, ``GET /v1/tasks/{id}`` (4 in 5 requests, ids of tasks
submitted before) and ``POST /v1/tasks`` (1 in 5) for ``--seconds``, while a process of its own
polls ``/healthz`` every 20 ms on a new connection each time (and, "inline", one more connection
of the load client, as this script first did). ``--before REV`` and ``--variant`` run every
scenario again, interleaved, on another revision or with other settings. Printed: requests per
second, p50/p99 latency of the load and of ``/healthz``, and the answers by status; "reset" and "timeout" (no answer in 60 s) are the
failures the API must not have (issue 12: 60 connections wedged it before). A benchmark, not a
test: nothing here asserts a speed. Everything listens on 127.0.0.1; every process started here is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
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

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    prober = context.Process(target=probe_process, args=(host, port, seconds, results), daemon=True)
    prober.start()
    started = time.perf_counter()
    await asyncio.gather(probe(), *(connection(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    outside = await asyncio.to_thread(results.get, timeout=REQUEST_TIMEOUT + 10)
    prober.join(5)
    answered = sum(v for k, v in statuses.items() if k.isdigit())
    return {"connections": connections, "seconds": elapsed, "rate": answered / elapsed, "statuses": statuses,
            **percentiles(latencies), "healthz_inline": percentiles(health), "healthz": percentiles(outside)}


def probe_process(host: str, port: int, seconds: float, results) -> None:
    """/healthz every 20 ms from a process of its own, on a new connection each time (as the
    kubelet probes): its latency is the API's, not the load client's busy event loop."""
    async def run() -> list[float]:
        http = RawHttp(host, port)
        health = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            async with http.connection() as send:
                await asyncio.wait_for(send("GET", "/healthz"), REQUEST_TIMEOUT)
            health.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        return health

    results.put(asyncio.run(run()))


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
             seconds: float, variant: str, settings: dict[str, str]) -> dict:
    import httpx

    _, _, run_dir, env = bench.fresh_scenario(f"{database}-{connections}-{variant}")
    env.update(settings)
    if database == "postgres":
        env["STALK_DATABASE_URL"] = postgres.fresh_url(re.sub(r"\W", "_", f"bench_{connections}_{variant}"))
    port = free_port()
    name = f"api-{database}-{connections}-{variant}"
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
    return {"database": database, "variant": variant, **result}


def row(r: dict) -> list[str]:
    def ms(value) -> str:
        return "-" if value is None else f"{value:,.1f}"

    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
    return [r["database"], r["variant"], f"{r['connections']:,}", f"{r['rate']:,.0f}", ms(r["p50_ms"]), ms(r["p99_ms"]),
            ms(r["healthz"]["p50_ms"]), ms(r["healthz"]["p99_ms"]), ms(r["healthz"].get("max_ms")),
            ms(r["healthz_inline"]["p99_ms"]), statuses]


HEADER = ["database", "variant", "connections", "requests/s", "p50 ms", "p99 ms", "/healthz p50 ms", "/healthz p99 ms",
          "/healthz max ms", "inline /healthz p99 ms", "answers by status"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64, 256, 1000])
    parser.add_argument("--database", choices=["sqlite", "postgres"], nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite files)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="also run every scenario with these STALK_* settings, interleaved with the "
                             "defaults (a baseline in the same run), e.g. 'unbounded:STALK_API_MAX_REQUESTS=0'")
    parser.add_argument("--before", metavar="REV",
                        help="also run every scenario on the API of this git revision (its api/, workers/ and "
                             "operator/ first on PYTHONPATH), interleaved: the before of a change, same run")
    args = parser.parse_args(argv)
    variants = {"default": {}}
    for text in args.variant:
        name, _, pairs = text.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)

    # 1,000 client sockets here and as many in the API (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    work = Path(tempfile.mkdtemp(prefix="stalk-bench-api-"))
    processes = Processes(work)
    bench = Bench(plan=None, work=work, processes=processes, say=print)
    postgres = PrivatePostgres() if "postgres" in args.database else None
    if args.before:
        variants["before"] = {"PYTHONPATH": checkout(args.before, work / "before")}
    results = []
    try:
        print(bench.start_redis(), flush=True)
        if postgres:
            postgres.start()
        for database in args.database:
            for connections in args.connections:
                for variant, settings in variants.items():
                    result = scenario(bench, postgres, database, connections, args.seconds, variant, settings)
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
    if len(variants) > 1:
        print()
        print(ratios(results))
    return 0


def checkout(revision: str, into: Path) -> str:
    """The Python packages of ``revision`` in ``into``, as a PYTHONPATH that puts them first."""
    into.mkdir()
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", revision, "api", "workers", "operator"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"bench/api_concurrency.py: git archive {revision}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return os.pathsep.join(str(into / part) for part in ("api", "workers", "operator"))


def ratios(results: list[dict]) -> str:
    """Each variant against the defaults measured in the same run: /healthz p99 and 2xx answers/s."""
    lines = ["| database | connections | variant | /healthz p99: variant / default | 2xx/s: default / variant |",
             "| --- | --- | --- | --- | --- |"]

    def ok_rate(r: dict) -> float:
        return sum(v for k, v in r["statuses"].items() if k.startswith("2")) / r["seconds"]

    defaults = {(r["database"], r["connections"]): r for r in results if r["variant"] == "default"}
    for r in results:
        base = defaults.get((r["database"], r["connections"]))
        if r["variant"] == "default" or base is None:
            continue
        health = r["healthz"]["p99_ms"] / base["healthz"]["p99_ms"] if base["healthz"]["p99_ms"] else float("nan")
        rate = ok_rate(base) / ok_rate(r) if ok_rate(r) else float("nan")
        lines.append(f"| {r['database']} | {r['connections']:,} | {r['variant']} | {health:.2f}x | {rate:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
