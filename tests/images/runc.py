"""Run a built image with plain runc, the way the chart's pods run it, but without a kubelet.

The image's root file system comes from buildah's store (``buildah from`` + ``buildah mount``,
an overlay: fast, and thrown away with ``buildah rm``); the container gets the image's config
(user, environment, working directory), a read-only root file system, no capabilities (the
chart's ``drop: [ALL]``), tmpfs volumes where the chart mounts volumes, and its own network
namespace with only loopback. runc keeps its state in a temporary folder of ours.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RUNC = "/usr/sbin/runc"


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def image_config(ref: str) -> dict:
    """The OCI config of an image in buildah's store (User, Env, Cmd, WorkingDir, ExposedPorts)."""
    return json.loads(buildah("inspect", "--type", "image", ref))["OCIv1"]["config"]


def archive_manifest(archive: Path) -> tuple[dict, dict]:
    """(manifest entry, image config) of a docker-archive, as ``ctr images import`` reads them."""
    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(entry["Config"]))
        names = set(tar.getnames())
    missing = [layer for layer in entry["Layers"] if layer not in names]
    assert not missing, f"layers listed but not in {archive}: {missing}"
    return entry, config["config"]


@dataclass
class Volume:
    """A tmpfs where the chart mounts a volume (an emptyDir, or a PVC made writable by fsGroup).
    runc gives a tmpfs the mode of the image's folder it covers, so the owner is what makes it writable."""
    path: str
    mode: str = "1777"
    uid: int = 0
    gid: int = 0


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Container:
    """One image's rootfs, run with runc as often as a test needs (one process at a time per id)."""
    ref: str
    workdir: Path
    rootfs: str = ""
    name: str = ""
    _spec: dict = field(default_factory=dict)

    def spec(self, argv: list[str], *, user: str | None, env: dict[str, str], volumes: list[Volume],
             read_only: bool, netns: str | None, capabilities: tuple[str, ...] = ()) -> dict:
        config = image_config(self.ref)
        spec = json.loads(json.dumps(self._spec))
        uid, _, gid = (user or config.get("User") or "0:0").partition(":")
        image_env = dict(item.split("=", 1) for item in config.get("Env", []))
        spec["process"].update({
            "terminal": False,
            "args": argv,
            "cwd": config.get("WorkingDir") or "/",
            "user": {"uid": int(uid), "gid": int(gid or uid)},
            "env": [f"{k}={v}" for k, v in {**image_env, **env}.items()],
            # The chart's containerSecurityContext drops every capability (a test may add one back).
            "capabilities": {kind: list(capabilities) for kind in ("bounding", "effective", "permitted", "ambient")},
        })
        spec["root"] = {"path": self.rootfs, "readonly": read_only}
        for volume in volumes:
            options = ["nosuid", "nodev", f"mode={volume.mode}", f"uid={volume.uid}", f"gid={volume.gid}", "size=256m"]
            spec["mounts"].append({"destination": volume.path, "type": "tmpfs", "source": "tmpfs", "options": options})
        if netns:
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = netns
        return spec

    def _bundle(self, argv, **kwargs) -> tuple[Path, str]:
        cid = f"stalk-image-test-{uuid.uuid4().hex[:10]}"
        bundle = self.workdir / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(self.spec(list(argv), **kwargs)))
        return bundle, cid

    def _runc(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([RUNC, "--root", str(self.workdir / "state"), *args], **kwargs)

    def run(self, *argv: str, user: str | None = None, env: dict[str, str] | None = None,
            volumes: list[Volume] = (), read_only: bool = True, netns: str | None = None,
            capabilities: tuple[str, ...] = (), timeout: float = 120) -> Run:
        """Run one command to completion in a fresh container of this rootfs."""
        bundle, cid = self._bundle(argv, user=user, env=env or {}, volumes=list(volumes), read_only=read_only,
                                   netns=netns, capabilities=capabilities)
        try:
            done = self._runc("run", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        finally:
            self._runc("delete", "--force", cid, capture_output=True)
        return Run(done.returncode, done.stdout, done.stderr)

    @contextmanager
    def start(self, *argv: str, user: str | None = None, env: dict[str, str] | None = None,
              volumes: list[Volume] = (), netns: str | None = None):
        """Run a server in the background; yields a handle to exec into it (as kubelet's probes do)."""
        if not argv:  # no command in the pod spec: the image's entrypoint and command
            config = image_config(self.ref)
            argv = (*(config.get("Entrypoint") or []), *(config.get("Cmd") or []))
        bundle, cid = self._bundle(argv, user=user, env=env or {}, volumes=list(volumes), read_only=True, netns=netns)
        log = bundle / "output.log"
        with log.open("w") as out:
            started = self._runc("run", "--detach", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, timeout=60)
        try:
            assert started.returncode == 0, log.read_text()
            yield Server(self, cid, log)
        finally:
            self._runc("kill", cid, "KILL", capture_output=True)
            self._runc("delete", "--force", cid, capture_output=True)


@dataclass
class Server:
    container: Container
    cid: str
    log: Path

    def exec(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 30) -> Run:
        env_args = [arg for k, v in (env or {}).items() for arg in ("--env", f"{k}={v}")]
        done = self.container._runc("exec", *env_args, self.cid, *argv, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=timeout)
        return Run(done.returncode, done.stdout, done.stderr)

    def netns(self) -> str:
        """The server's network namespace, for a client container that shares it (a pod's containers do)."""
        state = json.loads(self.container._runc("state", self.cid, capture_output=True, text=True).stdout)
        return f"/proc/{state['pid']}/ns/net"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def rootfs(ref: str, workdir: Path):
    """A Container for ``ref``: a buildah working container mounted as its rootfs, removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_dir = workdir / "spec"
    spec_dir.mkdir(exist_ok=True)
    subprocess.run([RUNC, "spec"], cwd=spec_dir, check=True, capture_output=True)
    name = buildah("from", "--pull-never", ref)
    try:
        container = Container(ref=ref, workdir=workdir, rootfs=buildah("mount", name), name=name,
                              _spec=json.loads((spec_dir / "config.json").read_text()))
        yield container
    finally:
        subprocess.run(["buildah", "umount", name], capture_output=True)
        subprocess.run(["buildah", "rm", name], capture_output=True)
