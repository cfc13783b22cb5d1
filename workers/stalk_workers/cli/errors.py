"""One readable line and a non-zero exit, never a traceback: for every component's commands."""

from __future__ import annotations

from typing import NoReturn, TypeVar

import typer
from pydantic import ValidationError

from stalk_workers.cli.output import make_console
from stalk_workers.settings import Settings

S = TypeVar("S", bound=Settings)

err_console = make_console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def load_settings(cls: type[S] = Settings) -> S:
    """The settings from the environment; invalid ones are one line naming each variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = "; ".join(f"STALK_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" if e["loc"]
                             else e["msg"].removeprefix("Value error, ") for e in exc.errors())
        fail(f"invalid settings: {problems}")
