"""One reconcile for every place stalk scales: plan from the measurements, then act through an actuator.

``plan`` is pure (no Redis, no Kubernetes, no processes, no clock): it turns one queue's history,
``QueueStats``, spec, current replicas and ``now`` into a ``Plan``. ``apply`` carries a plan out
through an ``Actuator``, and is the only place that knows the order of the steps:

    busy workers (only for a scale-down that may stop one) -> plan again knowing them
    -> mark idle workers (so they go first) -> scale to n

The operator's actuator is ``kube_actuator.KubeActuator`` (the scale subresource and pod deletion
costs); ``stalk dev``'s is ``local_mode.LocalActuator`` (``celery worker`` processes). Both run
the same rules, and tests/operator/test_reconcile.py runs one table of them against both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol

from stalk_operator.policy import Decision, History, Observation, ScalingSpec, decide
from stalk_workers.queue_reader import QueueStats

# While a scale-down waits for busy workers, an actuator asks them again at most this often (each
# ask waits for replies); just before the scale itself, afresh unless the answer is this recent.
BUSY_RECHECK_SECONDS = 5.0
BUSY_FRESH_SECONDS = 1.0


class Actuator(Protocol):
    """What ``apply`` needs from whatever runs the workers of one queue."""

    @property
    def replicas(self) -> int:
        """The replicas there are now, known without waiting."""

    async def busy_workers(self) -> int | None:
        """How many workers run a task now; None when nobody can tell."""

    async def mark_idle(self) -> None:
        """Make the idle workers the first to go on the next scale-down."""

    async def scale_to(self, replicas: int, decision: Decision) -> bool:
        """Set the replicas; False when that failed (the replicas stay as they were)."""


@dataclass(slots=True)  # not frozen: built for every TaskQueue every tick, and frozen costs per field
class Plan:
    current: int
    decision: Decision
    observation: Observation
    # Idle workers go first on a scale-down (pod deletion costs, or which process is stopped).
    drain: bool = True
    # The history as it was before ``decide``, kept only for a scale-down that busy workers may
    # change: ``apply`` then decides this tick again from it (see ``replan``).
    history_before: History | None = None

    @property
    def scales(self) -> bool:
        """Whether carrying the plan out needs the actuator (the replicas move, or may once the
        busy workers are known: a release of idle replicas)."""
        return self.decision.replicas != self.current or self.asks_busy

    @property
    def asks_busy(self) -> bool:
        return self.history_before is not None and (self.decision.replicas < self.current
                                                    or self.decision.wants_busy_replicas)


def plan(stats: QueueStats, spec: ScalingSpec, history: History, current: int, now: float, *,
         drain: bool = True) -> Plan:
    """Decide for one queue; records this tick in ``history`` (as ``policy.decide`` does)."""
    observation = Observation(waiting=stats.waiting, in_flight=stats.in_flight,
                              oldest_wait_seconds=stats.oldest_wait_seconds, current_replicas=current)
    # Copied only where a scale-down is possible at all: most queues, most ticks, copy nothing.
    may_drain = current > 0 and drain and not spec.paused
    before = _copy(history) if may_drain else None
    decision = decide(observation, spec, history, now)
    # Kept for a scale-down, and for idle replicas the policy releases only once it knows the busy ones.
    keep = before if before is not None and (decision.replicas < current or decision.wants_busy_replicas) else None
    return Plan(current=current, decision=decision, observation=observation, drain=drain, history_before=keep)


def replan(planned: Plan, busy_replicas: int | None, spec: ScalingSpec, history: History, now: float) -> Plan:
    """The plan once the busy workers are known: busy workers are not scaled away."""
    if planned.history_before is None or busy_replicas is None:
        return planned
    if busy_replicas <= planned.decision.replicas and not planned.decision.wants_busy_replicas:
        return planned
    # Decide this tick again, from the history as it was, knowing how many workers are busy.
    _restore(history, planned.history_before)
    observation = replace(planned.observation, busy_replicas=busy_replicas)
    return replace(planned, decision=decide(observation, spec, history, now), observation=observation,
                   history_before=None)


@dataclass(frozen=True)
class Applied:
    decision: Decision  # what was decided, after busy workers were known
    replicas: int  # the replicas now: the decision's if the scale went through, else the old ones


async def apply(planned: Plan, actuator: Actuator, spec: ScalingSpec, history: History, now: float) -> Applied:
    """Carry ``planned`` out through ``actuator``."""
    if planned.asks_busy:
        planned = replan(planned, await actuator.busy_workers(), spec, history, now)
    if planned.decision.replicas == planned.current:  # nothing to do, or a release nobody could confirm
        return Applied(planned.decision, planned.current)
    if planned.decision.replicas < planned.current and planned.drain:
        await actuator.mark_idle()
    if await actuator.scale_to(planned.decision.replicas, planned.decision):
        return Applied(planned.decision, planned.decision.replicas)
    return Applied(planned.decision, planned.current)


@dataclass
class Outage:
    """A broker whose queues cannot be read: every replica stays as it is, and that is said once."""

    since: float | None = None

    def failed(self, now: float) -> bool:
        """Record a failed read; True for the first of an outage (the one to report)."""
        first = self.since is None
        if first:
            self.since = now
        return first

    def recovered(self, now: float) -> float | None:
        """Record a good read; how long the outage that it ends lasted (None: there was none)."""
        if self.since is None:
            return None
        lasted, self.since = now - self.since, None
        return lasted


def _copy(history: History) -> History:
    return replace(history, recommendations=list(history.recommendations))


def _restore(history: History, saved: History) -> None:
    # In place: the caller's History object is the one it keeps (state.history, or local mode's).
    for f in fields(History):
        setattr(history, f.name, getattr(saved, f.name))
