"""The workers' Prometheus metrics, from Celery's signals, correct with the prefork pool.

With prefork, tasks run in child processes that the main process forks (and replaces every
``STALK_WORKER_MAX_TASKS_PER_CHILD`` tasks), while ``task_received`` and ``task_revoked`` fire
in the main process. Counters kept in each process's memory would be lost with every child, and
one HTTP server cannot read another process's memory. So this module uses prometheus_client's
multiprocess mode: every process writes its samples to a small memory-mapped file in one
directory, and the main process's ``/metrics`` sums the files (counters and histograms of
dead children included, gauges only of live processes). The same code serves the threads and
solo pools, where there is only one process.

The directory is ``PROMETHEUS_MULTIPROC_DIR`` when it is set (wiped at start, as
prometheus_client requires); otherwise each worker makes its own under the temporary
directory and removes it at shutdown, so several workers on one machine (``stalk dev``,
tests) never add up each other's files. Either way only a temporary directory is written:
a read-only root file system is fine.

Names carry a ``stalk_worker_`` prefix, never celery-exporter's ``celery_*``, so both can run
side by side. ``connect(app)`` only connects signal handlers; nothing is created, opened or
listened on until a worker starts (``worker_init``), so importing this module and calling
``connect`` in the API or the CLI does nothing else.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery, signals
from pydantic import Field

from stalk_workers.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

PREFIX = "stalk_worker_"
# Runtime buckets from a health check (milliseconds) to the 300 s default hard time limit.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Main-process memory of which queue a received task came from, for failures reported by the
# main process (hard time limit, lost child) where Celery passes no delivery info. Bounded:
# tasks that succeed are never looked up here and simply age out.
_QUEUE_MEMORY = 10_000
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


class MetricsSettings(Settings):
    """Where a worker serves ``/metrics``: ``STALK_WORKER_METRICS_PORT`` (0 turns it off)."""

    worker_metrics_host: str = "0.0.0.0"
    # Not celery-exporter's 9808, so both can run in one pod.
    worker_metrics_port: int = Field(9818, ge=0, le=65535)


@dataclass
class _Metrics:
    received: Counter
    started: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    revoked: Counter
    runtime: Histogram
    in_flight: Gauge
    up: Gauge
    concurrency: Gauge


class _State:
    """One worker's metrics state; module-level because Celery's signals are global."""

    def __init__(self) -> None:
        self.metrics: _Metrics | None = None
        self.directory: str | None = None
        self.owns_directory = False
        self.server = None
        self.started_at: dict[str, float] = {}  # task id -> perf_counter at prerun, per process
        self.queues: OrderedDict[str, str] = OrderedDict()  # main process: task id -> queue
        self.lock = threading.Lock()


_state = _State()


def connect(app: Celery) -> None:
    """Connect the signal handlers; call once where the app is created (``create_app``)."""
    # weak=False: module functions, and Celery's default weak references are fragile.
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
    signals.task_received.connect(_on_received, weak=False)
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    signals.task_success.connect(_on_success, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)


# --- set-up, in the worker's main process -------------------------------------------------------

def _use_directory() -> str:
    """Choose and prepare the multiprocess directory; export it for the children to inherit."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):  # a previous run's samples
            os.remove(stale)
        return path
    path = tempfile.mkdtemp(prefix="stalk-worker-metrics-")
    _state.owns_directory = True
    # prometheus_client reads the directory from this variable, in every process that writes.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def create_metrics(registry=None) -> _Metrics:
    """The worker's metric objects; ``registry`` only for tests that list them (workers use files)."""
    from prometheus_client import Counter, Gauge, Histogram

    labels = ("task", "queue")

    def counter(name: str, text: str) -> Counter:
        return Counter(PREFIX + name, text, labels, registry=registry)

    return _Metrics(
        received=counter("tasks_received_total", "Tasks the worker took from the broker."),
        started=counter("tasks_started_total", "Tasks that started running."),
        succeeded=counter("tasks_succeeded_total", "Tasks that returned a result."),
        failed=counter("tasks_failed_total", "Tasks that failed for good (retries exhausted, time limit, lost process)."),
        retried=counter("tasks_retried_total", "Task runs that ended in a retry."),
        revoked=counter("tasks_revoked_total", "Tasks revoked (cancelled, terminated or expired)."),
        runtime=Histogram(PREFIX + "task_runtime_seconds", "Time a task ran, from start to end (any outcome).",
                          labels, buckets=RUNTIME_BUCKETS, registry=registry),
        # livesum: the sum over the processes that are alive, so a recycled child's count goes away.
        in_flight=Gauge(PREFIX + "tasks_in_flight", "Tasks running now.", labels, multiprocess_mode="livesum",
                        registry=registry),
        up=Gauge(PREFIX + "up", "1 while the worker consumes its queues.", ("worker", "queue"),
                 multiprocess_mode="livemax", registry=registry),
        concurrency=Gauge(PREFIX + "concurrency", "Pool processes or threads of the worker.", ("worker",),
                          multiprocess_mode="livemax", registry=registry),
    )


