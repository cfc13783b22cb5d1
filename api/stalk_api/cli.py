"""``stalk api``: the API's own command, joined to the ``stalk`` CLI through the ``stalk.commands``
entry point group (pyproject.toml), so that the workers' CLI core never imports the API."""

from __future__ import annotations

from typing import Annotated

import typer

from stalk_workers.cli.errors import fail, load_settings


def register(app: typer.Typer) -> None:
    @app.command()
    def api(
        host: Annotated[str | None, typer.Option(help="Default STALK_API_HOST (127.0.0.1).")] = None,
        port: Annotated[int | None, typer.Option(help="Default STALK_API_PORT (8000).")] = None,
    ) -> None:
        """Run the task API with uvicorn."""
        # Imported on use: `stalk --help` and the client commands need neither uvicorn nor the app.
        from stalk_api import server
        from stalk_api.config import ApiSettings
        from stalk_api.main import InsecureBindError, create_app

        settings = load_settings(ApiSettings)
        settings = settings.model_copy(update={k: v for k, v in (("api_host", host), ("api_port", port)) if v})
        try:
            application = create_app(settings)
        except InsecureBindError as exc:
            fail(str(exc))
        server.run(application, settings)
