"""Operator reaction time: a burst of tasks lands in Redis -> the scale patch is on the API server.

    .venv/bin/python bench/operator_reaction.py                 # 20 bursts, ~2 minutes with the cluster's start
    .venv/bin/python bench/operator_reaction.py --bursts 50 --png docs/img/operator-reaction.png

Starts everything itself on loopback and stops it at the end (also on Ctrl-C or an error): a
private control plane (``hack/cluster.py up`` in its own ``--state-dir`` under /tmp, kwok nodes),
a private ``redis-server`` on a free port, the CRD from ``k8s/crd/``, one worker Deployment at 0
replicas and one TaskQueue with the CRD's defaults (pollSeconds 1, tasksPerReplica 10), and the
operator itself as ``python -m stalk_operator`` with its default settings (leader election on).

Each burst is ``--tasks`` tasks sent with a plain Celery client (``send_task``, nothing of stalk's).
The clock starts when the last ``send_task`` of the burst returned (the whole burst is in Redis)
and stops when a watch on the Deployment delivers the object whose ``spec.replicas`` is the count
the burst asks for (``ceil(tasks / tasksPerReplica)``): that is the operator's scale patch as the
API server stored and announced it, timed here to the microsecond. The arrival of the ``ScaledUp``
Event (a second watch) is reported too. Between bursts the queue is purged and the Deployment
scaled back to 0 by this script, and the next burst waits until the TaskQueue's status shows that
the operator saw it (replicas and desiredReplicas 0), plus a random 0.5-1.5 s so bursts land at
every phase of the 1 s tick. The operator's /metrics is read only before and after the bursts.

The harness (``Harness``) is shared with ``bench/operator_scale.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import BenchError, free_port, wait_for  # bench/harness.py, next to this script
from procfs import proc_status  # bench/procfs.py, next to this script

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "k8s" / "crd" / "taskqueues.stalk.dev.yaml"
CLUSTER_PY = ROOT / "hack" / "cluster.py"
GROUP, VERSION, PLURAL = "stalk.dev", "v1alpha1", "taskqueues"
NAMESPACE = "bench"
KEDA_POLLING_SECONDS = 30  # KEDA's default pollingInterval: the comparison line
TARGET_SECONDS = 2.0  # issue 5: reaction within 2 s
TASKS_PER_REPLICA = 10  # the CRD's default; the TaskQueue below does not set it

STARTUP_DEADLINE = 120.0
STOP_DEADLINE = 20.0


class _Interrupted(BaseException):
    """SIGTERM, turned into an exception so that every ``finally`` runs."""


def _on_sigterm(*_: Any) -> None:
    raise _Interrupted("SIGTERM")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" of comm: state is fields[0]; utime and stime are fields 14 and 15 of stat(5).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# --- the environment: cluster, Redis, operator ----------------------------------------------------

@dataclass
class Harness:
    """A private control plane, a private redis-server and the operator; ``close()`` stops all of it."""

    workdir: Path
    keep: bool = False
    state_dir: Path | None = None
    kubeconfig: Path | None = None
    kubectl_bin: str = ""
    redis_port: int = 0
    metrics_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    api_client: Any = None

    @classmethod
    def create(cls, prefix: str, keep: bool = False) -> Harness:
        return cls(workdir=Path(tempfile.mkdtemp(prefix=prefix)), keep=keep)

    # processes -----------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with (self.workdir / f"{name}.log").open("ab") as log:
            # Own session: a Ctrl-C in the terminal reaches only this script, which stops them in order.
            proc = subprocess.Popen(argv, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_DEADLINE), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # its own group, started above
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)

    def check(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # the cluster ---------------------------------------------------------------------------------
    def start_cluster(self, nodes: int = 3) -> float:
        """``hack/cluster.py up`` in a state dir of our own; returns the seconds it took."""
        self.state_dir = self.workdir / "cluster"
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(CLUSTER_PY), "up", "--state-dir", str(self.state_dir), "--nodes", str(nodes)],
            capture_output=True, text=True, timeout=STARTUP_DEADLINE + 60, stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise BenchError(f"hack/cluster.py up failed:\n{result.stderr[-3000:]}")
        self.kubeconfig = self.state_dir / "kubeconfig"
        info = json.loads((self.state_dir / "cluster.json").read_text())
        self.kubectl_bin = str(Path(info["bin_dir"]) / "kubectl")

        from kubernetes import client, config

        self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        client.CoreV1Api(self.api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        self.kubectl("apply", "--server-side", "-f", str(CRD))
        self.kubectl("wait", "--for=condition=Established", "crd/taskqueues.stalk.dev", "--timeout=60s")
        # Pods need the namespace's default ServiceAccount, which the controller-manager creates.
        wait_for(lambda: client.CoreV1Api(self.api_client).read_namespaced_service_account("default", NAMESPACE),
                 deadline=60, what="the bench namespace's default ServiceAccount")
        return time.monotonic() - started

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def apply(self, objects: list[dict[str, Any]], batch: int = 100) -> None:
        """Server-side apply, ``batch`` objects per kubectl call (a v1 List)."""
        for start in range(0, len(objects), batch):
            doc = {"apiVersion": "v1", "kind": "List", "items": objects[start:start + batch]}
            self.kubectl("apply", "--server-side", "--field-manager=stalk-bench", "-f", "-",
                         stdin=json.dumps(doc), timeout=300)

    def wait_settled(self, label_selector: str, count: int, deadline: float = 900) -> float:
        """Wait until the controller-manager has processed ``count`` Deployments; returns the seconds."""
        from kubernetes import client

        apps = client.AppsV1Api(self.api_client)

        def settled() -> bool:
            items = apps.list_namespaced_deployment(NAMESPACE, label_selector=label_selector).items
            return len(items) == count and all(
                (d.status.observed_generation or 0) >= d.metadata.generation and d.status.conditions for d in items)

        started = time.monotonic()
        wait_for(settled, deadline=deadline, what="the controller-manager to settle the Deployments", interval=5)
        return time.monotonic() - started

    # Redis ---------------------------------------------------------------------------------------
    def start_redis(self) -> str:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(binary, os.X_OK):
            raise BenchError("redis-server is not installed (Debian: apt-get install redis-server; or `make system-deps`)")
        self.redis_port = free_port()
        self._start("redis", [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(self.workdir)])
        wait_for(lambda: self.redis().ping(), deadline=15, what="redis-server", alive=lambda: self.check("redis"))
        return self.redis_url()

    def redis_url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def redis(self, db: int = 0):
        import redis

        return redis.Redis(port=self.redis_port, db=db, socket_timeout=10)

    # the operator --------------------------------------------------------------------------------
    def start_operator(self, **env: str) -> subprocess.Popen:
        """``python -m stalk_operator`` with its defaults, watching the bench namespace; waits for /readyz."""
        self.metrics_port = free_port()
        environment = {
            # Only what locates things; every tuning setting stays at its default.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(self.kubeconfig),
            "STALK_OPERATOR_NAMESPACE": NAMESPACE,
            "STALK_WATCH_NAMESPACES": NAMESPACE,
            "STALK_METRICS_HOST": "127.0.0.1",
            "STALK_METRICS_PORT": str(self.metrics_port),
            **env,
        }
        # cwd is the work dir: the operator reads ``.env`` from its cwd, and the repo's must not count.
        proc = self._start("operator", [sys.executable, "-m", "stalk_operator"], env=environment)
        wait_for(lambda: self.http_status("/readyz") == 200, deadline=STARTUP_DEADLINE, what="operator /readyz",
                 interval=0.2, alive=lambda: self.check("operator"))
        wait_for(lambda: self.metric("stalk_operator_is_leader") == 1, deadline=60, what="operator holds the lease",
                 interval=0.2, alive=lambda: self.check("operator"))
        return proc

    def http_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def close(self) -> None:
        """Stop everything started here, in order: operator, Redis, then the cluster."""
        for name in [n for n in self.procs if n != "redis"] + ["redis"]:
            self._stop(name)
        if self.api_client is not None:
            with contextlib.suppress(Exception):
                self.api_client.close()
        if self.state_dir is not None and (self.state_dir / "cluster.json").exists():
            subprocess.run([sys.executable, str(CLUSTER_PY), "down", "--state-dir", str(self.state_dir)],
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        if self.keep:
            print(f"logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def harness(prefix: str, keep: bool = False):
    """A Harness that is closed on return, error, Ctrl-C or SIGTERM."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    h = Harness.create(prefix, keep)
    try:
        yield h
    except BaseException:
        for name in h.procs:
            print(f"---- {name} log (tail) ----\n{h.tail(name)}", file=sys.stderr)
        raise
    finally:
        # A second SIGTERM or Ctrl-C during the clean-up must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(KeyboardInterrupt):
            h.close()
        signal.signal(signal.SIGTERM, previous)


