"""Answers the API writes by hand for speed are what their response models write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from stalk_api.routes.tasks import batch_answer, submitted
from stalk_api.schemas import BatchSubmitted
from stalk_api.submission import Submitted


def test_batch_answer_is_what_the_model_writes():
    now = datetime.now(UTC)
    records = [
        Submitted(task_id="a", task_name="stalk.echo", queue="default", created_at=now),
        Submitted(task_id="b", task_name="reports.résumé \"quoted\"", queue="reports", created_at=now, retry_of="a"),
        # A naive time from SQLite is UTC; another zone is converted.
        Submitted(task_id="c", task_name="x", queue="q", created_at=now.replace(tzinfo=None) - timedelta(seconds=1)),
        Submitted(task_id="d", task_name="x", queue="q", created_at=now.astimezone(timezone(timedelta(hours=2)))),
    ]
    assert batch_answer(records) == BatchSubmitted(tasks=[submitted(r) for r in records]).model_dump_json()
