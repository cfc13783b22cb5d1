"""Tokens: required on every /v1 route once configured; the API refuses to listen openly without them."""

from __future__ import annotations

import pytest

from stalk_api.config import ApiSettings
from stalk_api.main import InsecureBindError, create_app

V1_ROUTES = [
    ("GET", "/v1/tasks"), ("POST", "/v1/tasks"), ("POST", "/v1/tasks/batch"), ("GET", "/v1/tasks/x"),
    ("POST", "/v1/tasks/x/retry"), ("POST", "/v1/tasks/x/cancel"), ("GET", "/v1/queues"),
    ("GET", "/v1/workers"), ("GET", "/v1/task-types"),
]


@pytest.fixture
def secured(stack_factory, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("from-file-token\n")
    with stack_factory(api_tokens="alpha,beta", api_tokens_file=token_file) as stack:
        yield stack


@pytest.mark.parametrize(("method", "path"), V1_ROUTES, ids=[f"{m} {p}" for m, p in V1_ROUTES])
def test_every_v1_route_needs_a_token(secured, method, path):
    response = secured.client.request(method, path, json={"task": "stalk.echo"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = secured.client.request(method, path, json={"task": "stalk.echo"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"


@pytest.mark.parametrize("token", ["alpha", "beta", "from-file-token"])
def test_any_configured_token_is_accepted(secured, token):
    response = secured.client.get("/v1/task-types", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_probes_and_metrics_need_no_token(secured):
    assert secured.client.get("/healthz").status_code == 200
    assert secured.client.get("/readyz").status_code == 200
    assert secured.client.get("/metrics").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "api.example.com"])
def test_listening_beyond_loopback_without_tokens_is_refused(host):
    with pytest.raises(InsecureBindError, match="STALK_API_TOKENS"):
        create_app(ApiSettings(api_host=host))


def test_listening_beyond_loopback_with_tokens_is_allowed():
    create_app(ApiSettings(api_host="0.0.0.0", api_tokens="t"))


def test_openapi_document_declares_the_bearer_scheme_on_v1_routes_only(secured):
    spec = secured.client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "A token from STALK_API_TOKENS."}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert ("security" in operation) == path.startswith("/v1/"), path
            if path.startswith("/v1/"):
                assert operation["security"] == [{"HTTPBearer": []}]


def test_bearer_scheme_is_case_insensitive_and_tolerates_spaces(secured):
    response = secured.client.get("/v1/task-types", headers={"Authorization": "bearer  alpha"})
    assert response.status_code == 200


def test_a_missing_tokens_file_is_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-such-tokens"
    env = {"PATH": "/usr/bin:/bin", "STALK_API_TOKENS_FILE": str(missing), "STALK_DATABASE_URL": "sqlite://"}
    done = subprocess.run([sys.executable, "-m", "stalk_workers", "api", "--port", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    message = " ".join(done.stderr.split())  # the CLI wraps long lines at the terminal's width
    assert "Traceback" not in done.stderr and message.startswith("error: cannot read STALK_API_TOKENS_FILE"), message
    assert "No such file or directory" in message
