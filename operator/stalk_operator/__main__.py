"""``python -m stalk_operator``: kopf's watches, the leader Lease, the tick loop and /metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import kopf
from aiohttp import web

from stalk_operator import handlers  # noqa: F401 - registers the kopf handlers
from stalk_operator.config import OperatorSettings
from stalk_operator.kube import KubeApi, load_api_client
from stalk_operator.leader import LeaseElector
from stalk_operator.loop import BrokerSupervisor
from stalk_operator.metrics import OperatorMetrics, health_app
from stalk_operator.state import Registry, TargetCache

log = logging.getLogger("stalk_operator")

HEARTBEAT_TIMEOUT_SECONDS = 60.0


async def run(settings: OperatorSettings) -> None:
    # Status writes and scale calls have api_concurrency slots each; the lease and Events a few more.
    kube = KubeApi(load_api_client(connections=2 * settings.api_concurrency + 4))
    metrics = OperatorMetrics()
    registry, targets = Registry(), TargetCache()
    elector: LeaseElector | None = None
    if settings.leader_election:
        elector = LeaseElector(
            kube.coordination, namespace=settings.operator_namespace, name=settings.lease_name,
            identity=settings.identity, duration_seconds=settings.lease_duration_seconds,
            renew_seconds=settings.lease_renew_seconds,
        )
    supervisor = BrokerSupervisor(
        registry=registry, targets=targets, kube=kube, metrics=metrics, settings=settings,
        is_leader=(lambda: elector.is_leader) if elector else (lambda: True),
    )
    kopf_ready = asyncio.Event()

    background = [asyncio.create_task(supervisor.run(), name="supervisor")]
    if elector:
        background.append(asyncio.create_task(elector.run(), name="lease"))

    def alive() -> bool:
        # The supervisor beats every second; a minute of silence means the event loop is stuck.
        return not background[0].done() and time.monotonic() - supervisor.heartbeat < HEARTBEAT_TIMEOUT_SECONDS

    app = health_app(metrics, alive=alive, ready=kopf_ready.is_set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    log.info("metrics, /healthz and /readyz on %s:%d", settings.metrics_host, settings.metrics_port)
    try:
        namespaces = settings.namespaces
        await kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            memo=kopf.Memo(registry=registry, targets=targets, metrics=metrics),
            ready_flag=kopf_ready,
        )
    finally:
        for task in background:  # the supervisor stops first, then the lease is given up
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


def main(settings: OperatorSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every watch event's handler at INFO: one line per Deployment change is noise here.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(run(settings))


if __name__ == "__main__":
    import typer

    from stalk_operator.command import operator_command

    typer.run(operator_command)
