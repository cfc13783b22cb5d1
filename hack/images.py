#!/usr/bin/env python3
"""Build stalk's container images on this machine, without a registry (`make image`).

    python3 hack/images.py [--dev] [--only NAME ...] [--containerd SOCKET [--tag REF]] [--output JSON] [-v]

Four images, each cached by a hash of everything it is built from:

  base      a `python:3.11`-shaped Debian bookworm: `mmdebstrap --variant=minbase` from this
            machine's apt sources, Debian's python3.11 with `python3.11 -m venv /usr/local`,
            and this machine's CA bundle (HTTPS to PyPI may pass a re-signing proxy)
  stalk     the project's Dockerfile, unchanged, with PYTHON_IMAGE set to the base
            (--dev: the DEV_RELOAD=true variant that skaffold dev runs)
  redis     Debian's redis-server on the base (hack/images/redis/), for the chart's StatefulSet
  postgres  Debian's postgresql-15 on the base (hack/images/postgres/), initialised UTF-8

The cache lives outside the repository, like the Go binaries of hack/tools/build.sh:
${STALK_CACHE_DIR:-~/.cache/stalk}/images/<name>-<hash>/ holds a docker-archive (`image.tar`,
which `ctr -n k8s.io images import` reads), the build log and a `.complete` marker. images.json
next to them lists the references and archives, helm-values.yaml the chart values that select
them. A second run builds nothing. Standard library only, like hack/cluster.py.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "hack" / "images"
CACHE = Path(os.environ.get("STALK_CACHE_DIR") or Path.home() / ".cache" / "stalk") / "images"
# crun fails on this kind of machine ("cgroups in hybrid mode not supported"): runc, always.
RUNC = "/usr/sbin/runc"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
# Old builds kept per image (the newest ones); older archives and tags are removed.
KEEP = 3

# Every tool, with the Debian package that ships it (hack/system-deps.sh --images installs them).
TOOLS = {"mmdebstrap": "mmdebstrap", "buildah": "buildah", RUNC: "runc"}

SUITE = "bookworm"
BASE_PACKAGES = ["passwd", "python3.11", "python3.11-venv"]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    # The machine's CA bundle, for every client a build may run: pip, uv, requests, OpenSSL.
    "SSL_CERT_FILE": str(CA_BUNDLE),
    "PIP_CERT": str(CA_BUNDLE),
    "REQUESTS_CA_BUNDLE": str(CA_BUNDLE),
    "UV_NATIVE_TLS": "1",
}
MMDEBSTRAP_OPTIONS = [
    "--variant=minbase", "--mode=root", "--format=tar", "--include=" + ",".join(BASE_PACKAGES),
    # Kept in the rootfs (/etc/apt, /etc/dpkg), so packages added later stay small too.
    "--aptopt=APT::Install-Recommends \"false\"",
    "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
    f"--customize-hook=mkdir -p \"$1/etc/ssl/certs\" && cp {CA_BUNDLE} \"$1/etc/ssl/certs/\"",
    "--customize-hook=chroot \"$1\" python3.11 -m venv /usr/local",
    "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
]
# The files the Dockerfile copies (see .dockerignore), and the files that are never copied.
STALK_CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock", "README.md", "api", "workers", "operator"]
IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".hypothesis"}
IGNORED_SUFFIXES = {".pyc", ".pyo", ".pyd", ".db"}


class ImageError(Exception):
    """A failure explained in one line."""


def say(msg: str) -> None:
    print(f"image: {msg}", flush=True)


# --- hashing ------------------------------------------------------------------------------------

def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:12]


def tree_digest(root: Path, names: list[str]) -> str:
    """Paths, exec bits and contents of every file under root/names, minus build litter."""
    parts: list[bytes | str] = []
    for name in names:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(root)
            if IGNORED_PARTS & set(rel.parts) or path.suffix in IGNORED_SUFFIXES or path.name == ".env":
                continue
            parts += [str(rel), str(os.access(path, os.X_OK)), path.read_bytes()]
    return digest(*parts)


# --- running tools ------------------------------------------------------------------------------

def check_tools() -> None:
    if os.geteuid() != 0:
        raise ImageError("must run as root (mmdebstrap and buildah build as root here; rootless is not set up)")
    for tool, package in TOOLS.items():
        if not (shutil.which(tool) if "/" not in tool else os.access(tool, os.X_OK)):
            raise ImageError(f"{tool} is missing: install Debian's {package} package "
                             f"(hack/system-deps.sh --images, which `make image` runs)")


def run(argv: list[str], log: Path, verbose: bool) -> None:
    """Run a build step, its output in the log (and on the terminal with --verbose)."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if verbose:
                sys.stdout.write("    " + line)
        if proc.wait() != 0:
            out.flush()
            tail = log.read_text(errors="replace").splitlines()[-25:]
            sys.stderr.write("\n".join("    " + line for line in tail) + "\n")
            raise ImageError(f"{argv[0]} {argv[1]} failed (exit {proc.returncode}); full log: {log}")


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True).stdout.strip()


