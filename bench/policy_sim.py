"""Policy simulation: stalk's policy against an HPA + KEDA model, on synthetic traces.

Run: ``python bench/policy_sim.py [--seed N] [--trace recorded.csv ...] [--csv DIR]``. Pure Python
and deterministic for a seed; it calls the operator's own ``policy.decide``, so what is measured is
the policy that ships. A recorded trace is a CSV with a header and the columns ``arrival`` and
``duration`` (seconds) and optionally ``priority`` (0-9). ``--csv`` writes each run's per-second
replicas, waiting and in-flight counts (``<trace>-<model>.csv``) for plotting.

One worker Deployment consumes one Celery queue, simulated second by second:
- tasks arrive (Poisson, rate per trace), a share of them with a priority that kombu files in a
  sub-list (``<queue>\\x06\\x166``); workers take the highest priority first, oldest first;
- a replica has ``CONCURRENCY`` slots and can take tasks ``STARTUP_SECONDS`` after it is created;
- a replica asked to stop gets SIGTERM: Celery's warm shutdown takes no new task and finishes the
  running ones; whatever still runs after the pod's grace period is killed, and (acks_late on
  Redis) comes back only after the visibility timeout.

stalk: ``decide`` every second on waiting (every priority step) + in flight and the oldest wait;
scale-down removes idle pods first (pod-deletion-cost) and the chart's grace period outlasts the
task time limit. HPA + KEDA at their defaults: KEDA polls LLEN of the base list every 30 s (it
does 0 <-> 1, cooldown 300 s), the HPA syncs every 15 s on the same LLEN (AverageValue target,
tolerance 0.1, scale-up at most max(2x, +4) per sync, 300 s scale-down stabilization); the
ReplicaSet removes not-ready then newest pods whether busy or not; grace period 30 s.

Printed per trace: worker-seconds (pods existing, starting and draining included), p95 wait from
arrival to start, pods stopped while running a task, tasks killed mid-run; then stalk/KEDA ratios.
Not modelled: Celery prefetch (tasks reserved but not started), node provisioning, pod start-up
variance.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kombu.transport.redis import PRIORITY_STEPS

from stalk_operator.policy import History, Observation, ScalingSpec, decide

CONCURRENCY = 4
TARGET_PER_REPLICA = 5  # stalk's tasksPerReplica and KEDA's listLength (its default), the same on both
MAX_REPLICAS = 20
STARTUP_SECONDS = 10
KUBERNETES_GRACE_SECONDS = 30  # terminationGracePeriodSeconds' default
VISIBILITY_TIMEOUT_SECONDS = 3600  # kombu's default: a killed task's message comes back after it
PRIORITY_SHARE = 0.2  # tasks sent with priority 6, which kombu keeps in a sub-list KEDA does not read
TAIL_SECONDS = 900  # after the last arrival, so both models drain and scale in


@dataclass
class Task:
    arrival: float
    duration: float
    priority_step: int  # kombu's list: 0 (the base list), 3, 6 or 9
    ready_at: float = 0.0  # when it is (again) in the list
    start: float | None = None


@dataclass
class Replica:
    created: float
    ready_at: float
    running: list[tuple[Task, float]] = field(default_factory=list)  # (task, ends at)
    stop_at: float | None = None  # SIGTERM time
    exited: float | None = None


@dataclass
class Result:
    worker_seconds: float = 0.0
    p95_wait: float = 0.0
    busy_stops: int = 0
    killed_tasks: int = 0
    series: list[tuple[int, int, int, int]] = field(default_factory=list)  # (second, replicas, waiting, in flight)


class Cluster:
    """One worker Deployment and the Redis lists it consumes, advanced one second at a time."""

    def __init__(self, *, grace_seconds: float, idle_first: bool, rng: random.Random):
        self.lists: dict[int, deque[Task]] = {step: deque() for step in PRIORITY_STEPS}
        self.returning: list[Task] = []  # killed mid-run: back in the list after the visibility timeout
        self.pods: list[Replica] = []
        self.grace = grace_seconds
        self.idle_first = idle_first
        self.rng = rng
        self.busy_stops = 0
        self.killed_tasks = 0

    @property
    def replicas(self) -> int:
        return sum(1 for p in self.pods if p.stop_at is None)

    def waiting(self, *, base_list_only: bool = False) -> int:
        return len(self.lists[0]) if base_list_only else sum(len(q) for q in self.lists.values())

    def in_flight(self) -> int:
        return sum(len(p.running) for p in self.pods)

    def busy_replicas(self) -> int:
        return sum(1 for p in self.pods if p.stop_at is None and p.running)

    def oldest_wait(self, now: float) -> float | None:
        heads = [q[0].ready_at for q in self.lists.values() if q]
        return now - min(heads) if heads else None

    def enqueue(self, task: Task) -> None:
        self.lists[task.priority_step].append(task)

    def step(self, now: float) -> None:
        for pod in self.pods:
            pod.running = [(t, end) for t, end in pod.running if end > now]
            if pod.stop_at is not None and pod.exited is None:
                if not pod.running:
                    pod.exited = now
                elif now - pod.stop_at >= self.grace:
                    for task, _ in pod.running:  # SIGKILL after the grace period
                        self.killed_tasks += 1
                        task.start, task.ready_at = None, now + VISIBILITY_TIMEOUT_SECONDS
                        self.returning.append(task)
                    pod.running, pod.exited = [], now
        for task in [t for t in self.returning if t.ready_at <= now]:
            self.returning.remove(task)
            self.enqueue(task)
        consumers = [p for p in self.pods if p.stop_at is None and p.ready_at <= now]
        self.rng.shuffle(consumers)  # whichever worker's BRPOP is answered first
        for pod in consumers:
            while len(pod.running) < CONCURRENCY and (task := self._next_task()):
                task.start = now
                pod.running.append((task, now + task.duration))

    def scale_to(self, replicas: int, now: float) -> None:
        live = [p for p in self.pods if p.stop_at is None]
        for _ in range(replicas - len(live)):
            self.pods.append(Replica(created=now, ready_at=now + STARTUP_SECONDS))
        if replicas < len(live):
            for pod in self._removal_order(live, now)[: len(live) - replicas]:
                pod.stop_at = now
                self.busy_stops += bool(pod.running)

    def worker_seconds(self, end: float) -> float:
        return sum((p.exited if p.exited is not None else end) - p.created for p in self.pods)

    def _next_task(self) -> Task | None:
        for step in sorted(self.lists):  # on Redis, priority step 0 is served first
            if self.lists[step]:
                return self.lists[step].popleft()
        return None

    def _removal_order(self, live: list[Replica], now: float) -> list[Replica]:
        # The ReplicaSet removes not-ready pods first, then the newest; with stalk's
        # pod-deletion-cost, idle pods go before busy ones.
        def rank(pod: Replica):
            busy = bool(pod.running) if self.idle_first else False
            return (busy, pod.ready_at <= now, -pod.created)

        return sorted(live, key=rank)


class StalkController:
    interval = 1  # pollSeconds' default

    def __init__(self, spec: ScalingSpec, *, knows_busy: bool = True):
        self.spec, self.history, self.knows_busy = spec, History(), knows_busy

    def act(self, cluster: Cluster, now: float) -> None:
        observation = Observation(waiting=cluster.waiting(), in_flight=cluster.in_flight(),
                                  oldest_wait_seconds=cluster.oldest_wait(now), current_replicas=cluster.replicas,
                                  busy_replicas=cluster.busy_replicas() if self.knows_busy else None)
        cluster.scale_to(decide(observation, self.spec, self.history, now).replicas, now)


class KedaHpaController:
    """KEDA's redis list scaler (activation, 0 <-> 1) in front of the HPA (1 <-> N), at their defaults."""

    interval = 15  # the HPA's --horizontal-pod-autoscaler-sync-period
    keda_polling = 30
    cooldown = 300
    down_stabilization = 300
    tolerance = 0.1

    def __init__(self):
        self.last_active = -math.inf
        self.recommendations: list[tuple[float, int]] = []

    def act(self, cluster: Cluster, now: float) -> None:
        length = cluster.waiting(base_list_only=True)  # LLEN <queue>: no priority sub-lists, nothing in flight
        if now % self.keda_polling == 0:
            if length > 0:
                self.last_active = now
                if cluster.replicas == 0:
                    cluster.scale_to(1, now)
            elif cluster.replicas > 0 and now - self.last_active >= self.cooldown:
                cluster.scale_to(0, now)
                self.recommendations.clear()
        current = cluster.replicas
        if current == 0:
            return  # the HPA does not act on a Deployment at zero
        desired = math.ceil(length / TARGET_PER_REPLICA)
        if abs(length / (TARGET_PER_REPLICA * current) - 1) <= self.tolerance:
            desired = current
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - self.down_stabilization]
        self.recommendations.append((now, desired))
        desired = min(current if desired < current else desired, max(r for _, r in self.recommendations))
        desired = min(desired, max(2 * current, current + 4), MAX_REPLICAS)
        cluster.scale_to(max(desired, 1), now)


