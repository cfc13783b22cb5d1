"""The alert rules pass promtool's checks and unit tests, and use only metrics stalk exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.metric_names import exported_names

FILES = Path(__file__).resolve().parents[2] / "charts" / "stalk" / "files"
RULES, RULE_TESTS = FILES / "alerts.yaml", FILES / "alerts.test.yaml"
# Alerts the issues ask for (backlog, oldest wait, max replicas, failure rate, Redis, no workers;
# issue 17: tasks recovered because Redis lost them).
EXPECTED = {"StalkQueueBacklogGrowing", "StalkQueueOldestTaskWaitingTooLong", "StalkQueueAtMaxReplicas",
            "StalkTaskFailureRateHigh", "StalkOperatorCannotReadRedis", "StalkNoWorkersForQueue",
            "StalkTasksRecovered"}
# The operator does not export the TaskQueue's maxReplicas yet; StalkQueueAtMaxReplicas needs it.


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make system-deps` (Debian's prometheus package)")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=FILES, timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_there_with_summary_description_runbook_and_severity():
    alerts = {rule["alert"]: rule for rule in rules()}
    assert set(alerts) == EXPECTED
    for name, rule in alerts.items():
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert "\n" not in rule["annotations"]["runbook"].strip(), f"{name}: the runbook is one line"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name


def test_every_alert_is_unit_tested():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == EXPECTED


def test_alerts_use_only_metrics_that_stalk_exports():
    used = {name for rule in rules() for name in re.findall(r"\bstalk_[a-z_]+\b", rule["expr"])}
    missing = used - exported_names()
    assert not missing, f"alerts use metrics nobody exports: {sorted(missing)}"


def test_alerts_and_their_tests_use_no_deprecated_metric():
    from stalk_operator.metrics import DEPRECATED_METRICS

    for path in (RULES, RULE_TESTS):
        text = path.read_text()
        for old, new in DEPRECATED_METRICS.items():
            assert not re.search(rf"\b{old}\b", text), f"{path.name} uses {old}: use {new}"
