"""Worker metrics, scraped over HTTP from a real prefork worker while tasks run.

The worker recycles its processes after every two tasks, so the counts prove that the samples
of dead children still add up (prometheus_client's multiprocess mode) and that the in-flight
gauge forgets a child that was killed in the middle of a task.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.servers import free_port, wait_until

FAST_RETRIES = {"STALK_RETRY_BACKOFF_SECONDS": "1", "STALK_RETRY_MAX": "1", "STALK_RETRY_JITTER": "false"}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_counts_match_what_ran_across_recycled_prefork_children(stack_factory):
    port = free_port()
    with stack_factory() as stack:
        stack.start_worker("default,notifications", concurrency=2, name="metrics", env={
            **FAST_RETRIES, "STALK_WORKER_METRICS_PORT": str(port), "STALK_WORKER_MAX_TASKS_PER_CHILD": "2"})
        ids = [stack.submit("stalk.health_check") for _ in range(5)]
        ids += [stack.submit("stalk.echo", args=[1]), stack.submit("stalk.fail"),
                stack.submit("stalk.echo", args=[2], queue="notifications")]
        for task_id in ids:
            stack.wait_for(task_id, timeout=60)

        def settled():
            # SUCCESS is recorded by task_success, just before task_postrun ends the runtime.
            samples = scrape(port)
            done = value(samples, "stalk_worker_task_runtime_seconds_count", task="stalk.fail", queue="default")
            return samples if done == 2 and total(samples, "stalk_worker_task_runtime_seconds_count") == 9 else None

        s = wait_until(settled, timeout=30, what="the runtime histogram to count all nine runs")
        hc = {"task": "stalk.health_check", "queue": "default"}
        fail = {"task": "stalk.fail", "queue": "default"}
        assert value(s, "stalk_worker_tasks_received_total", **hc) == 5
        assert value(s, "stalk_worker_tasks_started_total", **hc) == 5
        assert value(s, "stalk_worker_tasks_succeeded_total", **hc) == 5
        assert value(s, "stalk_worker_tasks_succeeded_total", task="stalk.echo", queue="default") == 1
        # The queue label is the queue the task was delivered from.
        assert value(s, "stalk_worker_tasks_succeeded_total", task="stalk.echo", queue="notifications") == 1
        # stalk.fail runs twice (one retry, re-published and received again), then fails for good.
        assert value(s, "stalk_worker_tasks_received_total", **fail) == 2
        assert value(s, "stalk_worker_tasks_started_total", **fail) == 2
        assert value(s, "stalk_worker_tasks_retried_total", **fail) == 1
        assert value(s, "stalk_worker_tasks_failed_total", **fail) == 1
        assert total(s, "stalk_worker_tasks_failed_total") == 1
        assert total(s, "stalk_worker_tasks_succeeded_total") == 7
        assert total(s, "stalk_worker_tasks_in_flight") == 0
        assert value(s, "stalk_worker_up", worker="metrics@test", queue="default") == 1
        assert value(s, "stalk_worker_up", worker="metrics@test", queue="notifications") == 1
        assert value(s, "stalk_worker_concurrency", worker="metrics@test") == 2
        assert not [name for name, _ in s if name.startswith("celery_")], "celery-exporter's names are not used"

        # A running task shows in flight; terminating it counts a revocation and the killed
        # child's in-flight sample goes away with it.
        sleeper = stack.submit("stalk.sleep", args=[60])
        stack.wait_for(sleeper, statuses={"STARTED"})
        wait_until(lambda: value(scrape(port), "stalk_worker_tasks_in_flight", task="stalk.sleep", queue="default")
                   == 1, timeout=10, what="the sleeping task to show in flight")
        assert stack.client.post(f"/v1/tasks/{sleeper}/cancel", params={"terminate": "true"}).status_code == 200

        def revoked():
            samples = scrape(port)
            labels = {"task": "stalk.sleep", "queue": "default"}
            return (value(samples, "stalk_worker_tasks_revoked_total", **labels) == 1
                    and total(samples, "stalk_worker_tasks_in_flight") == 0)

        wait_until(revoked, timeout=30, what="the revocation to count and the in-flight gauge to drop to 0")