def simulate(tasks: list[Task], make_controller: Callable[[], object], *, grace: float, idle_first: bool,
             seed: int) -> Result:
    cluster = Cluster(grace_seconds=grace, idle_first=idle_first, rng=random.Random(seed))
    controller = make_controller()
    end = int(max(t.arrival for t in tasks)) + TAIL_SECONDS
    pending = deque(sorted(tasks, key=lambda t: t.arrival))
    series = []
    for now in range(end):
        while pending and pending[0].arrival < now + 1:
            task = pending.popleft()
            task.ready_at = task.arrival
            cluster.enqueue(task)
        cluster.step(now)
        if now % controller.interval == 0:
            controller.act(cluster, now)
        series.append((now, cluster.replicas, cluster.waiting(), cluster.in_flight()))
    waits = sorted((t.start if t.start is not None else end) - t.arrival for t in tasks)
    return Result(worker_seconds=cluster.worker_seconds(end), p95_wait=waits[int(0.95 * (len(waits) - 1))],
                  busy_stops=cluster.busy_stops, killed_tasks=cluster.killed_tasks, series=series)


# --- traces: (arrival rate per second as a function of time, duration in seconds) -------------

def poisson_trace(rate: Callable[[float], float], seconds: int, rng: random.Random,
                  bursts: dict[int, int] | None = None) -> list[Task]:
    def task(at: float) -> Task:
        # Mostly short tasks with a long tail (median ~4 s, a few over a minute).
        duration = min(rng.lognormvariate(math.log(4), 0.9), 300)
        return Task(arrival=at, duration=duration, priority_step=6 if rng.random() < PRIORITY_SHARE else 0)

    tasks = []
    for second in range(seconds):
        arrivals = _poisson(rate(second), rng) + (bursts or {}).get(second, 0)
        tasks += [task(second + rng.random()) for _ in range(arrivals)]
    return tasks


