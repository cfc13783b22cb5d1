"""``stalk operator`` and ``python -m stalk_operator``: the operator's command line.

Each option overrides its ``STALK_*`` variable (``OperatorSettings``); unknown arguments are refused
with a usage line, so a typo never starts a cluster-wide operator with its defaults.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError


def operator_command(
    watch_namespaces: Annotated[str | None, typer.Option(
        help="Namespaces whose TaskQueues to manage, comma separated; empty: every namespace. "
             "[env: STALK_WATCH_NAMESPACES]")] = None,
    operator_namespace: Annotated[str | None, typer.Option(
        help="Namespace of the leader Lease (the operator's own). (env STALK_OPERATOR_NAMESPACE; default: default)")] = None,
    metrics_host: Annotated[str | None, typer.Option(
        help="Address of /metrics, /healthz and /readyz. (env STALK_METRICS_HOST; default: 0.0.0.0)")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="Port of /metrics, /healthz and /readyz. (env STALK_METRICS_PORT; default: 8090)")] = None,
    leader_election: Annotated[bool | None, typer.Option(
        "--leader-election/--no-leader-election",
        help="Act only while holding the Lease (run several replicas). (env STALK_LEADER_ELECTION; default: on)")] = None,
    lease_name: Annotated[str | None, typer.Option(
        help="Name of the leader Lease. (env STALK_LEASE_NAME; default: stalk-operator)")] = None,
    identity: Annotated[str | None, typer.Option(
        help="This replica's name in the Lease. (env STALK_IDENTITY; default: hostname-pid)")] = None,
) -> None:
    """Run the TaskQueue operator against the cluster in KUBECONFIG (or the pod's service account)."""
    overrides = {name: value for name, value in locals().items() if value is not None}
    # Imported here: stalk_workers.cli loads this module through its entry points while it imports.
    from stalk_operator.config import OperatorSettings
    from stalk_workers.cli.errors import fail

    try:
        settings = OperatorSettings(**overrides)
    except ValidationError as exc:
        fail("invalid settings: " + "; ".join(
            (f"--{e['loc'][0].replace('_', '-')} / STALK_{e['loc'][0].upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    from stalk_operator.__main__ import main

    main(settings)
