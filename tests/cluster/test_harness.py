"""The harness itself: a second cluster runs beside the session's, and `down` cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kubernetes import client, config

from tests.fixtures.kube import BIN_DIR, REPO, missing_binaries
from tests.fixtures.servers import unavailable

pytestmark = pytest.mark.cluster

CLUSTER_PY = str(REPO / "hack" / "cluster.py")


def test_second_cluster_runs_beside_the_first_and_down_removes_it(kube_cluster, kube_api, tmp_path):
    if missing_binaries():
        unavailable("needs locally built binaries (not only STALK_TEST_KUBECONFIG)")
    state = tmp_path / "second"
    up = subprocess.run([sys.executable, CLUSTER_PY, "up", "--state-dir", str(state), "--bin-dir", str(BIN_DIR),
                         "--nodes", "1"], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
        info = json.loads((state / "cluster.json").read_text())
        # Its own API server: a namespace made here does not exist in the session's cluster.
        second = config.new_client_from_config(config_file=str(state / "kubeconfig"))
        with second:
            assert second.configuration.host != kube_api.configuration.host
            client.CoreV1Api(second).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="only-here")))
            names = {n.metadata.name for n in client.CoreV1Api(second).list_node().items}
            assert names == {"kwok-node-0"}
        assert "only-here" not in {n.metadata.name for n in client.CoreV1Api(kube_api).list_namespace().items}
    finally:
        down = subprocess.run([sys.executable, CLUSTER_PY, "down", "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
    for name, pid in info["pids"].items():
        assert not os.path.exists(f"/proc/{pid}") or str(state) not in open(f"/proc/{pid}/cmdline").read(), \
            f"{name} (pid {pid}) still runs after down"
