"""The ``stalk`` command line. Each module holds one group of commands; this one assembles them."""

from __future__ import annotations

import typer

from stalk_workers.cli import client, dev, servers

app = typer.Typer(
    name="stalk",
    help="Run Celery task queues: submit and follow tasks, run workers, the API and the local stack.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
client.register(app)
servers.register(app)
dev.register(app)


def main() -> None:
    app()
