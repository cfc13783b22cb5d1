"""What a tick says about each TaskQueue: its desired status (handed to the writer) and its metrics.

The tick never waits for a status write: ``Reporter.write_if_due`` hands it to ``StatusWriter`` only
when ``status.write_due`` says the status needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stalk_operator import status as st
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.policy import Decision
from stalk_operator.state import Target, TaskQueueState
from stalk_operator.writer import StatusWriter
from stalk_workers.queue_reader import QueueStats


@dataclass(frozen=True, slots=True)
class Measured:
    """One TaskQueue's share of a tick's read."""

    stats: QueueStats
    now: float
    metrics: st.Condition  # MetricsAvailable, as read

    @property
    def status_fields(self) -> tuple[int, int, int, int]:
        """The status' measured fields (status.MEASURED), in order."""
        return (self.stats.waiting, self.stats.in_flight, self.stats.scheduled,
                int(self.stats.oldest_wait_seconds or 0))


class Reporter:
    def __init__(self, writer: StatusWriter, metrics: OperatorMetrics, *, status_interval_seconds: float) -> None:
        self.writer = writer
        self.metrics = metrics
        self._interval = status_interval_seconds

    def measured(self, state: TaskQueueState, measured: Measured) -> None:
        """The TaskQueue's Prometheus series for what was read (looked up once per queue name)."""
        cfg, stats = state.config, measured.stats
        series = state.series
        if series is None or series.labels != (cfg.namespace, cfg.name, cfg.queue):
            if series is not None:  # the queue name changed: drop the old series
                self.metrics.forget(*series.labels)
            series = state.series = self.metrics.for_taskqueue(cfg.namespace, cfg.name, cfg.queue)
        series.set_measured(stats.waiting, stats.in_flight, stats.scheduled, stats.oldest_wait_seconds or 0,
                            cfg.scaling.min_replicas, cfg.scaling.max_replicas)

    def decision(self, state: TaskQueueState, target: Target, measured: Measured, decision: Decision,
                 replicas: int) -> None:
        """Measured and scaling: Ready, the decision, and the replicas as they are now."""
        cfg = state.config
        state.fault = None  # it scales again: a fault from now on is a new one
        state.series.set_replicas(decision.replicas, replicas)
        limited, reason, message = st.scaling_limited(decision)
        self.write_if_due(state, st.DesiredStatus(
            generation=cfg.generation,
            conditions=(measured.metrics,
                        st.Condition(st.READY, True, "Scaling", f"scaling {cfg.target.kind} {cfg.target.name}"),
                        st.Condition(st.SCALING_LIMITED, limited, reason, message)),
            measured=measured.status_fields,
            last_decision=f"{decision.reason}: {decision.message}",
            replicas=(replicas, target.ready_replicas, decision.replicas),
            last_scale_time=state.last_scale_time,
            history=True,
        ), measured.now)

    def problem(self, state: TaskQueueState, measured: Measured, reason: str, message: str,
                last_decision: str) -> None:
        """Measured, but not scaling: Ready is False for ``reason``."""
        self.write_if_due(state, st.DesiredStatus(
            generation=state.config.generation,
            conditions=(measured.metrics, st.Condition(st.READY, False, reason, message)),
            measured=measured.status_fields, last_decision=last_decision,
        ), measured.now)

    def conditions(self, state: TaskQueueState, now: float, *conditions: st.Condition) -> None:
        """Nothing measured: only these conditions (Redis unreadable, broker Secret missing)."""
        self.write_if_due(state, st.DesiredStatus(state.config.generation, conditions), now)

    def write_if_due(self, state: TaskQueueState, desired: st.DesiredStatus, now: float) -> None:
        """Hand ``desired`` to the status writer if the status needs it (``status.write_due``)."""
        if state.pending is not None and state.pending[0] == desired:
            return
        due = st.write_due(state.desired_written, desired,
                           measurements_due=now - state.status_written_at >= self._interval)
        if due:
            self.writer.submit(state, desired, now, urgent=due is st.Due.URGENT)
