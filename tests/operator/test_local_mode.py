"""Local mode with real Redis and real ``celery worker`` processes (the tiny app in tests/workers)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import redis

from stalk_operator.local_mode import LocalActuator, LocalAutoscaler, celery_active_tasks
from stalk_operator.policy import Behavior, ScalingSpec
from stalk_workers.queue_reader import QueueReader
from stalk_workers.queues import QueueSpec, load_queue_table
from stalk_workers.settings import Settings
from tests.fixtures.servers import RedisServer, free_port, wait_until
from tests.workers.celery_app import create_app

REPO = Path(__file__).resolve().parents[2]
APP_MODULE = "tests.workers.celery_app"
# One thread per worker, so a worker answers remote control while its task runs.
QUEUE = QueueSpec(name="q", concurrency=1, pool="threads", min_replicas=0, max_replicas=2, tasks_per_replica=2)
# Start-up without the cluster chatter a lone test worker does not need.
FAST_START = ("--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO")
# Short windows so a test sees a full up-and-down cycle in seconds.
QUICK = ScalingSpec(scale_down=Behavior(stabilization_seconds=1), idle_seconds_before_zero=1)


@pytest.fixture
def broker(redis_urls) -> str:
    return redis_urls[0]


@pytest.fixture
def app(broker):
    return create_app(Settings(broker_url=broker))


def worker_env(broker: str) -> dict[str, str]:
    return {**os.environ, "STALK_BROKER_URL": broker, "PYTHONPATH": str(REPO)}


def drained(reader: QueueReader) -> bool:
    stats = reader.read(["q"])["q"]
    return stats.waiting == stats.in_flight == stats.scheduled == 0


def test_workers_start_for_a_backlog_and_stop_after_it_drains(broker, app, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stalk.local")
    for _ in range(4):
        app.send_task("tests.sleep", args=[0.5], queue="q")
    scaler = LocalAutoscaler([QUEUE], redis.Redis.from_url(broker), app_module=APP_MODULE, control_app=app,
                             template=QUICK, poll_seconds=0.2, env=worker_env(broker), log_dir=tmp_path,
                             worker_args=FAST_START)
    actuator, reader = scaler.actuators["q"], QueueReader(redis.Redis.from_url(broker))
    stop = threading.Event()
    thread = threading.Thread(target=scaler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: actuator.replicas == 2, timeout=10, what="two workers for four tasks")
        wait_until(lambda: drained(reader), timeout=60, what="the workers to run all four tasks")
        wait_until(lambda: actuator.alive == 0, timeout=30, what="the idle workers to stop")
    finally:
        stop.set()
        thread.join(90)
    assert not thread.is_alive()
    assert "q: 0 -> 2 workers (ScaleUpForBacklog: 4 waiting, 0 in flight" in caplog.text
    assert "-> 0 workers (ScaleDownIdle: no work for" in caplog.text
    assert drained(reader)  # nothing given back to Redis by a stopped worker


def test_scale_down_stops_the_newest_idle_worker_and_lets_busy_ones_finish(broker, app, tmp_path):
    active_tasks = celery_active_tasks(app, timeout=0.5)
    actuator = LocalActuator(QUEUE, app_module=APP_MODULE, env=worker_env(broker), active_tasks=active_tasks,
                             log_dir=tmp_path, extra_args=FAST_START)
    reader = QueueReader(redis.Redis.from_url(broker))

    def all_answer():
        replies = app.control.ping(destination=actuator.worker_names, timeout=0.5)
        return {name for reply in replies for name in reply} == set(actuator.worker_names)

    try:
        actuator.scale(3)  # started together: one start-up wait instead of two
        names = actuator.worker_names
        wait_until(all_answer, timeout=60, what="three workers to answer")
        actuator.scale(2)  # all idle: the newest goes
        assert actuator.worker_names == names[:2]
        wait_until(lambda: actuator.alive == 2, timeout=15, what="the stopped worker to exit")

        app.send_task("tests.sleep", args=[2], queue="q")
        busy = wait_until(lambda: {n for n, k in active_tasks(actuator.worker_names).items() if k}, timeout=15,
                          what="one worker running the task")
        assert len(busy) == 1
        actuator.scale(1)  # the idle one goes, whichever is newer
        assert actuator.worker_names == list(busy)
        wait_until(lambda: actuator.alive == 1, timeout=15, what="the idle worker to exit")

        actuator.stop(timeout=30)  # warm shutdown: the running task finishes and is acked
        assert actuator.alive == 0
        assert drained(reader)
    finally:
        actuator.stop(timeout=5)


def test_keeps_workers_while_redis_cannot_be_read_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stalk.local")
    server = RedisServer(port=free_port(), process=None, workdir=tmp_path)
    server.start()
    keep_one = QueueSpec(name="q", concurrency=1, pool="threads", min_replicas=1, max_replicas=2)
    scaler = LocalAutoscaler([keep_one], redis.Redis.from_url(server.url(), socket_connect_timeout=1),
                             app_module=APP_MODULE, template=QUICK, env=worker_env(server.url()), log_dir=tmp_path,
                             worker_args=FAST_START)
    try:
        assert scaler.tick()["q"].replicas == 1
        server.stop()
        assert scaler.tick() == {} and scaler.tick() == {}
        assert scaler.actuators["q"].replicas == 1  # never scaled on an error
        assert caplog.text.count("cannot read queues from Redis") == 1  # once per outage, not per tick
        server.start()
        assert scaler.tick()["q"].replicas == 1
        assert "reading queues from Redis again" in caplog.text
    finally:
        scaler.stop()
        server.stop()


def test_takes_limits_from_the_queue_table_and_reads_under_the_key_prefix(broker, tmp_path):
    table = tmp_path / "queues.yaml"
    table.write_text("default: {maxReplicas: 2}\nreports: {minReplicas: 1, tasksPerReplica: 3}\n")
    create_app(Settings(broker_url=broker, broker_key_prefix="team-a:")).send_task("tests.sleep", queue="default")
    scaler = LocalAutoscaler(load_queue_table(table), redis.Redis.from_url(broker), key_prefix="team-a:",
                             app_module=APP_MODULE, env=worker_env(broker), log_dir=tmp_path, worker_args=FAST_START)
    assert (scaler.specs["reports"].min_replicas, scaler.specs["reports"].tasks_per_replica) == (1, 3)
    assert scaler.specs["default"].max_replicas == 2
    try:
        decisions = scaler.tick()
        assert {name: (d.replicas, d.reason) for name, d in decisions.items()} == {
            "default": (1, "ScaleUpForBacklog"), "reports": (1, "AtMinReplicas")}
    finally:
        scaler.stop()


def test_restart_replaces_each_worker_and_lets_the_old_one_finish_its_task(broker, app, tmp_path):
    # What stalk dev --reload does on a code change: new workers, the old ones drain (warm shutdown).
    active_tasks = celery_active_tasks(app, timeout=0.5)
    actuator = LocalActuator(QUEUE, app_module=APP_MODULE, env=worker_env(broker), active_tasks=active_tasks,
                             log_dir=tmp_path, extra_args=FAST_START)
    reader = QueueReader(redis.Redis.from_url(broker))
    try:
        actuator.scale(1)
        old = actuator.worker_names
        app.send_task("tests.sleep", args=[3], queue="q")
        wait_until(lambda: active_tasks(old).get(old[0]), timeout=60, what="the worker to run the task")
        for _ in range(2):
            app.send_task("tests.sleep", args=[0.2], queue="q")
        assert actuator.restart() == 1
        assert actuator.replicas == 1 and actuator.worker_names != old and actuator.alive == 2
        wait_until(lambda: actuator.alive == 1, timeout=30, what="the old worker to finish its task and exit")
        wait_until(lambda: drained(reader), timeout=60, what="the new worker to run the waiting tasks")
    finally:
        actuator.stop(timeout=5)
