"""docs/your-tasks.md, followed literally: the files it shows are written, the commands it shows are run
(``stalk dev`` in the background, as in its own terminal), and what it says they print is printed.

The page's conventions: a line "`path`:" before a fenced block makes that block the file ``path``;
in a ``console`` block, ``$ `` starts a command and the lines after it are lines of its output, where
``…`` stands for anything. Only the ports and the run folder differ from the page: free ones here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.servers import free_port, wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "your-tasks.md"
FILE_LINE = re.compile(r"^`([^`]+)`:$")
# A listing may show a periodic task only after beat's next run.
OUTPUT_WAIT_SECONDS = 30


@dataclass
class Command:
    line: str
    output: list[str] = field(default_factory=list)


def steps(text: str) -> list[tuple[str, object]]:
    """("file", (path, content)) and ("command", Command) in the page's order."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language = lines[i][3:].strip()
            end = lines.index("```", i + 1)
            body = lines[i + 1:end]
            before = next((line for line in reversed(lines[:i]) if line.strip()), "")
            if (path := FILE_LINE.match(before)) and language != "console":
                found.append(("file", (path.group(1), "\n".join(body) + "\n" if body else "")))
            elif language == "console":
                for line in body:
                    if line.startswith("$ "):
                        found.append(("command", Command(line[2:])))
                    else:
                        found[-1][1].output.append(line)
            i = end
        i += 1
    return found


def shown(expected: str, output: str) -> bool:
    pattern = ".*".join(re.escape(part.strip()) for part in expected.split("…"))
    return any(re.search(pattern, line) for line in output.splitlines())


def test_the_page_runs_as_written(tmp_path):
    page = steps(DOC.read_text())
    assert sum(kind == "file" for kind, _ in page) >= 3 and sum(kind == "command" for kind, _ in page) >= 5
    project = tmp_path / "project"
    project.mkdir()
    api_port = free_port()
    # No STALK_* of the test's own; `stalk` on PATH as the page asks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "200",
            "STALK_API_PORT": str(api_port), "STALK_REDIS_PORT": str(free_port()),
            "STALK_RUN_DIR": str(tmp_path / "run"), "STALK_API_URL": f"http://127.0.0.1:{api_port}"}
    dev, dev_output = None, tmp_path / "dev.out"
    try:
        for kind, step in page:
            if kind == "file":
                path, content = step
                (project / path).parent.mkdir(parents=True, exist_ok=True)
                (project / path).write_text(content)
                continue
            words = shlex.split(step.line)
            if words[0] == "export":
                env |= dict(word.split("=", 1) for word in words[1:])
            elif words[:2] == ["stalk", "dev"]:
                with dev_output.open("wb") as out:
                    dev = subprocess.Popen(words, env=env, cwd=project, stdout=out, stderr=subprocess.STDOUT)
                wait_until(lambda: "stalk is running" in dev_output.read_text() or dev.poll() is not None,
                           timeout=120, interval=0.2, what="stalk dev to start")
                assert dev.poll() is None, dev_output.read_text()
            else:
                deadline = time.monotonic() + OUTPUT_WAIT_SECONDS
                while True:
                    done = subprocess.run(["bash", "-c", step.line], env=env, cwd=project, capture_output=True,
                                          text=True, timeout=120)
                    assert done.returncode == 0, f"{step.line}: {done.stderr}\n{dev_output.read_text()}"
                    missing = [line for line in step.output if not shown(line, done.stdout)]
                    if not missing:
                        break
                    assert time.monotonic() < deadline, f"{step.line} did not print {missing}:\n{done.stdout}"
                    time.sleep(1)
        said = dev_output.read_text()
        assert f"your tasks: tracker.tasks, importable from {project}" in said, said
    finally:
        if dev is not None:
            dev.send_signal(signal.SIGINT)
            dev.wait(90)
    assert dev is not None and dev.returncode == 0, dev_output.read_text()
