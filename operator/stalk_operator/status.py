"""What a TaskQueue's status should say, and which part of it needs writing. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any

from stalk_operator.policy import PAUSED, Decision

READY = "Ready"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING_LIMITED = "ScalingLimited"

# The fields DesiredStatus.measured holds, in its order; they change every tick under load, so they are
# written at most every status interval (write_due: ROUTINE).
MEASURED = ("waiting", "inFlight", "scheduled", "oldestWaitSeconds")
# status.depth is the name waiting had before: written with the same value for one release, then dropped.
DEPRECATED_SAME_AS = {"depth": "waiting"}
# Kept for restarts, not shown: written along with a shown change, never on its own.
HIDDEN = frozenset({"policyHistory"})


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None
    reason: str
    message: str


@dataclass(frozen=True)
class DesiredStatus:
    """The status one tick wants for one TaskQueue, before it is rendered: cheap to compare.

    The tick builds one per TaskQueue; the status dict (``render``) is built only when a write is due.
    """

    generation: int
    conditions: tuple[Condition, ...]
    measured: tuple[int, int, int, int] | None = None  # the MEASURED fields, in order
    last_decision: str | None = None
    replicas: tuple[int, int, int] | None = None  # replicas, readyReplicas, desiredReplicas
    last_scale_time: str | None = None
    history: bool = False  # policyHistory rides along (HIDDEN: never a reason to write)


class Due(IntEnum):
    """Whether a desired status needs writing, and how soon (false when not at all)."""

    NOT = 0
    ROUTINE = 1  # measurements, or messages whose reason stayed: at most every status interval
    URGENT = 2  # any other shown value (replicas, a condition's or a decision's reason): at once


def write_due(written: DesiredStatus | None, desired: DesiredStatus, *, measurements_due: bool) -> Due:
    """Whether ``desired`` needs writing after ``written``: the one statement of the rule.

    Shown values other than measurements and messages are urgent (``_urgent_part``); the rest is
    written only when ``measurements_due``. ``policyHistory`` is never a reason to write.
    """
    if written is None:
        return Due.URGENT
    if desired == written:
        return Due.NOT
    if _urgent_part(desired) != _urgent_part(written):
        return Due.URGENT
    return Due.ROUTINE if measurements_due else Due.NOT


def _urgent_part(desired: DesiredStatus) -> tuple[Any, ...]:
    return (desired.generation, tuple((c.type, c.status, c.reason) for c in desired.conditions),
            _reason(desired.last_decision), desired.replicas, desired.last_scale_time, desired.measured is None)


def render(desired: DesiredStatus, previous: Mapping[str, Any], now: float,
           history: dict[str, Any] | None) -> dict[str, Any]:
    """The status ``desired`` stands for, on top of ``previous`` (its conditions keep their transition times)."""
    conditions = previous.get("conditions", [])
    for c in desired.conditions:
        conditions = set_condition(conditions, c.type, c.status, c.reason, c.message, now=now,
                                   generation=desired.generation)
    out: dict[str, Any] = {"observedGeneration": desired.generation, "conditions": conditions}
    if desired.measured is not None:
        out.update(zip(MEASURED, desired.measured, strict=True))
        out.update({old: out[new] for old, new in DEPRECATED_SAME_AS.items()})
    if desired.last_decision is not None:
        out["lastDecision"] = desired.last_decision
    if desired.replicas is not None:
        out.update(zip(("replicas", "readyReplicas", "desiredReplicas"), desired.replicas, strict=True))
    if desired.last_scale_time:
        out["lastScaleTime"] = desired.last_scale_time
    if desired.history and history is not None:
        out["policyHistory"] = history
    return out


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Mapping[str, Any]],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    now: float,
    generation: int,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; its transition time moves only when its status does."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        same = cond.get("status") == value and "lastTransitionTime" in cond
        out.append({
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": cond["lastTransitionTime"] if same else utc_iso(now),
            "observedGeneration": generation,
        })
    if not found:
        out.append({
            "type": type_, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": utc_iso(now), "observedGeneration": generation,
        })
    return out


def condition_status(conditions: list[Mapping[str, Any]], type_: str) -> str | None:
    for cond in conditions:
        if cond.get("type") == type_:
            return cond.get("status")
    return None


def scaling_limited(decision: Decision) -> tuple[bool, str, str]:
    """The ScalingLimited condition for a decision: held back by min/max, a max step, or a pause."""
    if decision.reason == PAUSED:
        return True, PAUSED, decision.message
    if decision.limited:
        return True, decision.reason, decision.message
    return False, "DesiredWithinRange", "the replicas the load asks for are within the limits"


def status_patch(previous: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that brings ``previous`` to ``desired``, or None when nothing shown changed.

    Whether it is due is ``write_due``'s question, asked of ``DesiredStatus`` values before anything is rendered;
    this only leaves out what the object already says. Hidden fields alone never make a patch.
    """
    changed = {key for key, value in desired.items() if previous.get(key) != value}
    if not changed - HIDDEN:
        return None
    return {key: _merge_value(previous.get(key), desired[key]) for key in changed}


def _reason(decision: Any) -> str | None:
    return decision.split(":", 1)[0] if isinstance(decision, str) else None


def _merge_value(old: Any, new: Any) -> Any:
    # A JSON merge patch merges objects key by key: keys that went away must be sent as null.
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        patch: dict[str, Any] = {key: None for key in old if key not in new}
        for key, value in new.items():
            if old.get(key) != value:
                patch[key] = _merge_value(old.get(key), value)
        return patch
    return new


def apply_patch(previous: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """What the status is after ``patch`` was merged into ``previous`` (JSON merge patch rules)."""
    out = dict(previous)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_patch(out[key], value)
        else:
            out[key] = value
    return out