def _poisson(mean: float, rng: random.Random) -> int:
    # Knuth's method; means here are small (a few per second).
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def recorded_trace(path: Path) -> list[Task]:
    with path.open(newline="") as f:
        return [Task(arrival=float(row["arrival"]), duration=float(row["duration"]),
                     priority_step=_step(int(row.get("priority") or 0)))
                for row in csv.DictReader(f)]


def traces(rng: random.Random) -> dict[str, list[Task]]:
    hour = 3600
    return {
        "steady": poisson_trace(lambda t: 2.0, hour, rng),
        "bursty": poisson_trace(lambda t: 0.2, hour, rng,
                                bursts={s: 30 for start in range(300, hour, 600) for s in range(start, start + 10)}),
        # A day compressed into two hours: near idle at night, ~4 tasks/s at the peak.
        "diurnal": poisson_trace(lambda t: 0.05 + 3.95 * (1 - math.cos(2 * math.pi * t / (2 * hour))) / 2,
                                 2 * hour, rng),
        "spike": poisson_trace(lambda t: 0.3, hour, rng, bursts={1200 + s: 100 for s in range(15)}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", type=Path, action="append", default=[], help="a recorded trace (CSV)")
    parser.add_argument("--csv", type=Path, help="write per-second series here")
    args = parser.parse_args(argv)
    all_traces = traces(random.Random(args.seed)) | {path.stem: recorded_trace(path) for path in args.trace}

    spec = ScalingSpec(min_replicas=0, max_replicas=MAX_REPLICAS, tasks_per_replica=TARGET_PER_REPLICA)
    print(f"{CONCURRENCY} slots per replica, {TARGET_PER_REPLICA} tasks per replica target, max {MAX_REPLICAS} "
          f"replicas, {STARTUP_SECONDS}s start-up, {PRIORITY_SHARE:.0%} of tasks in a priority sub-list, seed {args.seed}")
    header = (f"{'trace':<8} {'tasks':>6} | {'worker-s stalk':>14} {'KEDA':>8} {'ratio':>6} | "
              f"{'p95 wait stalk':>14} {'KEDA':>7} {'ratio':>6} | {'busy stops':>10} {'(a)':>4} {'KEDA':>5} | "
              f"{'killed':>6} {'KEDA':>5}")
    print(header)
    print("-" * len(header))
    for name, tasks in all_traces.items():
        stalk = simulate(_fresh(tasks), lambda: StalkController(spec), grace=math.inf, idle_first=True, seed=args.seed)
        # (a): the same policy told nothing about busy replicas; only pod-deletion-cost protects them.
        blind = simulate(_fresh(tasks), lambda: StalkController(spec, knows_busy=False), grace=math.inf,
                         idle_first=True, seed=args.seed)
        keda = simulate(_fresh(tasks), KedaHpaController, grace=KUBERNETES_GRACE_SECONDS, idle_first=False,
                        seed=args.seed)
        print(f"{name:<8} {len(tasks):>6} | {stalk.worker_seconds:>14.0f} {keda.worker_seconds:>8.0f} "
              f"{_ratio(stalk.worker_seconds, keda.worker_seconds):>6} | {stalk.p95_wait:>13.1f}s "
              f"{keda.p95_wait:>6.1f}s {_ratio(stalk.p95_wait, keda.p95_wait):>6} | {stalk.busy_stops:>10} "
              f"{blind.busy_stops:>4} {keda.busy_stops:>5} | {stalk.killed_tasks:>6} {keda.killed_tasks:>5}")
        if args.csv:
            _write_series(args.csv, name, {"stalk": stalk, "keda": keda})
    print("ratio = stalk / KEDA (below 1: stalk uses less / waits less); busy stops: pods sent SIGTERM while "
          "running a task, (a) = stalk without Observation.busy_replicas; killed: tasks cut off by the grace period")
    return 0


def _write_series(directory: Path, trace: str, results: dict[str, Result]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for model, result in results.items():
        with (directory / f"{trace}-{model}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["second", "replicas", "waiting", "in_flight"])
            writer.writerows(result.series)


def _step(priority: int) -> int:
    # kombu's Channel.priority(): the highest step not above the priority.
    return PRIORITY_STEPS[bisect.bisect(PRIORITY_STEPS, priority) - 1]


def _fresh(tasks: list[Task]) -> list[Task]:
    return [Task(arrival=t.arrival, duration=t.duration, priority_step=t.priority_step) for t in tasks]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else ("1.00" if not a else "inf")


if __name__ == "__main__":
    sys.exit(main())
