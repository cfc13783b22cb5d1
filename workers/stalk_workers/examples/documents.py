"""A realistic task module written against stalk's base classes: summarize, classify, notify.

The model call is simulated (no network here), but the shape is the real one: a slow call that
sometimes times out, retried with backoff only for the errors worth retrying.

Run it: ``STALK_TASK_MODULES=stalk_workers.examples.documents make run``, then
``stalk submit documents.summarize --arg '"Long text. More text."' --wait``.
"""

from __future__ import annotations

import hashlib
import re

from celery import shared_task

from stalk_workers.base import CriticalTask, IdempotentTask, StalkTask

LABELS = ("billing", "bug", "feature-request", "other")


class ModelTimeout(Exception):
    """The model provider did not answer in time: worth another try."""


class SummarizeTask(StalkTask):
    abstract = True
    # Only transient errors are retried; a bad document fails at once and is dead-lettered.
    autoretry_for = (ModelTimeout,)


@shared_task(name="documents.summarize", base=SummarizeTask, bind=True)
def summarize(self, text: str, max_sentences: int = 2, simulate_timeouts: int = 0) -> dict:
    """Summarize a document (its first sentences; stands in for an LLM call)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if self.request.retries < simulate_timeouts:
        raise ModelTimeout(f"model did not answer (attempt {self.request.retries + 1})")
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    return {"summary": " ".join(sentences[:max_sentences]), "sentences": len(sentences)}


@shared_task(name="documents.classify_ticket", base=IdempotentTask)
def classify_ticket(subject: str, body: str = "") -> dict:
    """Label a support ticket. Idempotent: the same ticket always gets the same label."""
    words = f"{subject} {body}".lower()
    for label, hints in (("billing", ("invoice", "charge", "refund")), ("bug", ("error", "crash", "broken")),
                         ("feature-request", ("please add", "would like", "feature"))):
        if any(h in words for h in hints):
            return {"label": label}
    return {"label": LABELS[int(hashlib.sha256(words.encode()).hexdigest(), 16) % len(LABELS)]}


@shared_task(name="documents.notify_owner", base=CriticalTask)
def notify_owner(owner: str, message: str) -> dict:
    """Tell a document's owner it is ready. Never retried automatically: no one wants two emails."""
    if "@" not in owner:
        raise ValueError(f"not an email address: {owner!r}")
    return {"sent_to": owner, "characters": len(message)}
