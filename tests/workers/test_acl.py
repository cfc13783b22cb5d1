"""The ACL rules of docs/redis.md, run as they are written: the API, a real worker, a Celery client
reading a result and the operator's reads, each as its own Redis user, on a key prefix.

Redis's ACL LOG must stay empty for those users: a command or key refused even once (a library that
retried or swallowed the error quietly) fails the test and names what was refused.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stalk_operator.busy import CeleryInspector
from stalk_workers.factory import create_app
from stalk_workers.queue_reader import QueueReader
from stalk_workers.unconsumed import unconsumed_lists
from tests.fixtures.servers import RedisServer, free_port, wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "redis.md"
PREFIX = "stalk:"  # the docs' STALK_BROKER_KEY_PREFIX


def documented_rules() -> dict[str, list[str]]:
    """User name -> the ``ACL SETUSER`` line of docs/redis.md's marked block, split as a shell would."""
    text = DOC.read_text()
    block = re.search(r"<!-- acl-rules:[^>]*-->\n```text\n(.*?)```", text, re.S)
    assert block, "docs/redis.md has no marked block of ACL rules"
    rules = {}
    for line in block.group(1).strip().splitlines():
        words = shlex.split(line)
        assert words[:2] == ["ACL", "SETUSER"], line
        rules[words[2]] = words
    return rules


RULES = documented_rules()


def password(user: str) -> str:
    return next(word[1:] for word in RULES[user] if word.startswith(">"))


@pytest.fixture
def acl_redis(tmp_path) -> Iterator[RedisServer]:
    """A Redis of its own: the rules name database 0's channels (kombu's fanout ``/0.…``)."""
    server = RedisServer(port=free_port(), process=None, workdir=tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def acl_users(acl_redis):
    admin = redis.Redis(port=acl_redis.port)
    for words in RULES.values():
        admin.execute_command(*words)
    admin.execute_command("ACL", "LOG", "RESET")
    yield admin
    for user in RULES:
        admin.execute_command("ACL", "DELUSER", user)


def refused(admin: redis.Redis) -> list[str]:
    entries = admin.execute_command("ACL", "LOG", "128")
    found = []
    for entry in entries:
        fields = dict(zip(entry[::2], entry[1::2], strict=False))
        fields = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                  for k, v in fields.items()}
        if fields.get("username") in RULES:
            found.append(f"{fields['username']}: {fields['reason']} {fields['object']} ({fields['context']})")
    return sorted(set(found))


def as_user(url: str, user: str) -> str:
    return url.replace("redis://", f"redis://{user}:{password(user)}@", 1)


def test_every_component_works_with_exactly_the_documented_rule(acl_users, acl_redis, stack_factory):
    broker, backend = acl_redis.url(0), acl_redis.url(1)
    with stack_factory(broker_url=as_user(broker, "stalk-api"), result_backend=as_user(backend, "stalk-api"),
                       broker_key_prefix=PREFIX) as stack:
        worker_env = {"STALK_BROKER_URL": as_user(broker, "stalk-worker"),
                      "STALK_RESULT_BACKEND": as_user(backend, "stalk-worker"), "STALK_BROKER_KEY_PREFIX": PREFIX}
        stack.start_worker("default", concurrency=1, env=worker_env)
        ids = [stack.submit("stalk.echo", args=[n]) for n in range(3)]
        ids.append(stack.submit("stalk.echo", args=["later"], countdown=1))
        batch = stack.client.post("/v1/tasks/batch", json={"tasks": [{"task": "stalk.echo", "args": [7]}] * 2})
        assert batch.status_code == 202, batch.text
        ids += [t["task_id"] for t in batch.json()["tasks"]]
        for task_id in ids:
            assert stack.wait_for(task_id)["status"] == "SUCCESS", refused(acl_users)
        for path in ("/v1/queues", "/v1/workers", "/readyz"):
            answer = stack.client.get(path)
            assert answer.status_code == 200, (path, answer.text, refused(acl_users))
        queues = stack.client.get("/v1/queues").json()["queues"]
        assert next(q for q in queues if q["name"] == "default")["workers"] == 1

        # A Celery client reading a result, as the worker's user (the result backend's keys).
        reader = create_app(stack.settings.model_copy(update={
            "broker_url": worker_env["STALK_BROKER_URL"], "result_backend": worker_env["STALK_RESULT_BACKEND"],
            "record_tasks": False}))
        assert reader.AsyncResult(ids[0]).get(timeout=10) == {"args": [0], "kwargs": {}}

        # The operator's reads, as its read-mostly user: the Lua read, the workers' remote control, the scan.
        operator_url = as_user(broker, "stalk-operator")
        client = redis.Redis.from_url(operator_url)
        stats = QueueReader(client, key_prefix=PREFIX).read(["default"])["default"]
        assert (stats.waiting, stats.in_flight) == (0, 0)
        inspector = CeleryInspector(operator_url, key_prefix=PREFIX, timeout=2)
        try:
            assert inspector.consumed_queues() == {"default"}
            assert len(inspector.active()) == 1
        finally:
            inspector.close()
        assert unconsumed_lists(client, key_prefix=PREFIX, claimed={"default"}) == {}
        assert refused(acl_users) == []
        # Read-only where it can be: the operator's user cannot change a queue.
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.lpush(f"{PREFIX}default", "x")
        acl_users.execute_command("ACL", "LOG", "RESET")  # that refusal was the test's own
    assert refused(acl_users) == []


def test_the_queue_reader_falls_back_to_evalsha_on_a_redis_without_read_only_scripts(tmp_path):
    """EVALSHA_RO (what lets the operator's read-only user run the read) is new in Redis 7.0; on a
    server without it (Redis 6, simulated by renaming the command away) the read takes EVALSHA."""
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
         "--rename-command", "EVALSHA_RO", "", "--rename-command", "EVAL_RO", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        wait_until(client.ping, timeout=10, what="redis-server without EVALSHA_RO")
        client.lpush("default", json.dumps({"headers": {}, "properties": {}}))
        reader = QueueReader(client)
        for _ in range(2):  # the first read finds out, the next ones go straight to EVALSHA
            assert reader.read(["default"])["default"].waiting == 1
    finally:
        process.terminate()
        process.wait(10)
