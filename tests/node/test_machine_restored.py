"""`make cluster-down` puts the machine back exactly as it was before the real node started."""

from __future__ import annotations

import json
import os

import pytest

from tests.fixtures.kube import poll
from tests.node.conftest import real_node

pytestmark = [pytest.mark.cluster, pytest.mark.stops_the_node]

# A pod that uses what leaves marks on a machine: a pod network (bridge, veth, iptables), a
# Service (kube-proxy's chains), a host port (portmap's), and volumes (kubelet mounts).
WORKLOAD = [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "marks", "labels": {"app": "marks"}},
     "spec": {"containers": [{"name": "pause", "image": "localhost/stalk-pause:v1", "imagePullPolicy": "Never",
                              "ports": [{"containerPort": 8080, "hostPort": 18080}],
                              "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
              "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "marks"},
     "spec": {"selector": {"app": "marks"}, "ports": [{"port": 80, "targetPort": 8080}]}},
]


def test_cluster_down_leaves_no_process_mount_link_rule_cgroup_or_sysctl_behind(real_cluster):
    info = json.loads((real_cluster.state_dir / "node" / "node.json").read_text())
    before = info["before"]
    real_cluster.kubectl("apply", "-f", "-", namespace="default",
                         input=json.dumps({"apiVersion": "v1", "kind": "List", "items": WORKLOAD}))
    poll(lambda: json.loads(real_cluster.kubectl("get", "pod", "marks", "-o", "json", namespace="default").stdout)
         ["status"].get("phase") == "Running", timeout=60, what="a pod with a host port, a Service and a volume")
    holder = info["holder"]

    down = real_cluster.stop()
    assert down.returncode == 0, down.stdout + down.stderr
    assert "the machine is as it was" in down.stdout, down.stdout

    # The same comparison again, from here: nothing differs from the snapshot taken at start.
    assert real_node.differences(before, real_node.snapshot()) == []
    # No process of the node is left: none in its namespaces, none started for its state dir.
    namespaces = tuple(info["namespaces"])
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            ns = (os.readlink(f"/proc/{pid}/ns/mnt"), os.readlink(f"/proc/{pid}/ns/net"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert ns[0] != namespaces[0] and ns[1] != namespaces[1], (pid, cmdline)
        assert str(real_cluster.state_dir) not in cmdline, (pid, cmdline)
    assert not os.path.exists(f"/proc/{holder}")
    assert not real_cluster.state_dir.exists()
