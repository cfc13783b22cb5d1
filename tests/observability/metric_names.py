"""The metric names stalk really exports, taken from the metric objects of the API, operator, workers and recoverer."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum", ""),
            "gauge": ("",)}


def exported_names() -> set[str]:
    from stalk_api.metrics import ApiMetrics
    from stalk_api.recovery.recoverer import create_counter
    from stalk_operator.metrics import OperatorMetrics
    from stalk_workers.metrics import create_metrics

    worker, recover = CollectorRegistry(), CollectorRegistry()
    create_metrics(worker)
    create_counter(recover)
    names = set()
    for registry in (ApiMetrics().registry, OperatorMetrics().registry, worker, recover):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names
