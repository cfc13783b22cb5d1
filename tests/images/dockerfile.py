"""Read the Dockerfile and carry out its build stage on this machine, where no container engine runs.

``build_locally`` copies the build context as ``.dockerignore`` filters it, then runs the build
stage's ``RUN`` lines as written, with the image's absolute paths (``/opt/stalk``, ``/tmp``, the
base image's ``python3``) mapped into a temporary directory. The result is the same virtualenv
the image gets, built from the same lock file by the same commands, so the tests can start each
image command from it with the runtime stage's environment.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
        return env

    def workdir(self) -> str:
        return self.all("WORKDIR")[-1]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]

    @property
    def runtime(self) -> Stage:
        return list(self.stages.values())[-1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction; continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stage = stages[name] = Stage(name, base)
        elif stage is None:
            if keyword == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            stage.instructions.append((keyword, rest))
    return Dockerfile(args, stages)


# --- .dockerignore ------------------------------------------------------------------------------

def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _regex(pattern: str) -> re.Pattern:
    """Docker's matching: ``*`` stays within one path segment, ``**/`` spans any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _matches(rel: str, pattern: str) -> bool:
    """A path matches when it, or one of its parent directories, matches the pattern."""
    regex = _regex(pattern.rstrip("/"))
    parts = rel.split("/")
    return any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))


def in_context(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; ``!`` includes again."""
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _matches(rel, pattern.lstrip("!")):
            included = negated
    return included


def context_files() -> list[str]:
    patterns = ignore_patterns()
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    return [rel for rel in tracked if (REPO / rel).is_file() and in_context(rel, patterns)]


# --- carrying out the build stage ---------------------------------------------------------------

@dataclass
class LocalImage:
    """The image's file system paths, mapped into ``root``."""
    root: Path
    dockerfile: Dockerfile

    def path(self, image_path: str) -> str:
        return map_paths(image_path, self.root)

    @property
    def venv(self) -> Path:
        return Path(self.path("/opt/stalk"))

    def environment(self, **extra: str) -> dict[str, str]:
        """The runtime stage's ENV (paths mapped), on top of a minimal system environment."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        for key, value in self.dockerfile.runtime.env().items():
            env[key] = self.path(value.replace("$PATH", env["PATH"]))
        env.update(extra)
        return env

    def command(self, *argv: str) -> list[str]:
        """An image command (``stalk api``, ``python -m stalk_operator``) resolved on the image's PATH."""
        binary = shutil.which(argv[0], path=self.environment()["PATH"])
        assert binary and binary.startswith(str(self.venv)), f"{argv[0]} resolves to {binary}, not the image's venv"
        return [binary, *(self.path(a) for a in argv[1:])]


_IMAGE_PATHS = re.compile(r"(?<![\w.])(/opt/stalk|/tmp|/src|/usr/local/bin/python3)(?=[/\s\"']|$)")


def map_paths(text: str, root: Path) -> str:
    """Image paths to local ones, in one pass (the local root itself may be under /tmp)."""
    def replace(match: re.Match) -> str:
        path = match.group(1)
        if path == "/usr/local/bin/python3":
            return base_python()
        return str(root / path.strip("/").replace("/", "-"))
    return _IMAGE_PATHS.sub(replace, text)


def base_python() -> str:
    """The interpreter under this test run's virtualenv: the same Python 3.11 line as the image."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate if candidate.exists() else Path(sys.base_prefix) / "bin" / "python3")


def uv_binary() -> str:
    local = REPO / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    assert found, "uv is missing: `make venv` bootstraps it into .tools/"
    return found


def build_locally(root: Path, log) -> LocalImage:
    dockerfile = parse()
    build = dockerfile.stages["build"]
    for name in ("opt/stalk", "tmp", "src"):
        (root / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
    files = context_files()
    uv_dir = Path(uv_binary()).parent
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")}
    args = dict(dockerfile.args)
    workdir = root
    for keyword, rest in build.instructions:
        if keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "ENV":
            env.update({k: map_paths(v, root) for k, v in Stage("", "", [(keyword, rest)]).env().items()})
        elif keyword == "WORKDIR":
            workdir = Path(map_paths(rest, root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, target = shlex.split(rest)
            assert not any(s.startswith("--") for s in sources), f"COPY {rest}: only plain copies are carried out"
            into = workdir / target
            for source in sources:
                source = source.rstrip("/")
                copied = [f for f in files if f == source or f.startswith(source + "/")]
                assert copied, f"COPY {source}: nothing in the build context (.dockerignore?)"
                for rel in copied:
                    # A file goes into a target ending in '/'; a directory's contents go under the target.
                    dest = into / Path(rel).name if rel == source else into / rel[len(source) + 1:]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / rel, dest)
        elif keyword == "RUN":
            command = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), env.get(m.group(1), "")), rest)
            if re.fullmatch(r"pip install --no-cache-dir \"?uv==[\d.]+\"?", command):
                # Installing uv itself: use the same pinned uv that `make venv` bootstrapped.
                version = subprocess.run([uv_binary(), "--version"], capture_output=True, text=True).stdout.split()[1]
                assert f"uv=={version}" in command.replace('"', ""), f"the image pins another uv than {version}"
                continue
            command = map_paths(command, root)
            log.write(f"$ {command}\n")
            log.flush()
            run_env = {**env, "PATH": f"{uv_dir}:{env.get('PATH', '')}",
                       # The image build has no cache to reuse; here uv's cache saves downloading every wheel.
                       "UV_NO_CACHE": "0"}
            result = subprocess.run(["bash", "-eu", "-o", "pipefail", "-c", command], cwd=workdir, env=run_env,
                                    stdout=log, stderr=subprocess.STDOUT, timeout=600)
            assert result.returncode == 0, f"RUN {rest} failed (see {log.name})"
        else:
            raise AssertionError(f"the build stage uses {keyword}, which build_locally does not carry out")
    return LocalImage(root=root, dockerfile=dockerfile)
