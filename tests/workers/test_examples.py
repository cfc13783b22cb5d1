"""The example module routes to the right queues and behaves as its base classes promise."""

from __future__ import annotations

import pytest

from stalk_workers.app import create_app
from stalk_workers.settings import Settings


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(broker_url="redis://127.0.0.1:1/0", task_modules="stalk_workers.examples.documents",
                               retry_backoff_seconds=1, record_tasks=False))


@pytest.mark.parametrize(("task", "queue"), [
    ("documents.summarize", "summarization"),
    ("documents.classify_ticket", "classification"),
    ("documents.notify_owner", "notifications"),
])
def test_example_tasks_route_to_their_queues(app, task, queue):
    assert app.amqp.router.route({}, task)["queue"].name == queue


def test_summarize_retries_model_timeouts_then_succeeds(app):
    result = app.tasks["documents.summarize"].apply(args=["One. Two. Three."], kwargs={"simulate_timeouts": 2})
    assert result.successful() and result.result == {"summary": "One. Two.", "sentences": 3}


def test_summarize_does_not_retry_bad_input(app):
    result = app.tasks["documents.summarize"].apply(args=[""])
    assert result.failed() and isinstance(result.result, ValueError)


def test_critical_task_never_retries(app):
    assert app.tasks["documents.notify_owner"].max_retries == 0
    assert app.tasks["documents.notify_owner"].apply(args=["nobody", "hi"]).failed()


def test_idempotent_task_is_stable(app):
    task = app.tasks["documents.classify_ticket"]
    assert task.apply(args=["Refund please"]).result == {"label": "billing"}
    assert task.apply(args=["hello"]).result == task.apply(args=["hello"]).result
    assert task.max_retries > app.tasks["stalk.fail"].max_retries
