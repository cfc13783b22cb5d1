"""The operator's commands, joined to ``stalk`` through the ``stalk.commands`` entry point group:
``stalk dev`` (what ``make run`` calls: the whole stack, workers scaled by local mode) and
``stalk operator`` (the Kubernetes operator, as ``python -m stalk_operator``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from stalk_workers.cli.errors import fail, load_settings
from stalk_workers.cli.output import make_console

console = make_console()


def stalk_command() -> str:
    """How to call this ``stalk`` from the current folder: ``stalk`` if PATH finds this one, else its path
    (``make run`` users have it only in .venv/bin)."""
    import os
    import shutil
    import sys

    here = Path(sys.executable).parent / "stalk"
    found = shutil.which("stalk")
    if found and Path(found).resolve() == here.resolve():
        return "stalk"
    try:
        return os.path.relpath(here) if not os.path.relpath(here).startswith("..") else str(here)
    except ValueError:
        return str(here)


def register(app: typer.Typer) -> None:
    from stalk_operator.command import operator_command

    app.command("operator")(operator_command)

    @app.command()
    def dev(
        api_port: Annotated[int, typer.Option(envvar="STALK_API_PORT")] = 8000,
        redis_port: Annotated[int | None, typer.Option(envvar="STALK_REDIS_PORT", min=1, max=65535, show_default=False,
                                                       help="Redis's port; default: the last run's, "
                                                            "6379 the first time if free.")] = None,
        cpus: Annotated[int | None, typer.Option(envvar="STALK_DEV_CPUS", min=1, show_default=False,
                                                 help="Size workers for this many CPUs (at most one prefork "
                                                      "process and one worker per queue each); default: "
                                                      "this machine's.")] = None,
        run_dir: Annotated[Path, typer.Option(envvar="STALK_RUN_DIR",
                                              help="Logs, the SQLite file and Redis data.")] = Path(".run"),
        reload: Annotated[bool, typer.Option("--reload/--no-reload", envvar="STALK_DEV_RELOAD",
                                             help="Restart the workers when a .py file of your tasks changes.")] = True,
    ) -> None:
        """Run everything on this machine: Redis, the API on 127.0.0.1, and autoscaled workers per queue."""
        import logging

        from rich.logging import RichHandler

        from stalk_operator.devstack import DevStack, DevStackError, Interrupted

        # The autoscaler says what it does ("summarization: 1 -> 3 workers (...)"): show it.
        handler = RichHandler(console=console, show_path=False, show_level=False, markup=False)
        logging.getLogger("stalk.local").addHandler(handler)
        logging.getLogger("stalk.local").setLevel(logging.INFO)

        stack = DevStack(settings=load_settings(), run_dir=run_dir, api_port=api_port, redis_port=redis_port, cpus=cpus,
                         reload=reload, say=lambda line: console.print(f"[dim]stalk dev:[/dim] {line}"))
        stack.handle_stop_signals()
        try:
            stack.start()
            url = f"http://127.0.0.1:{api_port}"
            console.print(f"\n[bold green]stalk is running[/bold green]\n"
                          f"  API        {url}  (docs: {url}/docs, metrics: {url}/metrics)\n"
                          f"  logs       {run_dir}/\n\n"
                          f"Submit a health check:\n"
                          f"  curl -s -X POST {url}/v1/tasks -H 'Content-Type: application/json' "
                          f"-d '{{\"task\": \"stalk.health_check\"}}'\n"
                          f"Then follow it:  curl -s {url}/v1/tasks/<task_id>   "
                          f"(or: {stalk_command()} submit stalk.health_check --wait)\n"
                          f"\nCtrl-C stops everything.\n")
            stack.watch()
        except Interrupted:
            pass
        except DevStackError as exc:
            stack.stop()
            fail(str(exc))
        except BaseException:
            stack.stop()
            raise
        console.print("stopping ...")
        stack.stop()
        console.print("stopped.")
