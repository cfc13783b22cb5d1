"""The operator's command line: ``stalk operator`` and ``python -m stalk_operator`` are one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OPTIONS = ["--watch-namespaces", "--operator-namespace", "--metrics-host", "--metrics-port", "--leader-election",
           "--lease-name", "--identity"]


@pytest.mark.parametrize("argv", [[sys.executable, "-m", "stalk_operator"], [str(Path(sys.executable).with_name("stalk")), "operator"]],
                         ids=["python-m", "stalk-operator"])
def test_help_lists_every_option_and_starts_nothing(argv):
    out = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for option in OPTIONS:
        assert option in out.stdout
    assert "STALK_METRICS_HOST" in out.stdout


@pytest.mark.parametrize(("args", "code", "says"), [
    (["--help-me"], 2, "No such option: --help-me"),
    (["extra"], 2, "Got unexpected extra argument"),
    (["--metrics-port", "99999"], 1, "--metrics-port / STALK_METRICS_PORT: Input should be less than or equal to 65535"),
], ids=["unknown-option", "unknown-argument", "invalid-value"])
def test_bad_arguments_are_refused_in_one_message_without_a_traceback(args, code, says):
    out = subprocess.run([sys.executable, "-m", "stalk_operator", *args], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == code
    assert says in out.stderr and "Traceback" not in out.stderr + out.stdout
