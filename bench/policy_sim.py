"""Policy simulation: stalk's policy against an HPA + KEDA model, on synthetic and recorded traces.

Run: ``python bench/policy_sim.py [--seeds 20 | --seed N] [--trace recorded.csv ...] [--csv DIR]``.
Pure Python and deterministic for a seed; it calls the operator's own ``policy.decide``, so what is
measured is the policy that ships. One seed is one draw of every synthetic trace, so by default it
runs seeds 1..20 and reports per trace how many seeds meet the target, the median and the worst
worker-seconds ratio, and every run that does not meet it with what explains it (p95 wait of the
priority tasks, mean backlog). A recorded trace is a CSV with a header and the columns ``arrival``
and ``duration`` (seconds) and optionally ``priority`` (0-9); its arrivals are the same under every
seed. Without ``--trace`` every ``bench/traces/*.csv`` is run (``bench/traces/record.py`` records
one from a real run: a private Redis and a real Celery worker). ``--csv DIR`` writes ``seeds.csv``
(one row per trace, seed and model) and, with ``--seed``, each run's per-second replicas, waiting
and in-flight counts (``<trace>-<model>.csv``) for plotting. Sensitivity: ``--priority-share 0``
sends every task to the base list, the one KEDA reads; ``--tasks-per-replica`` and
``--scale-down-seconds``, ``--idle-seconds-before-zero`` and ``--idle-replica-seconds`` change stalk's side only (KEDA and the
reactive baseline keep theirs).

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
ReplicaSet removes not-ready then newest pods whether busy or not; grace period 30 s. The plain
reactive baseline (issue 16): ``ceil((waiting + in flight) / tasksPerReplica)`` every second, the
highest of the last 30 s, never below the busy replicas, with stalk's drain-safe idle-first removal.
The floor: total task-seconds / slots per pod, every slot busy while a pod exists.

Measured per run: worker-seconds (pods existing, starting and draining included), p95 and mean wait
from arrival to start, pods stopped while running a task, tasks killed mid-run, scale events (changes
of the replica count asked for). Two tables: issue 5's stalk against HPA+KEDA, and issue 16's every
model against the reactive baseline, HPA+KEDA and the floor. The target is met in a
run when stalk spends fewer worker-seconds at an equal or better p95 wait and stops no busy pod.
Not modelled: Celery prefetch (tasks reserved but not started), node provisioning, pod start-up
variance.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kombu.transport.redis import PRIORITY_STEPS

from stalk_operator.policy import Behavior, History, Observation, ScalingSpec, decide

CONCURRENCY = 4
TARGET_PER_REPLICA = 5  # stalk's tasksPerReplica and KEDA's listLength (its default), the same on both
MAX_REPLICAS = 20
STARTUP_SECONDS = 10
KUBERNETES_GRACE_SECONDS = 30  # terminationGracePeriodSeconds' default
VISIBILITY_TIMEOUT_SECONDS = 3600  # kombu's default: a killed task's message comes back after it
PRIORITY_SHARE = 0.2  # tasks sent with priority 6, which kombu keeps in a sub-list KEDA does not read
TAIL_SECONDS = 900  # after the last arrival, so both models drain and scale in
RECORDED = sorted((Path(__file__).resolve().parent / "traces").glob("*.csv"))  # see bench/traces/record.py


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
    mean_wait: float = 0.0
    p95_wait_sublists: float = 0.0  # of the tasks kombu keeps in priority sub-lists (KEDA does not read them)
    mean_waiting: float = 0.0  # tasks waiting, averaged over the run: the backlog a model lets stand
    pods_started: int = 0  # each one a pod start-up paid for (churn)
    scale_events: int = 0  # changes of the replica count asked for (churn, as a Deployment's events show it)
    hours: float = 1.0  # simulated time, for scale events per hour
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
        self.scale_events = 0

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
        self.scale_events += replicas != len(live)
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


class ReactiveController:
    """The plain reactive baseline of issue 16: what a few lines of controller code would do.

    Every second it wants ``ceil((waiting + in flight) / tasksPerReplica)`` replicas, asks for the
    highest of those over the last ``window`` seconds, and never goes below the replicas running a
    task; with idle-first removal (pod-deletion-cost) only idle workers are ever stopped. No
    tolerance, no idle time before zero, no activation threshold.
    """

    interval = 1

    def __init__(self, tasks_per_replica: int = TARGET_PER_REPLICA, window: float = 30):
        self.tasks_per_replica, self.window = tasks_per_replica, window
        self.wanted: deque[tuple[float, int]] = deque()

    def act(self, cluster: Cluster, now: float) -> None:
        self.wanted.append((now, math.ceil((cluster.waiting() + cluster.in_flight()) / self.tasks_per_replica)))
        while self.wanted[0][0] <= now - self.window:
            self.wanted.popleft()
        highest = max(r for _, r in self.wanted)
        cluster.scale_to(min(MAX_REPLICAS, max(highest, cluster.busy_replicas())), now)


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
    # A task that arrives within the second it is taken waited 0 (the clock here is whole seconds).
    waits = [max(0.0, (t.start if t.start is not None else end) - t.arrival) for t in tasks]
    return Result(worker_seconds=cluster.worker_seconds(end), p95_wait=_p95(waits), pods_started=len(cluster.pods),
                  mean_wait=statistics.fmean(waits), scale_events=cluster.scale_events, hours=end / 3600,
                  p95_wait_sublists=_p95([w for t, w in zip(tasks, waits) if t.priority_step]),
                  mean_waiting=sum(waiting for _, _, waiting, _ in series) / len(series),
                  busy_stops=cluster.busy_stops, killed_tasks=cluster.killed_tasks, series=series)


def floor_worker_seconds(tasks: list[Task]) -> float:
    """The physical floor: every task slot busy while a pod exists (no start-up, no idle slot)."""
    return sum(t.duration for t in tasks) / CONCURRENCY


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0


# --- traces: (arrival rate per second as a function of time, duration in seconds) -------------

def short_task_seconds(rng: random.Random) -> float:
    # Mostly short tasks with a long tail (median ~4 s, a few over a minute).
    return min(rng.lognormvariate(math.log(4), 0.9), 300)


def long_task_seconds(rng: random.Random) -> float:
    # Reports, exports, model runs: 1 to 5 minutes each.
    return rng.uniform(60, 300)


def poisson_trace(rate: Callable[[float], float], seconds: int, rng: random.Random,
                  bursts: dict[int, int] | None = None, priority_share: float = PRIORITY_SHARE,
                  duration: Callable[[random.Random], float] = short_task_seconds) -> list[Task]:
    def task(at: float) -> Task:
        return Task(arrival=at, duration=duration(rng), priority_step=6 if rng.random() < priority_share else 0)

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


def traces(rng: random.Random, priority_share: float = PRIORITY_SHARE) -> dict[str, list[Task]]:
    hour, share = 3600, priority_share
    return {
        "steady": poisson_trace(lambda t: 2.0, hour, rng, priority_share=share),
        "bursty": poisson_trace(lambda t: 0.2, hour, rng, priority_share=share,
                                bursts={s: 30 for start in range(300, hour, 600) for s in range(start, start + 10)}),
        # A day compressed into two hours: near idle at night, ~4 tasks/s at the peak.
        "diurnal": poisson_trace(lambda t: 0.05 + 3.95 * (1 - math.cos(2 * math.pi * t / (2 * hour))) / 2,
                                 2 * hour, rng, priority_share=share),
        "spike": poisson_trace(lambda t: 0.3, hour, rng, priority_share=share,
                               bursts={1200 + s: 100 for s in range(15)}),
        # Long tasks (1-5 min) in waves: every 20 minutes ~60 arrive over 2 minutes, a trickle between.
        "long": poisson_trace(lambda t: 0.5 if t % 1200 < 120 else 0.005, 2 * hour, rng, priority_share=share,
                              duration=long_task_seconds),
    }


# --- comparing the two models ---------------------------------------------------------------

MET = "met"
# HPA+KEDA spent fewer worker-seconds, but its p95 wait was longer: the saving is the backlog it let stand.
KEDA_CHEAPER_BY_WAITING = "HPA+KEDA cheaper by waiting"
MISSED = "missed"


@dataclass
class Comparison:
    trace: str
    seed: int
    tasks: int
    stalk: Result
    blind: Result  # stalk's policy told nothing about busy replicas: only pod-deletion-cost protects them
    keda: Result
    reactive: Result  # issue 16's plain reactive baseline, drain-safe like stalk
    floor: float  # worker-seconds if every slot were busy while a pod exists

    @property
    def worker_ratio(self) -> float:
        return self.stalk.worker_seconds / self.keda.worker_seconds

    @property
    def wait_ratio(self) -> float:
        return self.stalk.p95_wait / self.keda.p95_wait if self.keda.p95_wait else math.inf

    @property
    def verdict(self) -> str:
        if self.stalk.busy_stops or self.stalk.killed_tasks:
            return MISSED
        if self.stalk.worker_seconds < self.keda.worker_seconds and self.stalk.p95_wait <= self.keda.p95_wait:
            return MET
        return KEDA_CHEAPER_BY_WAITING if self.stalk.p95_wait < self.keda.p95_wait else MISSED


def compare(trace: str, tasks: list[Task], spec: ScalingSpec, seed: int) -> Comparison:
    """Both models (and stalk without the busy count) on copies of one trace, with one seed."""
    def run(make_controller, grace: float, idle_first: bool) -> Result:
        return simulate(_fresh(tasks), make_controller, grace=grace, idle_first=idle_first, seed=seed)

    return Comparison(trace=trace, seed=seed, tasks=len(tasks),
                      stalk=run(lambda: StalkController(spec), math.inf, True),
                      blind=run(lambda: StalkController(spec, knows_busy=False), math.inf, True),
                      keda=run(KedaHpaController, KUBERNETES_GRACE_SECONDS, False),
                      reactive=run(ReactiveController, math.inf, True), floor=floor_worker_seconds(tasks))


# Issue 16's targets for stalk, per run: against the reactive baseline, against HPA+KEDA, churn.
REACTIVE_WORKER_TARGET = 0.9  # at most this share of the reactive baseline's worker-seconds ...
REACTIVE_WAIT_SLACK_SECONDS = 1.0  # ... at a p95 wait at most this much longer


def economy_targets(c: Comparison) -> dict[str, bool]:
    s, r, k = c.stalk, c.reactive, c.keda
    return {"vs reactive": s.worker_seconds <= REACTIVE_WORKER_TARGET * r.worker_seconds
            and s.p95_wait <= r.p95_wait + REACTIVE_WAIT_SLACK_SECONDS,
            "vs KEDA": s.worker_seconds <= k.worker_seconds and s.p95_wait < k.p95_wait,
            "no busy stop": not s.busy_stops and not s.killed_tasks,
            "churn": s.scale_events <= r.scale_events}


def sweep(seeds: range, *, recorded: dict[str, list[Task]] | None = None, priority_share: float = PRIORITY_SHARE,
          scale_down_seconds: float | None = None, tasks_per_replica: int = TARGET_PER_REPLICA,
          idle_seconds_before_zero: float | None = None,
          idle_replica_seconds: float | None = None) -> list[Comparison]:
    """Every trace under every seed; a recorded trace keeps its arrivals, the seed only orders the workers."""
    spec = ScalingSpec(min_replicas=0, max_replicas=MAX_REPLICAS, tasks_per_replica=tasks_per_replica)
    if scale_down_seconds is not None:
        spec = replace(spec, scale_down=Behavior(scale_down_seconds))
    if idle_seconds_before_zero is not None:
        spec = replace(spec, idle_seconds_before_zero=idle_seconds_before_zero)
    if idle_replica_seconds is not None:
        spec = replace(spec, idle_replica_seconds=idle_replica_seconds)
    return [compare(name, tasks, spec, seed)
            for seed in seeds
            for name, tasks in (traces(random.Random(seed), priority_share) | (recorded or {})).items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="run seeds 1..N and summarize per trace (default 20)")
    parser.add_argument("--seed", type=int, help="run this one seed instead (and write its per-second series)")
    parser.add_argument("--trace", type=Path, action="append", default=[],
                        help="a recorded trace (CSV); default: every bench/traces/*.csv")
    parser.add_argument("--priority-share", type=float, default=PRIORITY_SHARE,
                        help=f"share of tasks sent with priority 6 (default {PRIORITY_SHARE})")
    parser.add_argument("--tasks-per-replica", type=int, default=TARGET_PER_REPLICA,
                        help=f"stalk's tasksPerReplica (default {TARGET_PER_REPLICA}, KEDA's listLength stays "
                             f"{TARGET_PER_REPLICA})")
    parser.add_argument("--scale-down-seconds", type=float,
                        help="stalk's scale-down stabilization window (default: the TaskQueue default)")
    parser.add_argument("--idle-seconds-before-zero", type=float,
                        help="stalk's idle time before zero replicas (default: the TaskQueue default)")
    parser.add_argument("--idle-replica-seconds", type=float,
                        help="how long stalk's spare idle replicas wait before they are released "
                             "(scaleDown.idleReplicaSeconds; default: the TaskQueue default; 3600: never)")
    parser.add_argument("--csv", type=Path, help="write per-second series (--seed) or one row per seed here")
    parser.add_argument("--strict", action="store_true", help="exit with status 2 when the target is missed")
    args = parser.parse_args(argv)
    recorded = {path.stem: recorded_trace(path) for path in args.trace or RECORDED}
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else range(1, args.seeds + 1)
    print(f"{CONCURRENCY} slots per replica, {TARGET_PER_REPLICA} tasks per replica target, max {MAX_REPLICAS} "
          f"replicas, {STARTUP_SECONDS}s start-up, {args.priority_share:.0%} of tasks in a priority sub-list, "
          f"seed{'s' if len(seeds) > 1 else ''} {_span(seeds)}")
    comparisons = sweep(seeds, recorded=recorded, priority_share=args.priority_share,
                        scale_down_seconds=args.scale_down_seconds, tasks_per_replica=args.tasks_per_replica,
                        idle_seconds_before_zero=args.idle_seconds_before_zero,
                        idle_replica_seconds=args.idle_replica_seconds)
    print_summary(comparisons)
    print()
    print_economy(comparisons)
    if args.csv:
        _write_seeds(args.csv / "seeds.csv", comparisons)
        if args.seed is not None:
            for c in comparisons:
                _write_series(args.csv, c.trace, {"stalk": c.stalk, "keda": c.keda, "reactive": c.reactive})
    missed = [c for c in comparisons if c.verdict != MET]
    print(f"target (fewer worker-seconds at an equal or better p95 wait, no busy worker stopped): "
          f"{'met' if not missed else 'missed'}; met in {len(comparisons) - len(missed)} of {len(comparisons)} runs")
    return 2 if missed and args.strict else 0


def print_summary(comparisons: list[Comparison]) -> None:
    width = max(8, *(len(c.trace) for c in comparisons))
    _print_header(f"{'trace':<{width}} {'seeds':>5} {'met':>4} {'by wait':>7} {'missed':>6} | {'worker-s stalk':>14} "
                  f"{'KEDA':>6} {'ratio':>5} {'worst':>5} {'seed':>4} | {'p95 wait stalk':>14} {'KEDA':>6} "
                  f"{'ratio':>5} {'worst':>5} | {'pods started':>12} {'KEDA':>5} | "
                  f"{'busy stops':>10} {'(a)':>4} {'KEDA':>5} | "
                  f"{'killed':>6} {'KEDA':>5}")
    for trace, runs in by_trace(comparisons).items():
        verdicts = [c.verdict for c in runs]
        worst = max(runs, key=lambda c: c.worker_ratio)
        print(f"{trace:<{width}} {len(runs):>5} {verdicts.count(MET):>4} {verdicts.count(KEDA_CHEAPER_BY_WAITING):>7} "
              f"{verdicts.count(MISSED):>6} | {_median(c.stalk.worker_seconds for c in runs):>14.0f} "
              f"{_median(c.keda.worker_seconds for c in runs):>6.0f} {_median(c.worker_ratio for c in runs):>5.2f} "
              f"{worst.worker_ratio:>5.2f} {worst.seed:>4} | {_median(c.stalk.p95_wait for c in runs):>13.1f}s "
              f"{_median(c.keda.p95_wait for c in runs):>5.1f}s {_median(c.wait_ratio for c in runs):>5.2f} "
              f"{max(c.wait_ratio for c in runs):>5.2f} | {_median(c.stalk.pods_started for c in runs):>12.0f} "
              f"{_median(c.keda.pods_started for c in runs):>5.0f} | {_total(runs, 'stalk', 'busy_stops'):>10} "
              f"{_total(runs, 'blind', 'busy_stops'):>4} {_total(runs, 'keda', 'busy_stops'):>5} | "
              f"{_total(runs, 'stalk', 'killed_tasks'):>6} {_total(runs, 'keda', 'killed_tasks'):>5}")
    print("met: fewer worker-seconds at an equal or better p95 wait; by wait: HPA+KEDA spent fewer worker-seconds "
          "but its tasks waited longer; worker-seconds, p95 waits and ratios (stalk / KEDA, below 1: stalk uses "
          "less / waits less) and pods started: medians over the seeds, worst: the highest ratio; busy stops: "
          "pods sent SIGTERM while running a task, (a) = stalk without Observation.busy_replicas; killed: tasks "
          "cut off by the grace period; both totals over the seeds")
    others = [c for c in comparisons if c.verdict != MET]
    if others:
        print("\nruns where the target is not met (KEDA's backlog: tasks waiting on average; "
              "sub-lists: p95 wait of the priority tasks KEDA does not count):")
        for c in others:
            s, k = c.stalk, c.keda
            print(f"  {c.trace:<{width}} seed {c.seed:>3}: {c.verdict}; worker-s {s.worker_seconds:.0f} vs "
                  f"{k.worker_seconds:.0f} ({c.worker_ratio:.2f}), p95 wait {s.p95_wait:.1f}s vs {k.p95_wait:.1f}s, "
                  f"sub-lists {s.p95_wait_sublists:.1f}s vs {k.p95_wait_sublists:.1f}s, "
                  f"backlog {s.mean_waiting:.1f} vs {k.mean_waiting:.1f}")


def print_economy(comparisons: list[Comparison]) -> None:
    """Issue 16's table: every model's worker-seconds against the reactive baseline, HPA+KEDA and the floor."""
    width = max(8, *(len(c.trace) for c in comparisons))
    _print_header(f"{'trace':<{width}} {'model':<8} | {'worker-s':>8} {'/react':>6} {'/KEDA':>6} {'/floor':>6} | "
                  f"{'p95 wait':>8} {'mean':>7} | {'busy':>4} {'killed':>6} | {'events/h':>8} | "
                  f"{'stalk meets (runs): vs react, vs KEDA, no busy stop, churn':<58}")
    for trace, runs in by_trace(comparisons).items():
        met = [economy_targets(c) for c in runs]
        targets = ", ".join(f"{sum(m[k] for m in met)}/{len(runs)}" for k in met[0])
        for model in ("stalk", "reactive", "keda", "floor"):
            if model == "floor":
                worker = [c.floor for c in runs]
            else:
                worker = [getattr(c, model).worker_seconds for c in runs]
            line = (f"{trace:<{width}} {MODEL_NAMES[model]:<8} | {_median(worker):>8.0f} "
                    f"{_median(w / c.reactive.worker_seconds for w, c in zip(worker, runs)):>6.2f} "
                    f"{_median(w / c.keda.worker_seconds for w, c in zip(worker, runs)):>6.2f} "
                    f"{_median(w / c.floor for w, c in zip(worker, runs)):>6.2f} | ")
            if model != "floor":
                results = [getattr(c, model) for c in runs]
                line += (f"{_median(r.p95_wait for r in results):>7.1f}s {_median(r.mean_wait for r in results):>6.1f}s"
                         f" | {sum(r.busy_stops for r in results):>4} {sum(r.killed_tasks for r in results):>6} | "
                         f"{_median(r.scale_events / r.hours for r in results):>8.0f} | ")
                line += targets if model == "stalk" else ""
            print(line.rstrip(" |"))
    print("worker-s, its ratios, waits and scale events per hour: medians over the seeds (a ratio is the median of "
          "the per-seed ratios); busy: pods sent SIGTERM while running a task, killed: tasks cut off by the grace "
          "period, totals over the seeds. reactive: replicas = ceil((waiting + in flight) / tasks per replica), the "
          "highest of the last 30 s, never below the busy replicas, idle-first removal; floor: task-seconds / "
          f"{CONCURRENCY} slots. Targets (issue 16): vs react: worker-s <= {REACTIVE_WORKER_TARGET}x at a p95 wait "
          f"<= +{REACTIVE_WAIT_SLACK_SECONDS:g}s; vs KEDA: worker-s <= and p95 wait <; churn: scale events <= "
          "reactive's")


MODEL_NAMES = {"stalk": "stalk", "reactive": "reactive", "keda": "HPA+KEDA", "floor": "floor"}


def _total(runs: list[Comparison], model: str, field: str) -> int:
    return sum(getattr(getattr(c, model), field) for c in runs)


def by_trace(comparisons: list[Comparison]) -> dict[str, list[Comparison]]:
    grouped: dict[str, list[Comparison]] = {}
    for c in comparisons:
        grouped.setdefault(c.trace, []).append(c)
    return grouped


def _print_header(header: str) -> None:
    print(header)
    print("-" * len(header))


def _write_seeds(path: Path, comparisons: list[Comparison]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trace", "seed", "tasks", "verdict", "model", "worker_seconds", "p95_wait",
                         "p95_wait_sublists", "mean_waiting", "pods_started", "busy_stops", "killed_tasks",
                         "mean_wait", "scale_events", "floor_worker_seconds"])
        for c in comparisons:
            for model, r in (("stalk", c.stalk), ("stalk_blind", c.blind), ("keda", c.keda),
                             ("reactive", c.reactive)):
                writer.writerow([c.trace, c.seed, c.tasks, c.verdict, model, round(r.worker_seconds, 1),
                                 round(r.p95_wait, 2), round(r.p95_wait_sublists, 2), round(r.mean_waiting, 2),
                                 r.pods_started, r.busy_stops, r.killed_tasks, round(r.mean_wait, 2),
                                 r.scale_events, round(c.floor, 1)])


def _median(values) -> float:
    return statistics.median(list(values))


def _span(seeds: range) -> str:
    return f"{seeds.start}..{seeds.stop - 1}" if len(seeds) > 1 else str(seeds.start)


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


if __name__ == "__main__":
    sys.exit(main())