def has_image(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


# --- the cache ----------------------------------------------------------------------------------

@dataclass
class Built:
    name: str
    ref: str
    archive: Path | None
    seconds: float | None  # None: cached

    def record(self) -> dict:
        repository, _, tag = self.ref.rpartition(":")
        return {"ref": self.ref, "repository": repository, "tag": tag,
                "archive": str(self.archive) if self.archive else None}


@contextlib.contextmanager
def locked(path: Path):
    """One builder per cache entry: another clone building the same image waits for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{path.stem} is being built by another process; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_build(name: str, key: str, ref: str, build, *, needs_store: bool = False) -> Built:
    """Build into CACHE/name-key/ unless its .complete marker is there (and, with needs_store,
    the image is still in buildah's store: a base that later builds start FROM)."""
    entry = CACHE / f"{name}-{key}"
    with locked(CACHE / f"{name}-{key}.lock"):
        if (entry / ".complete").exists() and (not needs_store or has_image(ref)):
            (entry / ".complete").touch()  # last used: what prune() keeps
            say(f"{name:<9} cached  {ref}")
            return Built(name, ref, entry / "image.tar" if not needs_store else None, None)
        tmp = entry.with_name(entry.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        say(f"{name:<9} building {ref} (log: {entry / 'build.log'})")
        start = time.monotonic()
        build(tmp)
        seconds = time.monotonic() - start
        (tmp / ".complete").write_text(f"{ref}\n{seconds:.1f}s\n")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        say(f"{name:<9} built   {ref} in {seconds:.1f}s")
    prune(name, keep=entry)
    return Built(name, ref, entry / "image.tar" if not needs_store else None, seconds)


def prune(name: str, keep: Path) -> None:
    """Drop all but the newest KEEP builds of an image (archive and buildah tag)."""
    done = sorted((p for p in CACHE.glob(f"{name}-*/.complete")), key=lambda p: p.stat().st_mtime, reverse=True)
    for marker in done[KEEP:]:
        entry = marker.parent
        if entry == keep:
            continue
        ref = marker.read_text().split("\n", 1)[0]
        subprocess.run(["buildah", "rmi", ref], capture_output=True)
        shutil.rmtree(entry, ignore_errors=True)
        (entry.parent / f"{entry.name}.lock").unlink(missing_ok=True)


# --- the images ---------------------------------------------------------------------------------

def base_image(verbose: bool) -> Built:
    sources = [p for p in APT_SOURCES if p.is_file() and p.stat().st_size]
    if not sources:
        raise ImageError("no apt sources in /etc/apt: mmdebstrap needs this machine's Debian mirror")
    key = digest(SUITE, *MMDEBSTRAP_OPTIONS, json.dumps(BASE_ENV, sort_keys=True),
                 *(p.read_bytes() for p in sources), CA_BUNDLE.read_bytes())
    ref = f"localhost/stalk-base:{key}"
    entry = CACHE / f"base-{key}"

    def build(out: Path) -> None:
        log = out / "build.log"
        rootfs = out / "rootfs.tar"
        if (entry / ".complete").exists():
            # The rootfs is cached; only buildah's copy of the image went away.
            shutil.copy2(entry / "rootfs.tar", rootfs)
        else:
            step = time.monotonic()
            run(["mmdebstrap", *MMDEBSTRAP_OPTIONS, SUITE, str(rootfs), *map(str, sources)], log, verbose)
            say(f"{'base':<9}   rootfs from mmdebstrap: {time.monotonic() - step:.1f}s, "
                f"{rootfs.stat().st_size / 1e6:.0f} MB")
        step = time.monotonic()
        container = buildah("from", "scratch")
        try:
            run(["buildah", "add", "--quiet", container, str(rootfs), "/"], log, verbose)
            config = [f"--env={k}={v}" for k, v in BASE_ENV.items()]
            run(["buildah", "config", *config, "--cmd", "python3",
                 "--label", f"org.opencontainers.image.description=Debian {SUITE} minbase with python3.11 (a local base)",
                 container], log, verbose)
            run(["buildah", "commit", "--quiet", "--rm", container, ref], log, verbose)
            container = ""
        finally:
            if container:
                subprocess.run(["buildah", "rm", container], capture_output=True)
        say(f"{'base':<9}   imported with buildah: {time.monotonic() - step:.1f}s")

    return cached_build("base", key, ref, build, needs_store=True)


def bud(name: str, ref: str, out: Path, context: Path, containerfile: Path, build_args: dict[str, str],
        verbose: bool) -> None:
    """buildah bud, then the image as a docker-archive (names kept: ctr import tags it as ref)."""
    log = out / "build.log"
    step = time.monotonic()
    # --network host: no bridge, no iptables rules (the cluster tests snapshot those).
    # --layers: the dependency layers are reused when only stalk's sources change.
    # --force-rm: a failed step leaves no working container behind.
    argv = ["buildah", "bud", "--runtime", RUNC, "--network", "host", "--layers", "--force-rm",
            "-f", str(containerfile), "-t", ref]
    for arg, value in build_args.items():
        argv += ["--build-arg", f"{arg}={value}"]
    run([*argv, str(context)], log, verbose)
    say(f"{name:<9}   buildah bud: {time.monotonic() - step:.1f}s")
    step = time.monotonic()
    archive = out / "image.tar"
    run(["buildah", "push", "--quiet", ref, f"docker-archive:{archive}:{ref}"], log, verbose)
    say(f"{name:<9}   archive: {time.monotonic() - step:.1f}s, {archive.stat().st_size / 1e6:.0f} MB")


def stalk_image(base: Built, dev: bool, verbose: bool) -> Built:
    build_args = {"PYTHON_IMAGE": base.ref, **({"DEV_RELOAD": "true"} if dev else {})}
    key = digest(base.ref, tree_digest(REPO, STALK_CONTEXT))
    name = "stalk-dev" if dev else "stalk"
    ref = f"localhost/stalk:{key}-dev" if dev else f"localhost/stalk:{key}"
    return cached_build(name, key, ref, lambda out: bud(name, ref, out, REPO, REPO / "Dockerfile", build_args,
                                                          verbose))


def service_image(name: str, base: Built, verbose: bool) -> Built:
    """redis or postgres: hack/images/<name>/Containerfile on the base."""
    context = HERE / name
    key = digest(base.ref, tree_digest(context, sorted(p.name for p in context.iterdir())))
    ref = f"localhost/stalk-{name}:{key}"
    return cached_build(name, key, ref, lambda out: bud(name, ref, out, context, context / "Containerfile",
                                                          {"BASE_IMAGE": base.ref}, verbose))


# --- results ------------------------------------------------------------------------------------

def write_results(built: list[Built]) -> Path:
    """images.json (every image built so far, this run's win) and helm-values.yaml for the chart."""
    path = CACHE / "images.json"
    with locked(CACHE / "images.json.lock"):
        results = json.loads(path.read_text()) if path.exists() else {}
        results.update({b.name: b.record() for b in built if b.archive})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        tmp.rename(path)
        values = ["# The locally built images (hack/images.py): helm install ... -f this file"]
        for key, section in (("stalk", "image"), ("redis", "redis:\n  image"), ("postgres", "postgresql:\n  image")):
            if key in results:
                indent = "    " if "\n" in section else "  "
                values += [f"{section}:", f"{indent}repository: {results[key]['repository']}",
                           f"{indent}tag: \"{results[key]['tag']}\"",
                           # Loaded into the node's containerd beforehand: never pull.
                           f"{indent}pullPolicy: Never"]
        (CACHE / "helm-values.yaml").write_text("\n".join(values) + "\n")
    return path


def normalized(ref: str) -> str:
    """The name the CRI looks up: `stalk:abc` is docker.io/library/stalk:abc (ctr does not normalise)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def load_into_containerd(built: list[Built], socket: str, tag: str | None, verbose: bool) -> None:
    log = CACHE / "ctr-import.log"
    for b in built:
        if not b.archive:
            continue
        step = time.monotonic()
        run(["ctr", "-a", socket, "-n", "k8s.io", "images", "import", str(b.archive)], log, verbose)
        say(f"{b.name:<9} loaded into {socket} in {time.monotonic() - step:.1f}s")
    if tag:
        # skaffold's custom builder names the image ($IMAGE); the newest stalk image gets that name too.
        stalk = [b for b in built if b.name.startswith("stalk")][-1]
        run(["ctr", "-a", socket, "-n", "k8s.io", "images", "tag", "--force", stalk.ref, normalized(tag)], log, verbose)
        say(f"{stalk.name:<9} tagged {normalized(tag)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", action="store_true", help="also build the DEV_RELOAD=true stalk image (skaffold dev)")
    parser.add_argument("--only", nargs="+", choices=["stalk", "redis", "postgres"], help="build only these images")
    parser.add_argument("--containerd", metavar="SOCKET", help="import the archives into this containerd (k8s.io)")
    parser.add_argument("--tag", metavar="REF",
                        help="with --containerd: also name the stalk image (the dev one with --dev) REF there, "
                             "as skaffold's custom builder asks ($IMAGE)")
    parser.add_argument("--output", metavar="JSON", type=Path,
                        help="also write this run's images (only) to this file, e.g. a cluster's state dir")
    parser.add_argument("--verbose", "-v", action="store_true", help="show the tools' output, not only the log")
    args = parser.parse_args(argv)
    wanted = args.only or ["stalk", "redis", "postgres"]
    try:
        check_tools()
        if args.containerd and not shutil.which("ctr"):
            raise ImageError("ctr is missing: install Debian's containerd package")
        if args.tag and not (args.containerd and "stalk" in wanted):
            raise ImageError("--tag names the stalk image in a containerd: give --containerd and build stalk")
        CACHE.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        base = base_image(args.verbose)
        built: list[Built] = []
        if "stalk" in wanted:
            built.append(stalk_image(base, dev=False, verbose=args.verbose))
            if args.dev:
                built.append(stalk_image(base, dev=True, verbose=args.verbose))
        built += [service_image(name, base, args.verbose) for name in ("redis", "postgres") if name in wanted]
        results = write_results(built)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({b.name: b.record() for b in built}, indent=2, sort_keys=True) + "\n")
        if args.containerd:
            load_into_containerd(built, args.containerd, args.tag, args.verbose)
    except ImageError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"make image: {' '.join(exc.cmd[:3])} failed: {(exc.stderr or '').strip().splitlines()[-1:]}",
              file=sys.stderr)
        return 1
    say(f"done in {time.monotonic() - start:.1f}s" + ("" if any(b.seconds for b in [base, *built]) else " (all cached)"))
    for b in built:
        print(f"{b.name} {b.ref} {b.archive}")
    print(f"images.json {results}")
    print(f"helm-values {CACHE / 'helm-values.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
