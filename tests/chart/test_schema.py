"""The chart's queue schema is generated from the pydantic QueueSpec, and the defaults a queue
leaves out are the TaskQueue CRD's (issue 15: the same constraints were written three times)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stalk_operator.defaults import TASKQUEUE_DEFAULTS
from stalk_workers.queues import QueueSpec

REPO = Path(__file__).resolve().parents[2]


def test_the_values_schema_is_generated_from_the_current_queue_spec():
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "chart_schema.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("field, crd_key", [("min_replicas", "minReplicas"), ("tasks_per_replica", "tasksPerReplica")])
def test_a_queue_table_default_is_the_crds(field, crd_key):
    # Local mode reads the queue table; the operator in a cluster gets the CRD's default.
    assert QueueSpec.model_fields[field].default == TASKQUEUE_DEFAULTS[crd_key]


def test_the_redis_tls_choices_are_the_same_in_the_chart_the_crd_and_the_settings():
    """ssl_cert_reqs is stated by the settings (STALK_REDIS_TLS_CERT_REQS), the CRD (broker.tls.certReqs)
    and the chart (externalRedis.tls.certReqs, handed to both): the same choices, the same default."""
    import json
    import typing

    import yaml

    from stalk_workers.settings import Settings

    setting = Settings.model_fields["redis_tls_cert_reqs"]
    crd = yaml.safe_load((REPO / "k8s" / "crd" / "taskqueues.stalk.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    in_crd = spec["properties"]["broker"]["properties"]["tls"]["properties"]["certReqs"]
    schema = json.loads((REPO / "charts" / "stalk" / "values.schema.json").read_text())
    in_chart = schema["properties"]["externalRedis"]["properties"]["tls"]["properties"]["certReqs"]
    values = yaml.safe_load((REPO / "charts" / "stalk" / "values.yaml").read_text())
    assert list(typing.get_args(setting.annotation)) == in_crd["enum"] == in_chart["enum"]
    assert setting.default == in_crd["default"] == values["externalRedis"]["tls"]["certReqs"] == TASKQUEUE_DEFAULTS[
        "broker.tls.certReqs"]


def test_the_recoverer_values_agree_with_its_settings():
    # The chart's recover.* restate ApiSettings' defaults and bounds (the values file must show them).
    import json

    import yaml
    from annotated_types import Ge

    from stalk_api.config import ApiSettings

    chart = REPO / "charts" / "stalk"
    schema = json.loads((chart / "values.schema.json").read_text())["properties"]["recover"]["properties"]
    values = yaml.safe_load((chart / "values.yaml").read_text())["recover"]
    after = ApiSettings.model_fields["recover_after_seconds"]
    assert values["afterSeconds"] == after.default
    assert schema["afterSeconds"]["minimum"] == next(m.ge for m in after.metadata if isinstance(m, Ge))
    assert values["metricsPort"] == ApiSettings.model_fields["recover_metrics_port"].default
