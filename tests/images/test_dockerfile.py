"""The Dockerfile passes hadolint and keeps the image's promises (pinned base, non-root, read-only friendly)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.images.dockerfile import DOCKERFILE, REPO, context_files, parse

HADOLINT = REPO / ".venv" / "bin" / "hadolint"


def test_hadolint_finds_nothing():
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_from_one_pinned_slim_python_311_base():
    dockerfile = parse()
    assert list(dockerfile.stages) == ["build", "runtime"]
    bases = {stage.base for stage in dockerfile.stages.values()}
    assert len(bases) == 1, "build and runtime use the same interpreter (the venv links to it)"
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_runtime_runs_as_a_fixed_non_root_user_and_writes_only_tmp():
    runtime = parse().runtime
    assert runtime.all("USER") == ["10001:10001"]
    env = runtime.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/stalk/bin:")
    assert env["HOME"] == "/tmp" and env["STALK_DATABASE_URL"].startswith("sqlite:////tmp/")
    # The Helm chart's pod security context runs the same user.
    values = (REPO / "charts" / "stalk" / "values.yaml").read_text()
    assert "runAsUser: 10001" in values and "runAsGroup: 10001" in values


def test_runtime_has_no_build_tools_and_copies_only_the_venv():
    runtime = parse().runtime
    runs = " ".join(runtime.all("RUN"))
    assert "apt-get" not in runs and "uv" not in runs.split()
    assert "pip uninstall" in runs, "pip and setuptools leave the runtime image"
    assert runtime.all("COPY") == ["--from=build /opt/stalk /opt/stalk"]
    assert json.loads(runtime.all("CMD")[0]) == ["stalk", "api"]


def test_build_installs_from_the_lock_file_with_hashes_and_wheels_only():
    runs = " ".join(parse().stages["build"].all("RUN"))
    assert "uv export --frozen --no-dev" in runs
    assert "--require-hashes" in runs and "--only-binary :all:" in runs
    makefile = (REPO / "Makefile").read_text()
    (uv_version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.M)
    assert f"ARG UV_VERSION={uv_version}" in DOCKERFILE.read_text(), "the image builds with the Makefile's uv"


def test_build_context_holds_the_sources_and_nothing_else():
    files = context_files()
    tops = {Path(f).parts[0] for f in files}
    assert tops == {"pyproject.toml", "uv.lock", "README.md", "api", "workers", "operator"}
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".db"))]
