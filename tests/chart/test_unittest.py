"""The helm-unittest suites in charts/stalk/tests/ (one per concern), run by the real plugin.

The plugin is built from its Go module by hack/tools/helm-unittest/build.sh (see tests/chart/conftest.py).
"""

from __future__ import annotations

from tests.chart.conftest import CHART, HELM_PLUGINS
from tests.fixtures.servers import unavailable


def test_every_helm_unittest_suite_passes(helm):
    if not (HELM_PLUGINS / "unittest" / "plugin.yaml").exists():
        unavailable(f"helm-unittest missing in {HELM_PLUGINS} (make chart-bins)")
    suites = sorted(p.name for p in (CHART / "tests").glob("*_test.yaml"))
    assert len(suites) >= 10
    proc = helm.run("unittest", "--strict", str(CHART), check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    assert f"Test Suites: {len(suites)} passed, {len(suites)} total" in proc.stdout
