"""Bad input on every route gets a 4xx whose message says what is wrong — never a 500."""

from __future__ import annotations

import pytest

def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


CASES = [
    # (name, method, path, json body or raw bytes, expected status, words the message must contain)
    ("not json", "POST", "/v1/tasks", b"{nope", 422, "json"),
    ("body not an object", "POST", "/v1/tasks", [1, 2], 422, "body"),
    ("missing task", "POST", "/v1/tasks", {"args": []}, 422, "body.task"),
    ("unknown field", "POST", "/v1/tasks", {"task": "stalk.echo", "retries": 3}, 422, "body.retries"),
    ("args not a list", "POST", "/v1/tasks", {"task": "stalk.echo", "args": "x"}, 422, "body.args"),
    ("kwargs not an object", "POST", "/v1/tasks", {"task": "stalk.echo", "kwargs": [1]}, 422, "body.kwargs"),
    ("priority too high", "POST", "/v1/tasks", {"task": "stalk.echo", "priority": 10}, 422, "less than or equal to 9"),
    ("negative countdown", "POST", "/v1/tasks", {"task": "stalk.echo", "countdown": -1}, 422, "countdown"),
    ("countdown and eta", "POST", "/v1/tasks",
     {"task": "stalk.echo", "countdown": 1, "eta": "2030-01-01T00:00:00Z"}, 422, "either countdown or eta"),
    ("eta without zone", "POST", "/v1/tasks", {"task": "stalk.echo", "eta": "2030-01-01T00:00:00"}, 422, "time zone"),
    ("eta beyond visibility timeout", "POST", "/v1/tasks", {"task": "stalk.echo", "eta": "2099-01-01T00:00:00Z"},
     400, "visibility timeout"),
    ("countdown beyond visibility timeout", "POST", "/v1/tasks", {"task": "stalk.echo", "countdown": 86400},
     400, "beyond the limit"),
    ("lone surrogate in args", "POST", "/v1/tasks", b'{"task": "stalk.echo", "args": ["\\ud800"]}', 422,
     "lone surrogates"),
    ("lone surrogate in a kwargs name", "POST", "/v1/tasks", b'{"task": "stalk.echo", "kwargs": {"\\udfff": 1}}',
     422, "lone surrogates"),
    ("args nested 300 deep", "POST", "/v1/tasks", {"task": "stalk.echo", "args": nested(300)},
     422, "nested at most"),
    ("countdown 1e12", "POST", "/v1/tasks", {"task": "stalk.echo", "countdown": 1e12}, 400, "beyond the limit"),
    ("countdown 1e308", "POST", "/v1/tasks", {"task": "stalk.echo", "countdown": 1e308}, 400, "beyond the limit"),
    ("countdown Infinity", "POST", "/v1/tasks", b'{"task": "stalk.echo", "countdown": Infinity}', 422, "countdown"),
    ("eta past year 9999 in UTC", "POST", "/v1/tasks", {"task": "stalk.echo", "eta": "9999-12-31T23:59:59-01:00"},
     400, "out of range"),
    ("eta before year 1 in UTC", "POST", "/v1/tasks", {"task": "stalk.echo", "eta": "0001-01-01T00:00:00+01:00"},
     400, "out of range"),
    ("batch with a huge countdown", "POST", "/v1/tasks/batch", {"tasks": [{"task": "stalk.echo", "countdown": 1e15}]},
     400, "tasks[0]"),
    ("unregistered task", "POST", "/v1/tasks", {"task": "myapp.nothing"}, 404, "not registered"),
    ("celery internal task", "POST", "/v1/tasks", {"task": "celery.chord_unlock"}, 404, "not registered"),
    ("unknown queue", "POST", "/v1/tasks", {"task": "stalk.echo", "queue": "nowhere"}, 400, "does not exist"),
    ("empty task name", "POST", "/v1/tasks", {"task": ""}, 422, "body.task"),
    ("empty batch", "POST", "/v1/tasks/batch", {"tasks": []}, 422, "body.tasks"),
    ("batch with a bad task", "POST", "/v1/tasks/batch", {"tasks": [{"task": "stalk.echo"}, {"task": "nope"}]},
     404, "tasks[1]"),
    ("batch over the limit", "POST", "/v1/tasks/batch", {"tasks": [{"task": "stalk.echo"}] * 1001}, 413, "at most 1000"),
    ("bad status filter", "GET", "/v1/tasks?status=DONE", None, 422, "status"),
    ("limit too large", "GET", "/v1/tasks?limit=100000", None, 422, "limit"),
    ("bad time filter", "GET", "/v1/tasks?created_after=yesterday", None, 422, "created_after"),
    ("time filter as a number", "GET", "/v1/tasks?created_before=1700000000", None, 422, "ISO 8601"),
    ("bad cursor", "GET", "/v1/tasks?cursor=%%%", None, 400, "cursor"),
    ("unknown task id", "GET", "/v1/tasks/does-not-exist", None, 404, "no task"),
    ("retry unknown task", "POST", "/v1/tasks/does-not-exist/retry", None, 404, "no task"),
    ("cancel unknown task", "POST", "/v1/tasks/does-not-exist/cancel", None, 404, "no task"),
    ("cancel with bad flag", "POST", "/v1/tasks/x/cancel?terminate=maybe", None, 422, "terminate"),
    ("unknown route", "GET", "/v1/nothing", None, 404, "not found"),
    ("wrong method", "DELETE", "/v1/tasks", None, 405, "not allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(stack, method, path, body, status, words):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body} if body is not None else {}
    response = stack.client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert words.lower() in response.json()["detail"].lower()


def test_oversized_chunked_body_is_413(stack):
    def chunks():  # no Content-Length: the limit is found while reading
        yield b'{"task": "stalk.echo", "args": ["'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"]}'

    response = stack.client.post("/v1/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]


def test_oversized_body_is_413_before_it_is_read(stack):
    huge = b'{"task": "stalk.echo", "args": ["' + b"x" * 2_000_000 + b'"]}'
    response = stack.client.post("/v1/tasks", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]


def test_retrying_or_cancelling_in_the_wrong_state_is_409(stack):
    task_id = stack.submit("stalk.echo")
    stack.wait_for(task_id)
    retry = stack.client.post(f"/v1/tasks/{task_id}/retry")
    assert retry.status_code == 409 and "only FAILURE or REVOKED" in retry.json()["detail"]
    cancel = stack.client.post(f"/v1/tasks/{task_id}/cancel")
    assert cancel.status_code == 409 and "already finished" in cancel.json()["detail"]


def test_openapi_document_describes_every_route(stack):
    spec = stack.client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            ok = [c for c in operation["responses"] if c.startswith("2")]
            assert ok, f"{method.upper()} {path} documents no success response"
            for code in ok:
                content = operation["responses"][code].get("content", {})
                if path not in ("/metrics",):
                    assert "application/json" in content, f"{method.upper()} {path} {code} has no JSON schema"
    assert spec["components"]["schemas"]["TaskCreate"]["examples"]


def test_too_long_idempotency_key_is_422_and_documented(stack):
    response = stack.client.post("/v1/tasks", json={"task": "stalk.echo"}, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["detail"] == "header.idempotency-key: String should have at most 255 characters"
    ok = stack.client.post("/v1/tasks", json={"task": "stalk.echo"}, headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code == 202
    spec = stack.client.get("/openapi.json").json()
    parameters = spec["paths"]["/v1/tasks"]["post"]["parameters"]
    assert {"name": "Idempotency-Key", "in": "header", "required": False, "description": "Same key, same task.",
            "schema": {"type": "string", "maxLength": 255}} in parameters


def test_records_that_json_cannot_show_are_shown_marked_never_a_500(stack):
    # Written as a worker writes them: a result with a lone surrogate, arguments nested 300 deep
    # (from a plain Celery client, which the API's checks never saw).
    from stalk_workers.records import db, store

    engine = db.create_engine(stack.settings.database_url)
    broken = store.SeenTask(task_id="odd-result", task_name="stalk.echo", queue="default", args=["ok"], kwargs={})
    deep = store.SeenTask(task_id="odd-args", task_name="stalk.echo", queue="default", args=nested(300), kwargs={})
    store.write(engine, [store.succeeded(broken, result={"text": "\ud800"}),
                         store.failed(deep, error=ValueError("bad \udfff"), traceback=None, dead_lettered=False)])
    engine.dispose()
    fine = stack.submit("stalk.echo", args=["fine"])

    result = stack.client.get("/v1/tasks/odd-result")
    assert result.status_code == 200, result.text
    assert result.json()["unreadable"] == ["result"] and result.json()["args"] == ["ok"]
    args = stack.client.get("/v1/tasks/odd-args").json()
    assert args["unreadable"] == ["args"] and args["error"]["message"] == "bad \\udfff"
    listed = stack.client.get("/v1/tasks", params={"limit": 500})
    assert listed.status_code == 200, listed.text
    by_id = {t["task_id"]: t for t in listed.json()["tasks"]}
    assert by_id["odd-result"]["unreadable"] == ["result"] and by_id[fine]["unreadable"] == []


def test_wrong_method_names_every_method_the_path_allows(stack):
    response = stack.client.delete("/v1/tasks")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"


def test_time_filters_far_out_of_range_in_utc_are_answered(stack):
    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = stack.client.get("/v1/tasks", params={"created_after": moment})
        assert response.status_code == 200, response.text
