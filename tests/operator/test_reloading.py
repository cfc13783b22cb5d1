"""What `stalk dev --reload` watches and which changes restart the workers (the pure part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stalk_operator.reloading import first_change, matters, watch_roots


@pytest.mark.parametrize(("path", "restarts"), [
    ("/home/me/app/tracker/tasks.py", True),
    ("/home/me/app/tracker/README.md", False),
    ("/home/me/app/tracker/tasks.pyc", False),
    ("/home/me/app/tracker/__pycache__/tasks.cpython-312.py", False),
    ("/home/me/app/.venv/lib/python3.12/site-packages/celery/app.py", False),
    ("/home/me/app/.run/generated.py", False),
], ids=["a task module", "not Python", "bytecode", "a cache", "an installed package", "stalk dev's run folder"])
def test_which_changes_restart_the_workers(path, restarts):
    assert matters(path, ignored=[Path("/home/me/app/.run")]) is restarts


def test_the_reload_line_names_the_first_change_that_matters():
    assert first_change(["/a/z.py", "/a/notes.txt", "/a/b.py"]) == "/a/b.py"
    assert first_change(["/a/notes.txt"]) is None


@pytest.mark.parametrize(("files", "roots"), [
    ([], ["/app"]),
    (["/app/tracker/tasks.py"], ["/app"]),
    (["/elsewhere/lib/tasks.py", "/elsewhere/lib/more.py"], ["/app", "/elsewhere/lib"]),
    (["/app/.venv/lib/python3.12/site-packages/pkg/tasks.py", None], ["/app"]),
], ids=["the import folder", "a module under it adds nothing", "a module outside it adds its folder once",
        "installed packages and namespace packages are not watched"])
def test_what_is_watched(files, roots):
    assert watch_roots(Path("/app"), files) == [Path(r) for r in roots]
