"""Commands that talk to the task API over HTTP: submit, status, tasks, retry, cancel, queues, workers."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.table import Table

from stalk_workers.cli.errors import err_console, fail
from stalk_workers.cli.output import make_console

console = make_console()

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
STATUS_STYLE = {"SUCCESS": "green", "FAILURE": "red", "REVOKED": "yellow", "RETRY": "yellow", "STARTED": "cyan"}

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="STALK_API_URL", help="The task API.")]
ApiToken = Annotated[str | None, typer.Option("--token", envvar="STALK_API_TOKEN", help="Bearer token.",
                                              show_default=False)]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


def _unconsumed_warning(lost: dict) -> str:
    """One line for a list nobody consumes: its exact name (repr shows a priority suffix's control
    characters) and how to have it consumed."""
    return (f"warning: {lost['messages']} messages in Redis list {lost['list']!r} that no queue names and no "
            f"worker consumes; start a worker on it (celery -A <app> worker -Q {lost['queue']}) or send "
            f"those tasks with a queue")


class Api:
    """A small HTTP client that turns every failure into one readable line."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, method: str, path: str, *, missing_ok: bool = False, **kwargs) -> Any:
        """The answer's JSON; with ``missing_ok``, None for a 404 instead of the error line."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the API at {self.url}: {exc}")
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            fail(f"{response.status_code}: {detail}")
        return response.json()


# How many tasks the error for a shortened id that matches several of them names, and up to how many
# it counts (one page of the API's list; beyond it the line says "more than").
SHOWN_MATCHES = 5
COUNTED_MATCHES = 100


def find_task(api: Api, task_id: str) -> dict:
    """The task whose id is ``task_id`` or, failing that, the one task whose id starts with it (ids as
    ``stalk tasks`` shows them on a narrow terminal, or typed short); several or none: one line."""
    if not task_id:
        fail("a task id is required")
    task = api.call("GET", f"/v1/tasks/{quote(task_id, safe='')}", missing_ok=True)
    if task is not None:
        return task
    # In any case: ids are lowercase, a pasted one may not be.
    matches = api.call("GET", "/v1/tasks", params={"id_prefix": task_id, "limit": COUNTED_MATCHES + 1})["tasks"]
    if not matches:
        fail(f"404: no task with id {task_id!r}, and none whose id starts with it")
    if len(matches) > 1:
        count = f"more than {COUNTED_MATCHES}" if len(matches) > COUNTED_MATCHES else str(len(matches))
        shown = ", ".join(t["task_id"] for t in matches[:SHOWN_MATCHES])
        fail(f"{task_id!r} matches {count} tasks: {shown}{', …' if len(matches) > SHOWN_MATCHES else ''}; "
             "give more of the id")
    return matches[0]


def _parse_value(text: str) -> Any:
    """``--arg 3`` is a number, ``--arg '{"a": 1}'`` JSON, anything else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _status_text(task: dict) -> str:
    style = STATUS_STYLE.get(task["status"], "white")
    return f"[{style}]{task['status']}[/{style}]"


def _progress(task: dict, max_retries: int | None) -> str:
    """``RETRY, retry 2 of 3 after IntentionalFailure: failed on purpose``: a task's status as it goes."""
    text = task["status"]
    if task["retries"]:
        text += f", retry {task['retries']}" + (f" of {max_retries}" if max_retries is not None else "")
        error = task.get("error") or {}
        if error.get("type") and task["status"] not in FINAL:
            text += f" after {error['type']}: {error.get('message')}"
    return text


