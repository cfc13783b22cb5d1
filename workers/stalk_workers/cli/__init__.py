"""The ``stalk`` command line. Each module holds one group of commands; this one assembles them.

The workers' own commands are here; every other component registers its commands through the
``stalk.commands`` entry point group (pyproject.toml: ``stalk api`` from stalk_api,
``stalk dev``/``stalk operator`` from stalk_operator), so this package never imports them.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from stalk_workers.cli import client, servers

ENTRY_POINT_GROUP = "stalk.commands"

app = typer.Typer(
    name="stalk",
    help="Run Celery task queues: submit and follow tasks, run workers, the API and the local stack.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
client.register(app)
servers.register(app)
# A component that is installed but fails to import is an error to see, not a command to drop.
for command in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
    command.load()(app)


def main() -> None:
    app()
