"""Which queue (exchange, routing key) reached, from kombu's binding members: one row per rule.
The bindings are what kombu itself writes (checked against a real declare in the last test)."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Queue

from stalk_workers.routing import Bindings, route

TOPIC = [("tracker.issues.#", r"^tracker\.issues\..*?$", "issues"),
         ("tracker.reports.#", r"^tracker\.reports\..*?$", "reports"),
         ("tracker.*.urgent", r"^tracker\.[^\.]+\.urgent$", "urgent")]


@pytest.mark.parametrize(("routing_key", "bindings", "queue"), [
    ("emails", [("emails", "", "emails")], "emails"),
    ("mail.out", [("mail.out", "", "outbox"), ("mail.in", "", "inbox")], "outbox"),
    ("tracker.issues.enrich_issue", TOPIC, "issues"),
    ("tracker.reports.build_report", TOPIC, "reports"),
    ("tracker.issues.urgent", TOPIC, "issues"),  # two matches: the first by name
    ("tracker.billing.urgent", TOPIC, "urgent"),
    ("tracker.unknown", TOPIC, None),
    ("anything", [], None),
], ids=["direct-same-name", "direct-own-key", "topic-hash", "topic-other-queue", "topic-two-matches-first-by-name",
        "topic-star", "topic-no-match", "no-bindings"])
def test_route(routing_key, bindings, queue):
    assert route(routing_key, bindings) == queue


def test_bindings_read_what_kombu_declared(redis_urls):
    exchange = Exchange("tracker", type="topic")
    with Connection(redis_urls[0], transport_options={"global_keyprefix": "t:"}) as conn:
        for name, key in (("issues", "tracker.issues.#"), ("reports", "tracker.reports.#")):
            Queue(name, exchange, routing_key=key)(conn.default_channel).declare()
    bindings = Bindings(redis.Redis.from_url(redis_urls[0]), key_prefix="t:")
    routes = [("tracker", "tracker.reports.build_report"), ("tracker", "tracker.nowhere"), ("emails", "emails")]
    queue_of = bindings.resolver(routes)
    # Unmatched: the routing key stands for the queue (Celery's default routing, the default exchange).
    assert [queue_of(r) for r in routes] == ["reports", "tracker.nowhere", "emails"]
