"""The scaling policy: from one queue's measurements to a replica count and the reason for it.

Pure on purpose: no Redis, no Kubernetes, no clock. The caller passes the observation, the spec,
the queue's ``History`` and ``now``; ``decide`` returns a ``Decision`` and records this tick in the
history (its only side effect). The operator, local mode and the benchmark's simulator all call it.

The shape follows the Kubernetes HPA (pkg/controller/podautoscaler/horizontal.go): small named
steps, each returning a count, applied in a fixed order:

    recommend (load, tolerance, oldest wait) -> stabilize (windows) -> guard zero (idle, activation)
    -> release idle replicas -> keep busy workers -> limit the step -> clamp to [min, max]

``now`` must come from a clock that survives restarts (``time.time()``) when the history is
persisted, because the recorded times are compared with later ``now`` values.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from stalk_operator.defaults import TASKQUEUE_DEFAULTS as _CRD

# Like the HPA's default --horizontal-pod-autoscaler-tolerance: a load within 10 % of what the
# current replicas are meant to carry keeps them, so a queue hovering at a boundary does not churn.
TOLERANCE = 0.1
# When the oldest task has waited longer than max_wait_seconds, the load-based count is multiplied
# by how far the wait overran (2x the limit -> 2x replicas), at most by this factor. The factor
# comes from the load, not from the current replicas, so it does not compound tick after tick
# while new workers are still starting.
MAX_WAIT_SCALE_FACTOR = 2.0
# A gap between two decisions longer than this (and than both windows) means the decider was away:
# an operator restart, a Redis outage, a pause. Several missed 1 s ticks, not one slow tick.
AWAY_SECONDS = 10.0
# Under a steady (Poisson) arrival rate the tasks in flight are themselves Poisson distributed (an
# M/G/inf queue): they stray about sqrt(load) from their mean. Replicas beyond what load + this
# many sqrt(load) needs are more than the load's own noise asks for again within seconds: what a
# burst left behind, not a steady load dipping. Only those are released before the window (3:
# measured, docs/benchmarks.md "The release's frontier"; 0 releases down to the recommendation).
LOAD_NOISE_SIGMAS = 3.0

# Reasons, in CamelCase for Events and the status' lastDecision.
PAUSED = "Paused"
STAY_AT_ZERO = "StayAtZero"
SCALE_UP_FOR_BACKLOG = "ScaleUpForBacklog"
SCALE_UP_FOR_WAIT = "ScaleUpForWait"
SCALE_DOWN_FOR_LOAD = "ScaleDownForLoad"
SCALE_DOWN_IDLE = "ScaleDownIdle"
STABILIZING_SCALE_DOWN = "StabilizingScaleDown"
STABILIZING_SCALE_UP = "StabilizingScaleUp"
WAITING_FOR_IDLE = "WaitingForIdle"
KEEPING_BUSY_WORKERS = "KeepingBusyWorkers"
RELEASING_IDLE_REPLICAS = "ReleasingIdleReplicas"
SCALE_STEP_LIMITED = "ScaleStepLimited"
AT_MAX_REPLICAS = "AtMaxReplicas"
AT_MIN_REPLICAS = "AtMinReplicas"
STEADY = "Steady"


@dataclass(frozen=True)
class Behavior:
    stabilization_seconds: float
    max_step: int | None = None  # most replicas added/removed per decision; None = unlimited


@dataclass(frozen=True)
class ScalingSpec:
    """A TaskQueue's scaling fields; the defaults are the CRD's (``defaults.py``)."""

    min_replicas: int = _CRD["minReplicas"]
    max_replicas: int = 10  # required in the CRD: this default only serves local mode and tests
    tasks_per_replica: int = _CRD["tasksPerReplica"]
    activation_tasks: int = _CRD["activationTasks"]  # below (<=) this much work a queue at zero stays at zero
    max_wait_seconds: float | None = None
    scale_up: Behavior = Behavior(stabilization_seconds=_CRD["scaleUp.stabilizationSeconds"])
    scale_down: Behavior = Behavior(stabilization_seconds=_CRD["scaleDown.stabilizationSeconds"])
    # Spare replicas (beyond this tick's noise band, ``noise_band``), idle, for this long go before the window.
    idle_replica_seconds: float = _CRD["scaleDown.idleReplicaSeconds"]
    idle_seconds_before_zero: float = _CRD["idleSecondsBeforeZero"]
    paused: bool = _CRD["paused"]

    def __post_init__(self):
        # The one value decide() divides by; the CRD's schema already rejects it below 1.
        if self.tasks_per_replica < 1:
            raise ValueError(f"tasks_per_replica must be at least 1, not {self.tasks_per_replica}")


@dataclass(frozen=True)
class Observation:
    waiting: int
    in_flight: int
    oldest_wait_seconds: float | None
    current_replicas: int
    # Replicas running at least one task now, when the caller knows (Celery's inspect().active()):
    # a scale-down then never goes below it, so with idle-first removal no busy worker is stopped.
    busy_replicas: int | None = None


@dataclass
class History:
    """What ``decide`` needs from earlier ticks of one queue; JSON-safe through to_dict/from_dict.

    ``recommendations`` are (time, replicas) pairs from ``recommend``, kept as long as the longer
    stabilization window needs them, and only those that can still be a window's highest or lowest
    (see ``_compact``): at 1 s ticks a steady queue keeps one or two pairs, not one per second of
    the window. An empty history starts with the current replicas.
    ``idle_since`` is when waiting + in-flight last became zero (None while there is work).
    """

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    idle_since: float | None = None
    # When decide() last ran for this queue; None before the first decision.
    last_decision_at: float | None = None
    # Since when the current replicas have been above every tick's noise band (None: not now).
    # Not saved in status: a decider that lost it waits idle_replica_seconds again, which costs a
    # few seconds of spare replicas, never a task.
    spare_since: float | None = field(default=None, compare=False)
    # Read back by a decider that did not write it (a restart, a new leader): not saved.
    resumed: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        """The history as the status keeps it (``policyHistory``): named fields and RFC 3339 times
        (UTC, to the millisecond), so that ``kubectl describe`` shows when, not Unix seconds."""
        saved: dict = {"recommendations": [{"time": rfc3339(t), "replicas": r} for t, r in self.recommendations]}
        if self.idle_since is not None:
            saved["idleSince"] = rfc3339(self.idle_since)
        if self.last_decision_at is not None:
            saved["lastDecisionAt"] = rfc3339(self.last_decision_at)
        return saved

    @classmethod
    def from_dict(cls, data: dict | None) -> History:
        """Read what ``to_dict`` wrote, or what releases before it wrote (``[[unix time, replicas], ...]``
        and Unix times); ``ValueError`` for anything else."""
        data = data or {}
        try:
            return cls(
                recommendations=[_recommendation(item) for item in data.get("recommendations") or []],
                idle_since=_saved_time(data.get("idleSince")),
                last_decision_at=_saved_time(data.get("lastDecisionAt")),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"unreadable policy history: {exc!r}") from exc

    @classmethod
    def resume(cls, data: dict | None) -> History:
        """The history another decider saved, to continue from (see ``decide``)."""
        history = cls.from_dict(data)
        history.resumed = True
        return history


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (Unix seconds) as RFC 3339 in UTC, to the millisecond: 2026-12-02T07:09:25.482Z."""
    # Integer arithmetic (no float rounding .482 down to .481) and the date looked up once a day:
    # a third of the time of datetime.strftime, for every recommendation of every status write.
    seconds, millis = divmod(round(timestamp * 1000), 1000)
    day, second = divmod(seconds, 86400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{_utc_date(day)}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_date(days_since_epoch: int) -> str:
    return (_EPOCH + timedelta(days=days_since_epoch)).date().isoformat()


def _saved_time(value: str | float | None) -> float | None:
    """Unix seconds from an RFC 3339 time with a zone (or from a number: the format before it)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        raise ValueError(f"a time without a zone: {value!r}")
    return (when - _EPOCH) // timedelta(microseconds=1) / 1_000_000


def _recommendation(item: dict | list) -> tuple[float, int]:
    time, replicas = (item["time"], item["replicas"]) if isinstance(item, dict) else item
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise TypeError(f"not a replica count: {replicas!r}")
    return _saved_time(time), replicas


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # CamelCase word for people and Events, one of the constants above
    message: str  # one line saying why, with numbers
    # True when min/max replicas or a max_step held the count back (the ScalingLimited condition).
    limited: bool = False
    # True when idle replicas could be released if the busy ones were known (Observation.busy_replicas
    # was None): the caller asks the workers and decides again (reconcile.replan).
    wants_busy_replicas: bool = False


def decide(observation: Observation, spec: ScalingSpec, history: History, now: float) -> Decision:
    """Return how many replicas the queue should have now, and why; record this tick in ``history``."""
    obs = observation
    current = obs.current_replicas
    load = obs.waiting + obs.in_flight
    if load:
        history.idle_since = None
    elif history.idle_since is None:
        history.idle_since = now

    if spec.paused:
        # Paused: the replicas are left to people.
        return Decision(current, PAUSED, f"scaling is paused; keeping {current} replicas")

    away = _was_away(history, now, spec)
    history.last_decision_at = now
    _forget_old(history, now, spec)
    if (away and not history.recommendations) or history.resumed:
        # A fresh history (new queue, or a decider that lost or outlived its status) counts the
        # current replicas as a first recommendation: nobody is scaled away before one window.
        # Not so when the windows are merely shorter than the poll interval: then there is none.
        # So does a resumed one: the decider before may have scaled and died before saving why.
        history.recommendations.append((now, current))
        history.resumed = False
    recommended, reason = recommend(obs, spec)
    replicas = stabilize(recommended, current, history, now, spec)
    history.recommendations.append((now, recommended))
    if replicas > recommended:
        reason = STABILIZING_SCALE_DOWN
    elif replicas < recommended:
        reason = STABILIZING_SCALE_UP

    guarded, guard_reason = guard_zero(replicas, current, load, spec, history, now)
    if guard_reason:
        replicas, reason = guarded, guard_reason

    released, wants_busy = release_idle(replicas, recommended, obs, spec, history, now)
    if released < replicas:
        replicas, reason = released, RELEASING_IDLE_REPLICAS

    needed = max(ceil_div(obs.in_flight, spec.tasks_per_replica), obs.busy_replicas or 0)
    if replicas < current and replicas < needed:
        # Busy workers are not scaled away: in-flight tasks already sit in the workers we have.
        replicas, reason = min(current, needed), KEEPING_BUSY_WORKERS

    limited = False
    stepped = limit_step(replicas, current, spec)
    if stepped != replicas:
        replicas, reason, limited = stepped, SCALE_STEP_LIMITED, True

    clamped = max(spec.min_replicas, min(spec.max_replicas, replicas))
    if clamped != replicas:
        replicas, limited = clamped, True
        reason = AT_MAX_REPLICAS if clamped == spec.max_replicas else AT_MIN_REPLICAS

    if replicas == current and reason in (SCALE_UP_FOR_BACKLOG, SCALE_UP_FOR_WAIT, SCALE_DOWN_FOR_LOAD):
        reason = STEADY
    message = _message(reason, obs, spec, current, replicas, recommended, history, now)
    return Decision(replicas, reason, message, limited, wants_busy)


def recommend(obs: Observation, spec: ScalingSpec) -> tuple[int, str]:
    """Replicas the load asks for this tick, before windows and limits (the HPA's metric step)."""
    load = obs.waiting + obs.in_flight
    current = obs.current_replicas
    wanted = ceil_div(load, spec.tasks_per_replica)
    reason = SCALE_UP_FOR_BACKLOG if wanted > current else SCALE_DOWN_FOR_LOAD
    if current > 0 and load > 0 and abs(load / (current * spec.tasks_per_replica) - 1) <= TOLERANCE:
        # Within tolerance of what the current replicas carry: keep them.
        wanted, reason = current, STEADY
    if _waited_too_long(obs, spec):
        # The oldest task waited past max_wait_seconds: add replicas in proportion to the overrun.
        by_load = ceil_div(load, spec.tasks_per_replica)
        factor = min(obs.oldest_wait_seconds / spec.max_wait_seconds, MAX_WAIT_SCALE_FACTOR)
        by_wait = max(by_load + 1, math.ceil(by_load * factor))
        if by_wait > wanted:
            wanted, reason = by_wait, SCALE_UP_FOR_WAIT
    return wanted, reason


def stabilize(recommended: int, current: int, history: History, now: float, spec: ScalingSpec) -> int:
    """The HPA's stabilizeRecommendationWithBehaviors over this and the recorded recommendations.

    Scale up only to the lowest recommendation inside the scale-up window (0 s: at once), and down
    only to the highest inside the scale-down window, so one quiet tick never removes workers.
    """
    up_since = now - spec.scale_up.stabilization_seconds
    down_since = now - spec.scale_down.stabilization_seconds
    up = min([recommended, *(r for t, r in history.recommendations if t > up_since)])
    down = max([recommended, *(r for t, r in history.recommendations if t > down_since)])
    return min(max(current, up), down)


def guard_zero(replicas: int, current: int, load: int, spec: ScalingSpec, history: History,
               now: float) -> tuple[int, str | None]:
    """Rules for the step to and from zero, which windows alone do not cover."""
    if current == 0 and load <= spec.activation_tasks:
        # From zero only when the work exceeds activation_tasks.
        return 0, STAY_AT_ZERO
    if current > 0 and replicas == 0 and spec.min_replicas == 0:
        idle_for = now - history.idle_since if history.idle_since is not None else 0.0
        if idle_for < spec.idle_seconds_before_zero:
            # To zero only after idle_seconds_before_zero without any work.
            return 1, WAITING_FOR_IDLE
        return 0, SCALE_DOWN_IDLE
    return replicas, None


def release_idle(replicas: int, recommended: int, obs: Observation, spec: ScalingSpec, history: History,
                 now: float) -> tuple[int, bool]:
    """Replicas beyond the load's noise band, with nothing to do, go once that has held idle_replica_seconds.

    Drain-safe removal (idle pods first, busy ones kept) makes a wrong release cost one pod start,
    not a killed task, so spare idle replicas need not wait out the whole scale-down window. The
    noise band tells a burst draining (released within seconds) from a steady load dipping (left
    to the window: releasing those is what a steady load asks back a few seconds later, each time
    a pod start its tasks wait for). Never below the band, the recommendation, the busy replicas or
    1 (the step to zero is guard_zero's). Returns the replicas and whether a release waits only for
    the busy count (unknown: nothing is released).
    """
    current = obs.current_replicas
    band = max(recommended, noise_band(obs.waiting + obs.in_flight, spec))
    if current == 0 or band >= current:
        history.spare_since = None  # the load, with its noise, may need every replica (or there are none)
        return replicas, False
    if history.spare_since is None:
        history.spare_since = now
    if now - history.spare_since < spec.idle_replica_seconds:
        # Beyond the band, but not yet for idle_replica_seconds: the window decides.
        return replicas, False
    floor = max(band, ceil_div(obs.in_flight, spec.tasks_per_replica), 1)
    if replicas <= floor:
        return replicas, False
    if obs.busy_replicas is None:
        # Which replicas are idle is not known: release nothing, ask for the busy count.
        return replicas, True
    # Release the idle spare replicas: keep the band and every busy replica.
    return max(floor, obs.busy_replicas), False


def noise_band(load: int, spec: ScalingSpec) -> int:
    """Replicas for the load plus LOAD_NOISE_SIGMAS times its Poisson spread, sqrt(load)."""
    return ceil_div(load + math.ceil(LOAD_NOISE_SIGMAS * math.sqrt(load)), spec.tasks_per_replica)


def limit_step(replicas: int, current: int, spec: ScalingSpec) -> int:
    """At most max_step replicas added or removed per decision."""
    if replicas > current and spec.scale_up.max_step is not None:
        return min(replicas, current + spec.scale_up.max_step)
    if replicas < current and spec.scale_down.max_step is not None:
        return max(replicas, current - spec.scale_down.max_step)
    return replicas


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _waited_too_long(obs: Observation, spec: ScalingSpec) -> bool:
    return (spec.max_wait_seconds is not None and obs.waiting > 0 and obs.oldest_wait_seconds is not None
            and obs.oldest_wait_seconds > spec.max_wait_seconds)


def _was_away(history: History, now: float, spec: ScalingSpec) -> bool:
    if history.last_decision_at is None:
        return True
    keep = max(spec.scale_up.stabilization_seconds, spec.scale_down.stabilization_seconds)
    return now - history.last_decision_at > max(keep, AWAY_SECONDS)


def _forget_old(history: History, now: float, spec: ScalingSpec) -> None:
    keep = max(spec.scale_up.stabilization_seconds, spec.scale_down.stabilization_seconds)
    history.recommendations = _compact([(t, r) for t, r in history.recommendations if t > now - keep])


def _compact(recommendations: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Only the pairs that can still be the highest or the lowest of a stabilization window.

    A window is every pair newer than some time (``stabilize``), so a pair followed by one at
    least as high and one at least as low is never a window's max or min alone: whichever window
    holds it also holds those later ones. What stays is the two "staircases" a sliding-window
    max/min keeps, merged, so ``stabilize`` answers exactly as it would from every tick.
    """
    if any(a[0] > b[0] for a, b in zip(recommendations, recommendations[1:])):
        recommendations = sorted(recommendations, key=lambda pair: pair[0])  # a clock that went back
    kept: list[tuple[float, int]] = []
    highest_later, lowest_later = -math.inf, math.inf
    for t, r in reversed(recommendations):
        if r > highest_later or r < lowest_later:
            kept.append((t, r))
        highest_later, lowest_later = max(highest_later, r), min(lowest_later, r)
    kept.reverse()
    return kept


def _message(reason: str, obs: Observation, spec: ScalingSpec, current: int, replicas: int,
             recommended: int, history: History, now: float) -> str:
    work = f"{obs.waiting} waiting, {obs.in_flight} in flight"
    if reason == STAY_AT_ZERO:
        return f"{work}: not above activationTasks {spec.activation_tasks}, staying at 0"
    if reason == SCALE_UP_FOR_WAIT:
        return (f"{work}, the oldest waited {obs.oldest_wait_seconds:.0f}s > maxWaitSeconds "
                f"{spec.max_wait_seconds:g}s: {_replicas(recommended)}")
    if reason == STABILIZING_SCALE_DOWN:
        return (f"{work} needs {_replicas(recommended)}; keeping {replicas} for the "
                f"{spec.scale_down.stabilization_seconds:g}s scale-down window")
    if reason == STABILIZING_SCALE_UP:
        return (f"{work} needs {_replicas(recommended)}; {replicas} until the "
                f"{spec.scale_up.stabilization_seconds:g}s scale-up window agrees")
    if reason == WAITING_FOR_IDLE:
        idle = now - history.idle_since if history.idle_since is not None else 0.0
        return f"no work for {idle:.0f}s of idleSecondsBeforeZero {spec.idle_seconds_before_zero:g}s; keeping 1"
    if reason == SCALE_DOWN_IDLE:
        idle = now - history.idle_since if history.idle_since is not None else 0.0
        return f"no work for {idle:.0f}s (idleSecondsBeforeZero {spec.idle_seconds_before_zero:g}s)"
    if reason == KEEPING_BUSY_WORKERS:
        busy = f", {obs.busy_replicas} replicas busy" if obs.busy_replicas else ""
        return (f"{work}{busy} needs {_replicas(recommended)}; keeping {replicas} so no busy worker is "
                f"stopped")
    if reason == RELEASING_IDLE_REPLICAS:
        spare = now - history.spare_since if history.spare_since is not None else 0.0
        busy = f", {obs.busy_replicas} replicas busy" if obs.busy_replicas else ""
        band = noise_band(obs.waiting + obs.in_flight, spec)
        return (f"{work}{busy} needs {_replicas(recommended)}, {band} with its noise; idle replicas beyond "
                f"that for {spare:.0f}s (idleReplicaSeconds {spec.idle_replica_seconds:g}s): releasing to {replicas}")
    if reason == SCALE_STEP_LIMITED:
        step = spec.scale_up.max_step if replicas > current else spec.scale_down.max_step
        return f"{work} needs {_replicas(recommended)}; at most {step} added or removed per decision"
    if reason == AT_MAX_REPLICAS:
        return f"{work} needs {_replicas(recommended)}; limited to maxReplicas {spec.max_replicas}"
    if reason == AT_MIN_REPLICAS:
        return f"{work} needs {_replicas(recommended)}; kept at minReplicas {spec.min_replicas}"
    if reason == STEADY:
        return f"{work} fits {_replicas(current)} at {spec.tasks_per_replica} per replica"
    return f"{work} at {spec.tasks_per_replica} per replica needs {_replicas(recommended)}"


def _replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"
