"""OpenAPI links: where each answer that names a task leads (its status, cancel, retry).

They tell clients, and schemathesis's stateful phase (tests/api/test_fuzz.py), that the
``task_id`` of a 202 is the ``{task_id}`` of the task's own operations.
"""

from __future__ import annotations

from fastapi import FastAPI

TASK = "/v1/tasks/{task_id}"
FOLLOW = {
    "GetTask": (TASK, "get"),
    "CancelTask": (f"{TASK}/cancel", "post"),
    "RetryTask": (f"{TASK}/retry", "post"),
}
# Answers that name a task, and where in the body its id is.
SOURCES = {
    ("/v1/tasks", "post", "202"): "$response.body#/task_id",
    ("/v1/tasks/batch", "post", "202"): "$response.body#/tasks/0/task_id",
    (f"{TASK}/retry", "post", "202"): "$response.body#/task_id",
    (TASK, "get", "200"): "$response.body#/task_id",
}


def _ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def document_links(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # FastAPI caches it; the additions below are the same every time
        paths = schema.get("paths", {})
        for (path, method, status), task_id in SOURCES.items():
            response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
            if response is None:
                continue
            response["links"] = {
                name: {"operationRef": _ref(target, verb), "parameters": {"task_id": task_id}}
                for name, (target, verb) in FOLLOW.items() if verb in paths.get(target, {})
            }
        return schema

    app.openapi = openapi
