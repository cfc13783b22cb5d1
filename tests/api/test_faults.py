"""Database faults while submissions run, against the real API process, real Redis and a real
database file or server: a 503 leaves nothing behind, every 202 has a record and a message, and
no message exists without a record (issue 12: 6,139 messages were left with neither).

No worker runs: the messages stay in Redis to be counted, as for a queue scaled to zero.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections import Counter
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from stalk_api.config import ApiSettings
from tests.api.live import Submissions, live_api, queued_task_ids, submit_while
from tests.fixtures.servers import POSTGRES_BIN, POSTGRES_USER, _as_postgres, free_port, fresh_redis_pair, unavailable, wait_until
from tests.fixtures.stack import settings_env


@contextmanager
def submitting(url: str):
    """Submissions running in a thread while the body of the ``with`` injects a fault."""
    stop = threading.Event()
    statuses: Counter = Counter()
    out: dict[str, Submissions] = {}
    loader = threading.Thread(target=lambda: out.update(s=submit_while(url, lambda: not stop.is_set(),
                                                                       statuses=statuses)))
    loader.start()
    try:
        yield statuses
    finally:
        stop.set()
        loader.join(120)
    statuses.clear()
    statuses.update(out["s"].statuses)
    statuses["accepted"] = out["s"].accepted


def ready(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).status_code


def accepted_again(statuses: Counter) -> callable:
    """True once 20 more submissions were accepted than when it was made."""
    before = statuses[202]
    return lambda: statuses[202] >= before + 20


def assert_nothing_left_behind(statuses: Counter, records: dict[str, bool], messages: list[str]) -> None:
    accepted = statuses["accepted"]
    assert statuses[503] > 0, f"the fault never reached a submission: {statuses - Counter(accepted=0)}"
    assert set(statuses) <= {202, 503, "accepted"}, statuses
    assert len(messages) == len(set(messages)), "a task was published twice"
    assert set(messages) - set(records) == set(), "messages without a record"
    assert accepted - set(messages) == set(), "202 answers without a message"
    assert set(records) - accepted == set(), "records of submissions that were answered 503"
    assert set(messages) - accepted == set(), "messages of submissions that were answered 503"
    assert all(records.values()), "records left marked unpublished"


def sqlite_records(path: Path) -> dict[str, bool]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT task_id, published FROM task_records").fetchall())


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def sqlite_api(redis_server, tmp_path):
    def start(database: Path):
        broker, backend = fresh_redis_pair(redis_server)
        env = settings_env(ApiSettings(broker_url=broker, result_backend=backend, database_url=f"sqlite:///{database}"))
        return live_api(env, tmp_path), redis.Redis.from_url(broker)

    return start


def test_sqlite_file_turned_immutable_leaves_nothing_behind(sqlite_api, tmp_path):
    if shutil.which("chattr") is None:
        unavailable("chattr (e2fsprogs) is not installed")
    database = tmp_path / "records.db"
    api_cm, broker = sqlite_api(database)
    with api_cm as api, submitting(api.url) as statuses:
        wait_until(lambda: statuses[202] > 50, timeout=60, what="submissions to be under way")
        files = [database, database.with_name(database.name + "-wal")]
        try:
            chattr("+i", *files)
        except subprocess.CalledProcessError as exc:
            unavailable(f"chattr +i does not work here: {exc.stderr.decode().strip()}")
        try:
            wait_until(lambda: statuses[503] > 20, timeout=60, what="submissions to be refused")
            assert ready(api.url) == 503, "/readyz said ready while the database file could not be written"
        finally:
            chattr("-i", *files)
        wait_until(lambda: ready(api.url) == 200, timeout=30, what="/readyz to be ready again")
        wait_until(accepted_again(statuses), timeout=60, what="submissions to be accepted again")
    assert_nothing_left_behind(statuses, sqlite_records(database), queued_task_ids(broker))


def test_sqlite_disk_full_leaves_nothing_behind(sqlite_api, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a small tmpfs: {done.stderr.decode().strip()}")
    try:
        database = mount / "records.db"
        api_cm, broker = sqlite_api(database)
        with api_cm as api, submitting(api.url) as statuses:
            wait_until(lambda: statuses[202] > 50, timeout=60, what="submissions to be under way")
            filler = mount / "filler"
            with open(filler, "wb", buffering=0) as out:  # every free byte of the filesystem
                try:
                    while True:
                        out.write(b"\0" * 65536)
                except OSError:
                    pass
            try:
                wait_until(lambda: statuses[503] > 20, timeout=60, what="submissions to be refused")
            finally:
                filler.unlink()
            wait_until(accepted_again(statuses), timeout=60, what="submissions to be accepted again")
            assert ready(api.url) == 200
        assert_nothing_left_behind(statuses, sqlite_records(database), queued_task_ids(broker))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_sqlite_directory_removed_the_api_refuses_and_says_not_ready(sqlite_api, tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    database = directory / "records.db"
    api_cm, broker = sqlite_api(database)
    with api_cm as api, httpx.Client(base_url=api.url, timeout=30) as client:
        before = [client.post("/v1/tasks", json={"task": "stalk.echo", "args": [i]}) for i in range(5)]
        assert {r.status_code for r in before} == {202}
        shutil.rmtree(directory)
        after = [client.post("/v1/tasks", json={"task": "stalk.echo"}) for _ in range(5)]
        batch = client.post("/v1/tasks/batch", json={"tasks": [{"task": "stalk.echo"}] * 3})
        readiness = client.get("/readyz")
    assert [r.status_code for r in after] == [503] * 5 and batch.status_code == 503
    assert "records.db" in after[0].json()["detail"] and after[0].headers["retry-after"]
    assert readiness.status_code == 503 and "gone" in readiness.json()["detail"]
    assert sorted(queued_task_ids(broker)) == sorted(r.json()["task_id"] for r in before), \
        "tasks were published into a database file nobody can read"


# --- PostgreSQL stopped mid-commit -------------------------------------------------------------

@contextmanager
def private_postgres():
    """A PostgreSQL server of this test's own, to stop and start (the session's one is shared)."""
    if not (POSTGRES_BIN / "postgres").exists():
        pytest.fail("PostgreSQL 15 is not installed: run `make test`")
    import os

    base = Path(tempfile.mkdtemp(prefix="stalk-pg-fault-"))
    if os.geteuid() == 0:
        shutil.chown(base, POSTGRES_USER)
    datadir, port = base / "data", free_port()
    _as_postgres([str(POSTGRES_BIN / "initdb"), "-D", str(datadir), "-A", "trust", "-U", POSTGRES_USER, "--no-sync"])
    ctl = [str(POSTGRES_BIN / "pg_ctl"), "-D", str(datadir), "-w", "-l", str(base / "log")]
    options = ["-o", f"-h 127.0.0.1 -p {port} -k {base} -F"]

    class Server:
        url = f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{port}/postgres?connect_timeout=2"

        def start(self):
            _as_postgres([*ctl, "start", *options])

        def stop(self):
            _as_postgres([*ctl, "-m", "immediate", "stop"])

    server = Server()
    server.start()
    try:
        yield server
    finally:
        subprocess.run(["runuser", "-u", POSTGRES_USER, "--", *ctl, "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_stopped_mid_commit_leaves_nothing_behind(redis_server, tmp_path):
    broker, backend = fresh_redis_pair(redis_server)
    with private_postgres() as postgres:
        env = settings_env(ApiSettings(broker_url=broker, result_backend=backend, database_url=postgres.url))
        with live_api(env, tmp_path) as api, submitting(api.url) as statuses:
            wait_until(lambda: statuses[202] > 50, timeout=60, what="submissions to be under way")
            postgres.stop()  # immediate: connections cut, whatever commit was under way
            try:
                wait_until(lambda: statuses[503] > 20, timeout=60, what="submissions to be refused")
                assert ready(api.url) == 503
            finally:
                postgres.start()
            wait_until(accepted_again(statuses), timeout=60, what="submissions to be accepted again")
        engine = sa.create_engine(postgres.url)
        with engine.connect() as conn:
            records = dict(conn.execute(sa.text("SELECT task_id, published FROM task_records")).all())
        engine.dispose()
    assert_nothing_left_behind(statuses, records, queued_task_ids(redis.Redis.from_url(broker)))