def register(app: typer.Typer) -> None:
    @app.command()
    def submit(
        task: Annotated[str, typer.Argument(help="Registered task name, e.g. stalk.health_check.")],
        arg: Annotated[list[str], typer.Option("--arg", "-a", help="Positional argument (JSON or text); repeat.")] = [],  # noqa: B006
        kwarg: Annotated[list[str], typer.Option("--kwarg", "-k", help="key=value (value JSON or text); repeat.")] = [],  # noqa: B006
        queue: Annotated[str | None, typer.Option(help="Override the queue.")] = None,
        countdown: Annotated[float | None, typer.Option(help="Seconds to wait before running.")] = None,
        priority: Annotated[int | None, typer.Option(min=0, max=9, help="0 is highest.")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Wait for the task to finish, showing its status.")] = False,
        timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 300,
        api_url: ApiUrl = "http://127.0.0.1:8000",
        token: ApiToken = None,
    ) -> None:
        """Submit a task and print its id (and, with --wait, its result)."""
        kwargs = {}
        for item in kwarg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                fail(f"--kwarg {item!r} must look like key=value")
            kwargs[key] = _parse_value(value)
        body = {"task": task, "args": [_parse_value(a) for a in arg], "kwargs": kwargs}
        body |= {k: v for k, v in (("queue", queue), ("countdown", countdown), ("priority", priority)) if v is not None}
        api = Api(api_url, token)
        created = api.call("POST", "/v1/tasks", json=body)
        task_id = created["task_id"]
        if not wait:
            console.print(task_id)
            return
        max_retries = next((t["max_retries"] for t in api.call("GET", "/v1/task-types")["task_types"]
                            if t["name"] == task), None)
        deadline = time.monotonic() + timeout
        shown = f"{task} {task_id}: PENDING"
        with console.status(shown) as status_line:
            while True:
                current = api.call("GET", f"/v1/tasks/{task_id}")
                line = f"{task} {task_id}: {_progress(current, max_retries)}"
                if line != shown:
                    status_line.update(line)
                    if not console.is_terminal:  # a pipe or a log sees no live line: one line per change
                        console.print(line)
                    shown = line
                if current["status"] in FINAL:
                    break
                if time.monotonic() > deadline:
                    fail(f"task {task_id} is still {current['status']} after {timeout:.0f}s", code=2)
                time.sleep(0.25)
        console.print(f"{task_id} {_status_text(current)}")
        if current["status"] == "SUCCESS":
            console.print_json(data=current["result"])
        else:
            error = current.get("error") or {}
            fail(f"task {task_id} ended {current['status']}: {error.get('type')}: {error.get('message')}", code=3)

    @app.command()
    def status(task_id: str, api_url: ApiUrl = "http://127.0.0.1:8000", token: ApiToken = None,
               as_json: JsonOut = False) -> None:
        """Show one task (TASK_ID, or the start of it): status, result or error, retries and timing."""
        task = find_task(Api(api_url, token), task_id)
        if as_json:
            console.print_json(data=task)
            return
        table = Table(show_header=False, box=None)
        for key in ("task_id", "task", "queue", "retries", "worker", "created_at", "started_at", "finished_at",
                    "runtime_seconds", "retry_of"):
            table.add_row(key, "" if task.get(key) is None else str(task[key]))
        table.add_row("status", _status_text(task) + (" (dead-lettered)" if task["dead_lettered"] else ""))
        if task.get("error"):
            table.add_row("error", f"{task['error']['type']}: {task['error']['message']}")
        if task["status"] == "SUCCESS":
            table.add_row("result", json.dumps(task["result"]))
        console.print(table)

    @app.command()
    def tasks(
        status_: Annotated[str | None, typer.Option("--status", help="PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED.")] = None,
        queue: str | None = None,
        task: Annotated[str | None, typer.Option(help="Task name.")] = None,
        dead_lettered: Annotated[bool, typer.Option("--dead-lettered", help="Only dead-lettered tasks.")] = False,
        limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
        api_url: ApiUrl = "http://127.0.0.1:8000",
        token: ApiToken = None,
        as_json: JsonOut = False,
    ) -> None:
        """List tasks, newest first."""
        params = {k: v for k, v in (("status", status_), ("queue", queue), ("task", task), ("limit", limit)) if v}
        if dead_lettered:
            params["dead_lettered"] = "true"
        page = Api(api_url, token).call("GET", "/v1/tasks", params=params)
        if as_json:
            console.print_json(data=page)
            return
        table = Table("ID", "TASK", "QUEUE", "STATUS", "RETRIES", "CREATED")
        for t in page["tasks"]:
            table.add_row(t["task_id"], t["task"], t["queue"], _status_text(t), str(t["retries"]), t["created_at"])
        console.print(table)

    @app.command()
    def retry(task_id: str, api_url: ApiUrl = "http://127.0.0.1:8000", token: ApiToken = None) -> None:
        """Run a failed or dead-lettered task (TASK_ID, or the start of it) again; prints the new task's id."""
        api = Api(api_url, token)
        task_id = find_task(api, task_id)["task_id"]
        console.print(api.call("POST", f"/v1/tasks/{quote(task_id, safe='')}/retry")["task_id"])

    @app.command()
    def cancel(
        task_id: str,
        terminate: Annotated[bool, typer.Option(help="Also stop it if it is already running.")] = False,
        api_url: ApiUrl = "http://127.0.0.1:8000",
        token: ApiToken = None,
    ) -> None:
        """Revoke a task (TASK_ID, or the start of it) that has not finished."""
        api = Api(api_url, token)
        task_id = find_task(api, task_id)["task_id"]
        task = api.call("POST", f"/v1/tasks/{quote(task_id, safe='')}/cancel", params={"terminate": terminate})
        console.print(f"{task_id} {_status_text(task)}")

    @app.command()
    def queues(api_url: ApiUrl = "http://127.0.0.1:8000", token: ApiToken = None, as_json: JsonOut = False) -> None:
        """What waits in each queue, what runs, and how many workers consume it."""
        data = Api(api_url, token).call("GET", "/v1/queues")
        if as_json:
            console.print_json(data=data)
            return
        table = Table("QUEUE", "WAITING", "IN-FLIGHT", "SCHEDULED", "OLDEST", "WORKERS")
        for q in data["queues"]:
            oldest = "-" if q["oldest_wait_seconds"] is None else f"{q['oldest_wait_seconds']:.1f}s"
            table.add_row(q["name"], str(q["waiting"]), str(q["in_flight"]), str(q["scheduled"]), oldest,
                          str(q["workers"]))
        console.print(table)
        for lost in data.get("unconsumed", ()):
            # One line each, on stderr: the table stays the output scripts parse.
            err_console.print(_unconsumed_warning(lost), markup=False, highlight=False, soft_wrap=True)

    @app.command()
    def workers(api_url: ApiUrl = "http://127.0.0.1:8000", token: ApiToken = None, as_json: JsonOut = False) -> None:
        """Workers online: their queues, pool, concurrency and active tasks."""
        data = Api(api_url, token).call("GET", "/v1/workers")
        if as_json:
            console.print_json(data=data)
            return
        table = Table("WORKER", "QUEUES", "POOL", "CONCURRENCY", "ACTIVE")
        for w in data["workers"]:
            table.add_row(w["name"], ",".join(w["queues"]), str(w["pool"]), str(w["concurrency"]),
                          str(w["active_tasks"]))
        console.print(table)
