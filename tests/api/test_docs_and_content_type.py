"""What a new user meets first, against the real API process (``stalk api``): the browsable docs
work with no network (their assets are served by the API), the docs' routes are counted under
their own paths in /metrics, and a body sent without ``Content-Type: application/json`` is told so
(issue 14)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.api.live import live_api, sqlite_env

HINT = "send it with 'Content-Type: application/json'"


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("docs")
    with live_api(sqlite_env(redis_server, workdir), workdir) as live:
        yield live


def asset_urls(html: str) -> list[str]:
    """Every URL a docs page loads: script and link sources, and the favicon."""
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + \
        re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_the_api_serves(api, page):
    html = httpx.get(api.url + page, timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = asset_urls(html.text)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere: nothing shows offline"
        answer = httpx.get(api.url + url, timeout=10)
        assert answer.status_code == 200, f"{page} loads {url}: {answer.status_code}"
        if url.endswith(".js"):
            assert "javascript" in answer.headers["content-type"] and len(answer.content) > 100_000
        if url.endswith(".css"):
            assert answer.headers["content-type"].startswith("text/css") and "swagger-ui" in answer.text


def test_only_the_packaged_assets_are_served(api):
    assert httpx.get(f"{api.url}/docs/assets/..%2Fcore.py", timeout=10).status_code == 404
    assert httpx.get(f"{api.url}/docs/assets/nothing.js", timeout=10).status_code == 404


def test_docs_routes_are_counted_under_their_own_paths(api):
    paths = ["/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"]
    for path in paths:
        assert httpx.get(api.url + path, timeout=10).status_code == 200, path
    httpx.get(f"{api.url}/docs/assets/nothing.js", timeout=10)
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    for route in ["/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs/assets/{name}"]:
        assert f'stalk_api_requests_total{{method="GET",route="{route}",status="200"}}' in text, route
    assert 'route="/docs/assets/{name}",status="404"' in text, "an unknown asset name is no new label"


@pytest.mark.parametrize(("headers", "sent"), [
    ({"content-type": "application/x-www-form-urlencoded"}, "got 'application/x-www-form-urlencoded'"),
    ({"content-type": "text/plain"}, "got 'text/plain'"),
    ({}, "no Content-Type was sent"),
], ids=["curl -d without -H", "text/plain", "no content type"])
@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/tasks/batch"])
def test_a_body_that_is_not_sent_as_json_is_told_to_be(api, path, headers, sent):
    body = b'{"task": "stalk.echo"}' if path == "/v1/tasks" else b'{"tasks": [{"task": "stalk.echo"}]}'
    response = httpx.post(api.url + path, content=body, headers=headers, timeout=10)
    assert response.status_code == 415, response.text
    assert HINT in response.json()["detail"] and sent in response.json()["detail"]
    # The same body as JSON is accepted, and JSON that is wrong is still a 422 saying what is wrong.
    assert httpx.post(api.url + path, content=body, headers={"content-type": "application/json"},
                      timeout=10).status_code == 202
    wrong = httpx.post(api.url + path, json=[1], timeout=10)
    assert wrong.status_code == 422 and HINT not in wrong.json()["detail"]


def test_the_415_is_documented_on_the_routes_that_read_a_body(api):
    spec = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    for path in ("/v1/tasks", "/v1/tasks/batch"):
        assert "415" in spec["paths"][path]["post"]["responses"], path
