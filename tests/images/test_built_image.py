"""The images `make image` builds (hack/images.py) keep the promises the chart and users rely on.

Built through the script (cached after the first run: a fresh machine pays a few minutes once),
then checked without a kubelet: the docker-archive the node's containerd imports, and the images
run with plain runc as the chart runs them (its users, read-only root, no capabilities, volumes
only where the chart mounts them). The real pods are tests/cluster's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.servers import unavailable, wait_until
from tests.images.runc import Volume, archive_manifest, rootfs

pytestmark = pytest.mark.binaries  # the images hack/images.py builds (tests/fixtures/binaries.py)

REPO = Path(__file__).resolve().parents[2]
SITE = "/opt/stalk/lib/python3.11/site-packages"
PASSWORD = "image-test-password"


def build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", str(REPO / "hack" / "images.py"), *args], capture_output=True, text=True,
                          timeout=3600)


def ready(server, condition, what: str) -> None:
    """Wait as a readiness probe does; on timeout the failure shows the server's output."""
    try:
        wait_until(condition, timeout=120, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- server output ---\n{server.output()}") from None


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    if os.geteuid() != 0:
        unavailable("building images needs root (mmdebstrap, buildah)")
    deps = subprocess.run([str(REPO / "hack" / "system-deps.sh"), "--images"], capture_output=True, text=True,
                          timeout=900)
    assert deps.returncode == 0, deps.stdout + deps.stderr
    out = tmp_path_factory.mktemp("images") / "images.json"
    done = build("--dev", "--output", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


@pytest.fixture
def stalk(images, tmp_path):
    with rootfs(images["stalk"]["ref"], tmp_path / "runc") as container:
        yield container


def test_a_second_build_builds_nothing_and_names_the_same_images(images, tmp_path):
    done = build("--dev", "--output", str(tmp_path / "again.json"))
    assert done.returncode == 0, done.stderr
    assert "building" not in done.stdout and "(all cached)" in done.stdout, done.stdout
    assert json.loads((tmp_path / "again.json").read_text()) == images
    for name in ("stalk", "stalk-dev", "redis", "postgres"):
        assert f"{name} {images[name]['ref']} {images[name]['archive']}" in done.stdout


def test_each_archive_names_its_image_for_ctr_import(images):
    for name in ("stalk", "stalk-dev", "redis", "postgres"):
        entry, _ = archive_manifest(Path(images[name]["archive"]))
        assert entry["RepoTags"] == [images[name]["ref"]]
        assert images[name]["ref"].startswith("localhost/")


def test_stalk_image_config_is_the_dockerfiles(images):
    _, config = archive_manifest(Path(images["stalk"]["archive"]))
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["stalk", "api"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "9818/tcp", "8090/tcp"}
    assert env["PATH"].startswith("/opt/stalk/bin:") and env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_stalk_help_runs_as_10001_on_a_read_only_root(stalk):
    result = stalk.run("stalk", "--help", volumes=[Volume("/tmp")])
    assert result.returncode == 0, result.output
    assert "Usage:" in result.output and "worker" in result.output
    ids = stalk.run("id", "-u", volumes=[Volume("/tmp")])
    assert ids.output.split() == ["10001"], ids.output


def test_the_python_packages_import_from_the_image_venv(stalk):
    code = ("import celery, kopf, fastapi, sqlalchemy, psycopg, redis, stalk_api, stalk_operator, stalk_workers;"
            "print(stalk_api.__file__, stalk_operator.__file__, stalk_workers.__file__, psycopg.pq.__impl__)")
    result = stalk.run("python", "-c", code, volumes=[Volume("/tmp")])
    assert result.returncode == 0, result.output
    *paths, impl = result.output.split()
    assert all(path.startswith(SITE + "/") for path in paths), paths
    assert impl in {"binary", "c"}, "psycopg needs libpq: the binary wheel brings it"


def test_nothing_is_writable_outside_tmp_with_a_read_only_root(stalk):
    probe = ("import json, os\n"
             "ok = []\n"
             f"for d in ['/', '/opt/stalk', '/opt/stalk/bin', '{SITE}', '{SITE}/stalk_api', '/usr/local/lib',"
             " '/etc', '/var/tmp', '/run', '/tmp']:\n"
             "    try:\n"
             "        open(os.path.join(d, '.probe'), 'w').close(); ok.append(d)\n"
             "    except OSError:\n"
             "        pass\n"
             "print(json.dumps(ok))\n")
    result = stalk.run("python", "-c", probe, volumes=[Volume("/tmp")])
    assert result.returncode == 0, result.output
    assert json.loads(result.output) == ["/tmp"]


def test_the_release_image_user_owns_no_file_the_dev_image_user_owns_the_packages(images, tmp_path):
    """Even with a writable root the app user cannot change the code; skaffold's dev image lets it sync."""
    owned = {}
    for name in ("stalk", "stalk-dev"):
        with rootfs(images[name]["ref"], tmp_path / name) as container:
            # As root allowed to read every folder (apt's partial/ is _apt's alone), not to change any.
            result = container.run("find", "/", "-xdev", "-user", "10001", "-prune", user="0:0", read_only=False,
                                   capabilities=("CAP_DAC_READ_SEARCH",))
            assert result.returncode == 0, result.stderr
            owned[name] = set(result.stdout.split())
    assert owned["stalk"] == set()
    assert owned["stalk-dev"] == {f"{SITE}/stalk_api", f"{SITE}/stalk_workers", f"{SITE}/stalk_operator"}


def test_redis_runs_as_the_chart_runs_it(images, tmp_path):
    # templates/redis/statefulset.yaml: command, args, user 999:1000 (fsGroup 1000), /data and /tmp.
    args = ["--requirepass", PASSWORD, "--appendonly", "yes", "--dir", "/data", "--maxmemory-policy", "noeviction"]
    volumes = [Volume("/data", mode="2775", uid=999, gid=1000), Volume("/tmp")]
    with rootfs(images["redis"]["ref"], tmp_path / "runc") as container, \
            container.start("redis-server", *args, user="999:1000", volumes=volumes) as server:
        auth = {"REDISCLI_AUTH": PASSWORD}
        ready(server, lambda: server.exec("redis-cli", "ping", env=auth).output.strip() == "PONG",
              "redis-cli ping, the chart's probe")
        assert "NOAUTH" in server.exec("redis-cli", "ping").output
        assert server.exec("redis-cli", "set", "task", "queued", env=auth).output.strip() == "OK"
        policy = server.exec("redis-cli", "config", "get", "maxmemory-policy", env=auth).output.split()
        assert policy == ["maxmemory-policy", "noeviction"]
        assert "appendonlydir" in server.exec("ls", "/data").output


def test_postgres_initialises_utf8_from_the_charts_environment_and_stalk_migrates_it(images, tmp_path):
    # templates/postgresql/statefulset.yaml: no command, POSTGRES_* and PGDATA, user 70:70 (fsGroup 70).
    env = {"POSTGRES_USER": "stalk", "POSTGRES_DB": "stalk", "POSTGRES_PASSWORD": PASSWORD,
           "PGDATA": "/var/lib/postgresql/data/pgdata"}
    volumes = [Volume("/var/lib/postgresql/data", mode="2775", uid=70, gid=70), Volume("/var/run/postgresql", uid=70, gid=70),
               Volume("/tmp")]
    with rootfs(images["postgres"]["ref"], tmp_path / "pg") as container, \
            container.start(user="70:70", env=env, volumes=volumes) as server:
        ready(server, lambda: server.exec("pg_isready", "-h", "127.0.0.1", "-U", "stalk").returncode == 0,
              "pg_isready, the chart's probe")
        query = "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname = 'stalk'"
        psql = ["psql", "-h", "127.0.0.1", "-U", "stalk", "-d", "stalk", "-tAc", query]
        assert server.exec(*psql, env={"PGPASSWORD": PASSWORD}).output.strip() == "UTF8|C.UTF-8"
        assert "password authentication failed" in server.exec(*psql, env={"PGPASSWORD": "wrong"}).output

        # The chart's migration Job, from the stalk image, in the database's network namespace.
        url = f"postgresql+psycopg://stalk:{PASSWORD}@127.0.0.1:5432/stalk"
        with rootfs(images["stalk"]["ref"], tmp_path / "stalk") as stalk:
            job = stalk.run("stalk", "db", "upgrade", env={"STALK_DATABASE_URL": url}, volumes=[Volume("/tmp")],
                            netns=server.netns())
        assert job.returncode == 0 and "database at head" in job.stdout, job.output
        tables = server.exec("psql", "-h", "127.0.0.1", "-U", "stalk", "-d", "stalk", "-tAc",
                             "SELECT count(*) FROM alembic_version", env={"PGPASSWORD": PASSWORD})
        assert tables.output.strip() == "1", tables.output


def test_a_missing_tool_is_one_readable_line_naming_the_debian_package(tmp_path):
    # An empty PATH: as on a machine without mmdebstrap and buildah (runc is looked up by its path).
    done = subprocess.run(["/usr/bin/python3", str(REPO / "hack" / "images.py")], capture_output=True, text=True,
                          env={"PATH": str(tmp_path), "STALK_CACHE_DIR": str(tmp_path / "cache")}, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    if os.geteuid() == 0:
        assert line == ("make image: mmdebstrap is missing: install Debian's mmdebstrap package "
                        "(hack/system-deps.sh --images, which `make image` runs)")
    else:
        assert line.startswith("make image: must run as root")