def worker_deployment(name: str, replicas: int = 0, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A worker Deployment as kwok runs it: pods are scheduled and become Ready, nothing executes."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 5,
                         "containers": [{"name": "worker", "image": "stalk-worker:bench"}]},
            },
        },
    }


def taskqueue(name: str, *, queue: str, broker_url: str, target: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"queue": queue, "broker": {"url": broker_url},
                 "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}, **spec},
    }


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# --- the reaction benchmark -----------------------------------------------------------------------

class Watcher(threading.Thread):
    """Records (arrival time, object) for every watch event of one list call until stopped."""

    def __init__(self, list_call, what: str, **kwargs: Any) -> None:
        super().__init__(daemon=True, name=f"watch {what}")
        self.list_call, self.kwargs, self.what = list_call, kwargs, what
        self.events: list[tuple[float, Any]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started_watch = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        from kubernetes import watch

        resource_version = None
        while not self.stopping.is_set():
            w = watch.Watch()
            try:
                kwargs = dict(self.kwargs, timeout_seconds=30, _request_timeout=40)
                if resource_version:
                    kwargs["resource_version"] = resource_version
                stream = w.stream(self.list_call, **kwargs)
                self.started_watch.set()
                for event in stream:
                    now = time.time()
                    obj = event["object"]
                    resource_version = obj.metadata.resource_version
                    with self.lock:
                        self.events.append((now, obj))
                    if self.stopping.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - reported by the caller if it matters
                self.error = exc
                resource_version = None
                time.sleep(0.2)
            finally:
                w.stop()

    def since(self, t: float) -> list[tuple[float, Any]]:
        with self.lock:
            return [(at, obj) for at, obj in self.events if at >= t]


def run_reaction(args: argparse.Namespace) -> dict[str, Any]:
    from celery import Celery
    from kubernetes import client

    rng = random.Random(args.seed)
    load_start = load_average()
    started_at = datetime.now(UTC)
    with harness("stalk-bench-reaction-", keep=args.keep) as h:
        print(f"starting a private control plane in {h.workdir}/cluster ...", flush=True)
        cluster_seconds = h.start_cluster()
        url = h.start_redis()
        print(f"cluster ready in {cluster_seconds:.1f}s; redis on {url}", flush=True)
        h.apply([
            worker_deployment("workers"),
            taskqueue("work", queue=args.queue, broker_url=url, target="workers", maxReplicas=args.max_replicas),
        ])
        if args.extra_taskqueues:
            # Other TaskQueues on the same Redis, as in bench/operator_scale.py: a tenth hold 1-50 tasks,
            # below activationTasks, so they stay at 0 replicas (no pods) but are read and decided every tick.
            names = [f"{i:04d}" for i in range(args.extra_taskqueues)]
            h.apply([worker_deployment(f"w-{n}", labels={"stalk.dev/bench": "extra"}) for n in names]
                    + [taskqueue(f"tq-{n}", queue=f"q-{n}", broker_url=url, target=f"w-{n}", maxReplicas=2,
                                 activationTasks=1000) for n in names])
            settle = h.wait_settled("stalk.dev/bench=extra", args.extra_taskqueues)
            backlog = Celery("backlog", broker=url, set_as_current=False)
            with backlog.connection_for_write() as conn:
                for n in names[:max(1, len(names) // 10)]:
                    for _ in range(rng.randint(1, 50)):
                        backlog.send_task("bench.noop", queue=f"q-{n}", connection=conn)
            backlog.close()
            print(f"{args.extra_taskqueues} more TaskQueues on the same Redis (settled in {settle:.0f}s)", flush=True)
        apps = client.AppsV1Api(h.api_client)
        core = client.CoreV1Api(h.api_client)
        operator = h.start_operator()
        custom = client.CustomObjectsApi(h.api_client)

        def at_zero() -> bool:
            # The operator's view from the TaskQueue's status (replicas and desiredReplicas are written as soon
            # as they change), not from its /metrics: at 1,000 TaskQueues one scrape costs the operator's event
            # loop ~60 ms, and polling it would slow the very ticks being measured.
            status = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "work").get("status") or {}
            return status.get("replicas") == 0 and status.get("desiredReplicas") == 0

        wait_for(at_zero, deadline=300, what="the operator's first tick of the TaskQueue", interval=0.2,
                 alive=lambda: h.check("operator"))

        deployments = Watcher(apps.list_namespaced_deployment, "deployments", namespace=NAMESPACE,
                              field_selector="metadata.name=workers")
        events = Watcher(core.list_namespaced_event, "events", namespace=NAMESPACE,
                         field_selector="involvedObject.name=work,reason=ScaledUp")
        for w in (deployments, events):
            w.start()
            if not w.started_watch.wait(30):
                raise BenchError(f"the {w.what} watch did not start")

        producer = Celery("producer", broker=url, set_as_current=False)
        purge = h.redis()
        ticks_before = h.metrics()
        cpu_before, wall_before = cpu_seconds(operator.pid), time.monotonic()
        wanted = math.ceil(args.tasks / TASKS_PER_REPLICA)
        rows = []
        try:
            with producer.connection_for_write() as conn:
                # Warm the client up (connect, declare) on a queue no TaskQueue reads.
                producer.send_task("bench.noop", queue=f"{args.queue}-warmup", connection=conn)
                purge.delete(f"{args.queue}-warmup")
                for burst in range(args.bursts):
                    # Back to the start: empty queue, Deployment at 0 (the operator keeps 0 for an idle queue).
                    purge.delete(args.queue)
                    apps.patch_namespaced_deployment_scale("workers", NAMESPACE, {"spec": {"replicas": 0}})
                    # Let the operator see the Deployment at 0 with an empty queue, then land at a random tick phase.
                    wait_for(at_zero, deadline=60, what="the operator to see 0 replicas", interval=0.1,
                             alive=lambda: h.check("operator"))
                    time.sleep(rng.uniform(0.5, 1.5))
                    first_landed = None
                    for i in range(args.tasks):
                        producer.send_task("bench.noop", args=[i], queue=args.queue, connection=conn)
                        if first_landed is None:
                            first_landed = time.time()
                    landed = time.time()

                    def scaled():
                        hits = [at for at, d in deployments.since(first_landed - 0.001)
                                if (d.spec.replicas or 0) >= wanted]
                        return hits[0] if hits else None

                    patched = wait_for(scaled, deadline=30, what=f"burst {burst + 1}: Deployment at {wanted} replicas",
                                       interval=0.01, alive=lambda: h.check("operator"))
                    event = wait_for(lambda: [at for at, _ in events.since(first_landed - 0.001)], deadline=10,
                                     what=f"burst {burst + 1}: a ScaledUp event", interval=0.01)
                    first_patch = min(at for at, d in deployments.since(first_landed - 0.001) if (d.spec.replicas or 0) > 0)
                    rows.append({
                        "burst": burst + 1,
                        "publish_ms": (landed - first_landed) * 1000,
                        "reaction_s": patched - landed,
                        "first_patch_s": first_patch - first_landed,
                        "event_s": event[0] - landed,
                    })
                    r = rows[-1]
                    print(f"burst {burst + 1:>3}: {args.tasks} tasks published in {r['publish_ms']:.1f} ms; "
                          f"Deployment at {wanted} replicas after {r['reaction_s'] * 1000:.0f} ms, "
                          f"ScaledUp event after {r['event_s'] * 1000:.0f} ms", flush=True)
        finally:
            producer.close()
            purge.close()
            for w in (deployments, events):
                w.stopping.set()
        rss = proc_status(operator.pid)
        ticks_after = h.metrics()
        cpu_share = (cpu_seconds(operator.pid) - cpu_before) / (time.monotonic() - wall_before)
        operator_log = h.tail("operator", 2000)

    reactions = [r["reaction_s"] for r in rows]
    return {
        "rows": rows, "reactions": reactions, "wanted": wanted, "cluster_seconds": cluster_seconds,
        "median": statistics.median(reactions), "p99": percentile(reactions, 0.99),
        "p90": percentile(reactions, 0.90), "min": min(reactions), "max": max(reactions),
        "event_median": statistics.median(r["event_s"] for r in rows),
        "event_p99": percentile([r["event_s"] for r in rows], 0.99),
        "publish_ms_median": statistics.median(r["publish_ms"] for r in rows),
        "load_start": load_start, "load_end": load_average(), "started_at": started_at,
        "operator_rss_kb": rss, "operator_cpu_share": cpu_share,
        "tick_count": _delta(ticks_before, ticks_after, "stalk_operator_tick_duration_seconds_count"),
        "tick_sum": _delta(ticks_before, ticks_after, "stalk_operator_tick_duration_seconds_sum"), "operator_warnings": [l for l in operator_log.splitlines() if " WARNING " in l or " ERROR " in l],
    }


def _delta(before: dict, after: dict, name: str) -> float:
    return (after.get((name, ()), 0.0) or 0.0) - (before.get((name, ()), 0.0) or 0.0)


def plot(result: dict[str, Any], path: Path, tasks: int, taskqueues: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ms = sorted(r * 1000 for r in result["reactions"])
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = max(50, math.ceil(ms[-1] / 25 / 50) * 50)  # ms per bin: 50, or wider for a long tail
    edges = list(range(0, int(max(ms[-1], 1000) // width + 2) * width, width))
    hist.hist(ms, bins=edges, color="#2b6cb0", edgecolor="white")
    hist.set_xlabel("reaction time (ms)")
    hist.set_ylabel("bursts")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.set_title(f"{len(ms)} bursts of {tasks} tasks")
    hist.axvline(result["median"] * 1000, color="black", linewidth=1, label=f"median {result['median'] * 1000:.0f} ms")
    hist.axvline(result["p99"] * 1000, color="#c53030", linestyle="--", linewidth=1,
                 label=f"p99 {result['p99'] * 1000:.0f} ms")
    hist.legend(loc="upper left", fontsize=8)
    cdf.step(ms, [(i + 1) / len(ms) for i in range(len(ms))], where="post", color="#2b6cb0", label="stalk (measured)")
    cdf.axvline(TARGET_SECONDS * 1000, color="#38a169", linestyle="--", label=f"target {TARGET_SECONDS:g} s")
    cdf.set_xlim(0, max(TARGET_SECONDS * 1000 * 1.1, ms[-1] * 1.05))
    cdf.set_ylim(0, 1.02)
    cdf.set_xlabel("reaction time (ms)")
    cdf.set_ylabel("share of bursts")
    cdf.set_title(f"CDF (KEDA's default polling alone: {KEDA_POLLING_SECONDS} s)")
    cdf.legend(loc="lower right", fontsize=8)
    cdf.grid(alpha=0.3)
    others = f", {taskqueues:,} TaskQueues on the Redis" if taskqueues > 1 else ", one TaskQueue"
    fig.suptitle(f"Burst in Redis -> scale patch on the API server (operator defaults, pollSeconds 1{others})",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    verdict = "met" if result["p99"] <= TARGET_SECONDS else "MISSED"
    lines = [
        f"| bursts | tasks per burst | replicas asked | median | p90 | p99 | min | max | target | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {len(result['reactions'])} | {args.tasks} | {result['wanted']} | {result['median'] * 1000:.0f} ms "
        f"| {result['p90'] * 1000:.0f} ms | {result['p99'] * 1000:.0f} ms | {result['min'] * 1000:.0f} ms "
        f"| {result['max'] * 1000:.0f} ms | <= {TARGET_SECONDS:g} s | {verdict} |",
        f"| KEDA (comparison) | | | >= its {KEDA_POLLING_SECONDS} s polling interval alone, before the HPA's 15 s sync | | | | | | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=30, help="tasks per burst (default 30: 3 replicas at 10 per replica)")
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument("--extra-taskqueues", type=int, default=0,
                        help="more TaskQueues (idle Deployments) on the same Redis, e.g. 999 for 1,000 in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--png", type=Path, help="write a histogram + CDF of the reaction times here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs of every process)")
    args = parser.parse_args(argv)
    if not 1 <= args.bursts <= 1000 or not 1 <= args.tasks <= 10_000 or not 0 <= args.extra_taskqueues <= 5000:
        parser.error("--bursts must be 1..1000, --tasks 1..10000 and --extra-taskqueues 0..5000")
    if math.ceil(args.tasks / TASKS_PER_REPLICA) > args.max_replicas:
        parser.error("--tasks / 10 must not exceed --max-replicas")

    result = run_reaction(args)
    print()
    print(f"Measured {result['started_at']:%Y-%m-%d %H:%M} UTC: {len(result['reactions'])} bursts, "
          f"burst published in {result['publish_ms_median']:.1f} ms (median)")
    print(report(result, args))
    print(f"ScaledUp Event seen (watch) after the burst landed: median {result['event_median'] * 1000:.0f} ms, "
          f"p99 {result['event_p99'] * 1000:.0f} ms")
    print(f"KEDA's default pollingInterval alone is {KEDA_POLLING_SECONDS} s: stalk's median is "
          f"{KEDA_POLLING_SECONDS / result['median']:.0f}x shorter than that one interval.")
    ticks = result["tick_count"]
    print(f"operator during the bursts: {ticks:.0f} ticks, mean tick "
          f"{(result['tick_sum'] / ticks * 1000) if ticks else float('nan'):.0f} ms, "
          f"CPU {result['operator_cpu_share']:.0%} of one core; TaskQueues: {1 + args.extra_taskqueues}")
    print(f"operator memory: {result['operator_rss_kb']}; load average at start {result['load_start']}, "
          f"at end {result['load_end']} ({os.cpu_count()} CPUs); cluster start {result['cluster_seconds']:.1f}s")
    if result["operator_warnings"]:
        print(f"operator warnings/errors ({len(result['operator_warnings'])}):")
        for line in result["operator_warnings"][:10]:
            print("  " + line)
    if args.png:
        plot(result, args.png, args.tasks, 1 + args.extra_taskqueues)
        print(f"plot: {args.png}")
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "started_at"}
                                        | {"started_at": result["started_at"].isoformat()}, indent=1))
    return 0


def run(main) -> None:
    """Exit with ``main()``'s status: 130 on Ctrl-C or SIGTERM, 1 with one line on a ``BenchError``."""
    try:
        sys.exit(main())
    except (KeyboardInterrupt, _Interrupted):
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run(main)
