"""skaffold.yaml: valid for skaffold itself, and consistent with the Dockerfile, the chart and the packages.

Validation, strongest first: the skaffold binary built from Go modules (`make tools-bins`) runs
``skaffold diagnose --yaml-only`` and ``skaffold render`` (offline, with a fixed image tag); the
JSON schema that skaffold publishes for the apiVersion used (it ships in skaffold's Go module,
so it is read from the module cache) validates the file in any case.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.servers import unavailable
import yaml

from tests.images.dockerfile import parse

pytestmark = pytest.mark.binaries  # skaffold and helm, built from Go modules (tests/fixtures/binaries.py)

REPO = Path(__file__).resolve().parents[2]
SKAFFOLD_YAML = REPO / "skaffold.yaml"
CHART = REPO / "charts" / "stalk"
BIN_DIR = REPO / ".cluster" / "bin"


def config() -> dict:
    return yaml.safe_load(SKAFFOLD_YAML.read_text())


def skaffold_version() -> str:
    (version,) = re.findall(r"^SKAFFOLD_VERSION=(\S+)$", (REPO / "hack" / "tools" / "versions.env").read_text(), re.M)
    return version


def skaffold_module() -> Path:
    if shutil.which("go") is None:
        unavailable("no Go toolchain: skaffold's schemas come from its Go module")
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    module = Path(cache) / "github.com" / "!google!container!tools" / "skaffold" / f"v2@{skaffold_version()}"
    if not module.is_dir():
        unavailable(f"skaffold's module is not in the Go module cache ({module}); `make tools-bins` fetches it")
    return module


def skaffold_binary() -> Path | None:
    candidates = [BIN_DIR / "skaffold", *sorted(Path.home().glob(f".cache/stalk/bin/skaffold-{skaffold_version()}-*/skaffold"))]
    return next((c for c in candidates if c.is_file() and c.stat().st_mode & 0o111), None)


# --- a JSON-schema check for the keywords skaffold's schemas use ------------------------------------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def schema_errors(value, schema: dict, root: dict, where: str = "") -> list[str]:
    """Errors of ``value`` against a draft-07 schema using $ref, type, enum, anyOf, properties,
    additionalProperties, required and items (every keyword skaffold's schemas use)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, where)
    if "anyOf" in schema:
        branches = [schema_errors(value, s, root, where) for s in schema["anyOf"]]
        if all(branches):
            return min(branches, key=len)
    kind = schema.get("type")
    if kind:
        expected = _TYPES[kind]
        if not isinstance(value, expected) or (kind in ("integer", "number") and isinstance(value, bool)):
            return [f"{where or '/'}: expected {kind}, got {type(value).__name__} {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    errors = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}/{key}: required")
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], root, f"{where}/{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}/{key}: unknown field (known: {', '.join(properties)})")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(item, schema["additionalProperties"], root, f"{where}/{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}/{i}")
    return errors


def published_schema() -> dict:
    version = config()["apiVersion"].removeprefix("skaffold/")
    path = skaffold_module() / "docs-v2" / "content" / "en" / "schemas" / f"{version}.json"
    assert path.exists(), f"skaffold {skaffold_version()} publishes no schema for {version}"
    return json.loads(path.read_text())


def test_api_version_is_the_newest_this_skaffold_reads():
    latest = skaffold_module() / "pkg" / "skaffold" / "schema" / "latest" / "config.go"
    (newest,) = re.findall(r'const Version string = "(skaffold/[^"]+)"', latest.read_text())
    assert config()["apiVersion"] == newest


def test_valid_against_skaffolds_published_schema():
    schema = published_schema()
    assert schema_errors(config(), schema, schema) == []


def test_the_schema_check_catches_a_misspelt_field():
    schema = published_schema()
    broken = config()
    broken["build"]["artifacts"][0]["sync"]["manuall"] = broken["build"]["artifacts"][0]["sync"].pop("manual")
    broken["portForward"][0]["localPort"] = "8000"
    errors = schema_errors(broken, schema, schema)
    assert any("/build/artifacts/0/sync/manuall: unknown field" in e for e in errors), errors
    assert any("/portForward/0/localPort: expected integer" in e for e in errors), errors


# --- consistency with the Dockerfile, the chart and the packages -----------------------------------