def _on_worker_init(sender=None, **_) -> None:
    try:
        _state.directory = _use_directory()
        from prometheus_client import values

        # prometheus_client picks multiprocess mode when it is first imported, from the variable
        # set just above (it may have been imported earlier, e.g. by a task module): pick it now.
        values.ValueClass = values.MultiProcessValue()
        _state.metrics = create_metrics()
    except Exception:  # noqa: BLE001 - metrics must never stop a worker
        log.exception("stalk: worker metrics are off: cannot set up %s", _state.directory)
        _state.metrics = None


def _on_worker_ready(sender=None, **_) -> None:
    """Serve /metrics from the main process, once the pool's processes exist."""
    m = _state.metrics
    if m is None:
        return
    consumer = sender
    worker = getattr(consumer, "hostname", None) or "unknown"
    queues = []
    try:
        queues = sorted(q.name for q in consumer.task_consumer.queues)
    except AttributeError:
        pass
    for queue in queues or ["unknown"]:
        m.up.labels(worker, queue).set(1)
    pool = getattr(getattr(consumer, "controller", None), "concurrency", None)
    if pool:
        m.concurrency.labels(worker).set(pool)

    settings = MetricsSettings()
    if settings.worker_metrics_port == 0:
        return
    _state.server = _serve(settings.worker_metrics_host, settings.worker_metrics_port, _state.directory)


def _serve(host: str, port: int, directory: str):
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    class LiveProcessCollector(MultiProcessCollector):
        def collect(self):
            _forget_dead_processes(directory)
            return super().collect()

    registry = CollectorRegistry()
    LiveProcessCollector(registry, path=directory)
    try:
        server, _thread = start_http_server(port, host, registry=registry)
    except OSError as exc:
        # Two local workers with the default port (stalk dev): the second one runs without /metrics.
        log.warning("stalk: worker metrics not served: cannot listen on %s:%d: %s", host, port, exc)
        return None
    log.info("stalk: worker metrics on http://%s:%d/metrics", host, port)
    return server


def _forget_dead_processes(directory: str) -> None:
    """Drop live-gauge files of processes that died without saying so (SIGKILL, hard time limit)."""
    from prometheus_client.multiprocess import mark_process_dead

    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _on_process_shutdown(**_) -> None:
    """A pool child exits (recycled or stopping): its live gauges stop counting."""
    if _state.metrics is not None and _state.directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid(), _state.directory)


def _on_worker_shutdown(**_) -> None:
    if _state.server is not None:
        _state.server.shutdown()
        _state.server.server_close()
        _state.server = None
    if _state.owns_directory and _state.directory:
        shutil.rmtree(_state.directory, ignore_errors=True)
    _state.metrics = None


# --- task signals (prefork: received/revoked in the main process, the rest in the children) --

def _queue_of(request, task_id: str | None = None, *, final: bool = False) -> str:
    """The queue a task came from: its delivery info, else what the main process saw on receipt."""
    delivery = getattr(request, "delivery_info", None) or {}
    if delivery.get("routing_key"):
        return delivery["routing_key"]
    task_id = task_id or getattr(request, "id", None)
    with _state.lock:
        queue = _state.queues.pop(task_id, None) if final else _state.queues.get(task_id)
    return queue or "unknown"


def _guarded(handler):
    def wrapper(*args, **kwargs):
        if _state.metrics is None:
            return
        try:
            handler(_state.metrics, *args, **kwargs)
        except Exception:  # noqa: BLE001 - metrics must never fail a task
            log.exception("stalk: could not update worker metrics (%s)", handler.__name__)

    wrapper.__name__ = handler.__name__
    return wrapper


@_guarded
def _on_received(m: _Metrics, sender=None, request=None, **_) -> None:
    queue = _queue_of(request)
    with _state.lock:
        _state.queues[request.id] = queue
        while len(_state.queues) > _QUEUE_MEMORY:
            _state.queues.popitem(last=False)
    m.received.labels(request.name, queue).inc()


@_guarded
def _on_prerun(m: _Metrics, sender=None, task_id=None, task=None, **_) -> None:
    queue = _queue_of(task.request)
    _state.started_at[task_id] = time.perf_counter()
    m.started.labels(task.name, queue).inc()
    m.in_flight.labels(task.name, queue).inc()


@_guarded
def _on_postrun(m: _Metrics, sender=None, task_id=None, task=None, **_) -> None:
    queue = _queue_of(task.request)
    started = _state.started_at.pop(task_id, None)
    if started is not None:
        m.runtime.labels(task.name, queue).observe(time.perf_counter() - started)
        m.in_flight.labels(task.name, queue).dec()


@_guarded
def _on_success(m: _Metrics, sender=None, **_) -> None:
    m.succeeded.labels(sender.name, _queue_of(sender.request)).inc()


@_guarded
def _on_failure(m: _Metrics, sender=None, task_id=None, **_) -> None:
    # Fired only when Celery gives up (a retry raises Retry instead): in the child for an
    # exception, in the main process for a hard time limit or a lost child.
    m.failed.labels(sender.name, _queue_of(sender.request, task_id, final=True)).inc()


@_guarded
def _on_retry(m: _Metrics, sender=None, request=None, **_) -> None:
    m.retried.labels(sender.name, _queue_of(request)).inc()


@_guarded
def _on_revoked(m: _Metrics, sender=None, request=None, **_) -> None:
    name = getattr(sender, "name", None) or getattr(request, "task", None) or "unknown"
    m.revoked.labels(name, _queue_of(request, final=True)).inc()
