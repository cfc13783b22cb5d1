"""The browsable docs (/docs: Swagger UI, /redoc: ReDoc), with their JavaScript and CSS served by the
API itself: FastAPI's default pages load them from a CDN and show nothing offline.

The assets are the ones the ``fastapi-offline`` package ships (Swagger UI 5, which renders the
OpenAPI 3.1 document FastAPI writes; the ``swagger-ui-bundle`` package's 4.x shows an error for 3.1).
The pages are FastAPI's own self-hosting recipe (``get_swagger_ui_html`` with local URLs).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
# Where the package keeps its files (fastapi-offline 1.7: static/ beside its module).
ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSET_NAMES = frozenset(path.name for path in ASSETS.iterdir() if path.is_file())

router = APIRouter(include_in_schema=False)


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI", oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"), swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
        # No validator badge: Swagger UI would fetch it from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None})


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc", redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"), with_google_fonts=False)


@router.get(f"{ASSETS_URL}/{{name}}")
async def asset(name: str) -> FileResponse:
    # Only the package's own files: a name is never joined to a path unchecked.
    if name not in ASSET_NAMES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset named {name!r}")
    return FileResponse(ASSETS / name)