def test_builds_the_dockerfile_image_the_chart_deploys():
    (artifact,) = config()["build"]["artifacts"]
    assert artifact["docker"]["dockerfile"] == "Dockerfile" and (REPO / artifact["context"] / "Dockerfile").exists()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert artifact["image"] == values["image"]["repository"]
    # The dev reload switch is a build argument the Dockerfile declares.
    assert set(artifact["docker"]["buildArgs"]) <= {a.partition("=")[0] for a in parse().runtime.all("ARG")}
    (release,) = config()["manifests"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").exists()
    for values_file in release["valuesFiles"]:
        assert (REPO / values_file).exists(), values_file
    assert release["setValueTemplates"] == {"image.repository": "{{.IMAGE_REPO_stalk}}", "image.tag": "{{.IMAGE_TAG_stalk}}"}


def test_set_values_name_values_the_chart_has():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (release,) = config()["manifests"]["helm"]["releases"]
    for key in [*release["setValues"], *release["setValueTemplates"]]:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"setValues {key}: the chart has no such value"
            node = node[part]


def test_sync_copies_each_package_into_the_images_site_packages():
    (artifact,) = config()["build"]["artifacts"]
    rules = artifact["sync"]["manual"]
    assert {r["src"] for r in rules} == {"api/**/*.py", "workers/**/*.py", "operator/**/*.py"}
    python = re.search(r"python:(\d+\.\d+)\.", parse().runtime.base).group(1)
    for rule in rules:
        assert rule["dest"] == f"/opt/stalk/lib/python{python}/site-packages"
        folder = rule["strip"].rstrip("/")
        assert rule["src"].startswith(rule["strip"])
        # What remains after the strip is the package name the wheel installs.
        packages = [p for p in (REPO / folder).iterdir() if (p / "__init__.py").exists()]
        assert packages, folder
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert sorted(wheel["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]) == sorted(
        f"{r['strip']}{p.name}" for r in rules for p in (REPO / r["strip"].rstrip("/")).iterdir()
        if (p / "__init__.py").exists())


def test_port_forwards_the_chart_api_service():
    (forward,) = config()["portForward"]
    (release,) = config()["manifests"]["helm"]["releases"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert forward["resourceType"] == "service" and forward["resourceName"] == f"{release['name']}-api"
    assert forward["port"] == values["api"]["service"]["port"] and forward["namespace"] == release["namespace"]


def test_local_profile_never_pushes():
    (profile,) = [p for p in config()["profiles"] if p["name"] == "local"]
    assert {"op": "add", "path": "/build/local/push", "value": False} in profile["patches"]


# --- skaffold itself ----------------------------------------------------------------------------

def test_skaffold_reads_and_renders_it(tmp_path):
    binary = skaffold_binary()
    if binary is None:
        unavailable("no skaffold binary: `make tools-bins` builds it from Go modules")
    helm = BIN_DIR / "helm"
    env = {"PATH": f"{helm.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "SKAFFOLD_UPDATE_CHECK": "false", "SKAFFOLD_COLLECT_METRICS": "false"}
    diagnose = subprocess.run([str(binary), "diagnose", "--yaml-only", "--filename", str(SKAFFOLD_YAML)],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert diagnose.returncode == 0, diagnose.stderr
    assert "apiVersion: skaffold/" in diagnose.stdout

    for profile, pull_policy in (([], "IfNotPresent"), (["--profile", "local"], "Never")):
        out = tmp_path / f"rendered{len(profile)}.yaml"
        render = subprocess.run(
            [str(binary), "render", "--offline=true", "--digest-source=none", "--images", "stalk=stalk:dev",
             "--filename", str(SKAFFOLD_YAML), "--output", str(out), *profile],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert render.returncode == 0, render.stdout + render.stderr
        objects = [o for o in yaml.safe_load_all(out.read_text()) if o]
        containers = [c for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")
                      for c in o["spec"]["template"]["spec"]["containers"] if c["image"].startswith("stalk")]
        assert containers and {c["image"] for c in containers} == {"stalk:dev"}
        assert {c["imagePullPolicy"] for c in containers} == {pull_policy}
        # Synced files must be writable in the dev pods.
        assert {c["securityContext"]["readOnlyRootFilesystem"] for c in containers} == {False}
        assert any(o["kind"] == "Service" and o["metadata"]["name"] == "stalk-api" for o in objects)
