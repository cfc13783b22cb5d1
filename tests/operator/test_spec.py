"""Reading a TaskQueue object into typed configuration (no cluster needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from stalk_operator.policy import Behavior, ScalingSpec
from stalk_operator.spec import DEFAULTS, SpecError, parse_taskqueue

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "k8s" / "crd" / "taskqueues.stalk.dev.yaml"
EXAMPLE = REPO / "k8s" / "examples" / "taskqueue.yaml"

MINIMAL = {
    "apiVersion": "stalk.dev/v1alpha1",
    "kind": "TaskQueue",
    "metadata": {"name": "emails", "namespace": "team-a", "uid": "u-1", "generation": 3},
    "spec": {
        "queue": "emails",
        "broker": {"url": "redis://redis:6379/0"},
        "scaleTargetRef": {"kind": "Deployment", "name": "email-workers"},
        "maxReplicas": 5,
    },
}


def spec_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_minimal_taskqueue_gets_the_crd_defaults():
    config = parse_taskqueue(MINIMAL)
    assert config.key == ("team-a", "emails")
    assert config.generation == 3
    assert config.broker.url == "redis://redis:6379/0"
    assert config.broker.key_prefix == ""
    assert config.target.kind == "Deployment" and config.target.api_version == "apps/v1"
    assert config.poll_seconds == 1 and config.drain is True
    assert config.scaling == ScalingSpec(
        min_replicas=0, max_replicas=5, tasks_per_replica=10, activation_tasks=0, max_wait_seconds=None,
        scale_up=Behavior(0, None), scale_down=Behavior(45, None), idle_replica_seconds=10, idle_seconds_before_zero=120,
        paused=False,
    )


def test_every_field_is_read():
    body = copy.deepcopy(MINIMAL)
    body["spec"].update({
        "broker": {"secretKeyRef": {"name": "redis", "key": "url"}, "keyPrefix": "team-a:"},
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "w"},
        "minReplicas": 1, "tasksPerReplica": 4, "maxWaitSeconds": 30, "activationTasks": 2,
        "scaleUp": {"stabilizationSeconds": 5, "maxStep": 3}, "scaleDown": {"stabilizationSeconds": 90, "maxStep": 1, "idleReplicaSeconds": 7},
        "idleSecondsBeforeZero": 10, "pollSeconds": 2, "paused": True, "drain": False,
    })
    config = parse_taskqueue(body)
    assert (config.broker.url, config.broker.secret_name, config.broker.secret_key) == (None, "redis", "url")
    assert config.broker.key_prefix == "team-a:"
    assert config.target.kind == "StatefulSet"
    assert config.scaling == ScalingSpec(
        min_replicas=1, max_replicas=5, tasks_per_replica=4, activation_tasks=2, max_wait_seconds=30,
        scale_up=Behavior(5, 3), scale_down=Behavior(90, 1), idle_replica_seconds=7, idle_seconds_before_zero=10,
        paused=True,
    )
    assert config.poll_seconds == 2 and config.drain is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("queue"), "queue"),
        (lambda s: s["broker"].update(secretKeyRef={"name": "r", "key": "u"}), "exactly one of url or secretKeyRef"),
        (lambda s: s["broker"].pop("url"), "exactly one of url or secretKeyRef"),
        (lambda s: s["scaleTargetRef"].update(kind="ReplicaSet"), "Deployment or StatefulSet"),
        (lambda s: s.update(minReplicas=9), "minReplicas must be less than or equal to maxReplicas"),
        (lambda s: s.update(maxReplicas="many"), "many"),
    ],
    ids=["queue-required", "both-brokers", "no-broker", "unknown-kind", "min-above-max", "not-a-number"],
)
def test_unusable_specs_say_why(change, message):
    body = copy.deepcopy(MINIMAL)
    change(body["spec"])
    with pytest.raises(SpecError, match=message):
        parse_taskqueue(body)


def test_code_defaults_are_the_crd_defaults():
    schema = spec_schema()
    for dotted, value in DEFAULTS.items():
        node = schema
        for part in dotted.split("."):
            node = node["properties"][part]
        assert node.get("default") == value, f"spec.{dotted}: CRD default {node.get('default')!r}, code {value!r}"


def test_example_parses():
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["namespace"] = "default"
    config = parse_taskqueue(body)
    assert config.queue == "summarization" and config.scaling.max_wait_seconds == 30


def test_the_chart_says_the_crd_defaults():
    # The chart writes these into every TaskQueue it renders; left alone, they must be the CRD's.
    autoscaling = yaml.safe_load((REPO / "charts" / "stalk" / "values.yaml").read_text())["workers"]["autoscaling"]
    for key in ("pollSeconds", "activationTasks", "idleSecondsBeforeZero", "drain"):
        assert autoscaling[key] == DEFAULTS[key], f"values.yaml workers.autoscaling.{key}"
    assert autoscaling["scaleUp"] == autoscaling["scaleDown"] == {}  # {}: the CRD's windows apply


def test_the_policy_defaults_are_the_crd_defaults():
    body = copy.deepcopy(MINIMAL)
    body["spec"]["maxReplicas"] = ScalingSpec().max_replicas
    assert parse_taskqueue(body).scaling == ScalingSpec()
