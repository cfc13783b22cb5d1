"""kopf handlers: they only keep the operator's in-memory view of TaskQueues and their targets.

The scaling itself happens in the tick loop (``loop.py``), one task per Redis broker, because kopf
gives every resource x timer its own asyncio task and that does not scale to 1,000 TaskQueues.

Watch-event handlers (``on.event``) are used rather than create/update/delete handlers on
purpose: they write nothing to the objects (no progress annotations from two replicas, no
finalizer that blocks deleting a TaskQueue while the operator is down), and a standby keeps the
same view as the leader, so it can take over at once.
"""

from __future__ import annotations

import logging

import kopf

from stalk_operator.spec import GROUP, PLURAL, VERSION, SpecError, parse_taskqueue


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # The Lease decides who acts; kopf's peering would freeze every replica but one.
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    # Reconnect watches well before proxies and load balancers cut idle connections.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


@kopf.on.event(GROUP, VERSION, PLURAL)
def taskqueue_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_) -> None:
    key = (body.metadata.namespace, body.metadata.name)
    if type == "DELETED":
        state = memo.registry.remove(key)
        if state is not None:
            memo.metrics.forget(*key, state.config.queue)
        return
    try:
        config = parse_taskqueue(body)
    except SpecError as exc:
        logger.error("TaskQueue %s/%s is not usable: %s", *key, exc)
        return
    memo.registry.upsert(config, body.get("status"))


@kopf.on.event("apps", "v1", "deployments")
def deployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_) -> None:
    memo.targets.observe("Deployment", type, body)


@kopf.on.event("apps", "v1", "statefulsets")
def statefulset_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_) -> None:
    memo.targets.observe("StatefulSet", type, body)
