"""Grafana dashboards: valid, templated, and every panel's query answers from a real Prometheus.

The live test runs Debian's Prometheus on a free loopback port, scraping the real API process,
a real prefork worker's metrics port and the real operator (against the test Kubernetes cluster
and a real Redis, scaling a worker Deployment on kwok nodes), sends tasks through the API so every
kind of sample exists (successes, a retry then a failure, a revocation, a scale-up, broker read
errors from a TaskQueue whose Redis is unreachable), then runs every panel's query with the
dashboard variables substituted and asserts each returns data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures.servers import fresh_redis_pair, free_port, wait_until
from tests.observability.metric_names import exported_names

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "charts" / "stalk" / "dashboards").glob("*.json"))
ALERTS = REPO / "charts" / "stalk" / "files" / "alerts.yaml"
CRD = REPO / "k8s" / "crd" / "taskqueues.stalk.dev.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's interval macros, as Grafana would fill them for a short time range.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s"}
FAST_RETRIES = {"STALK_RETRY_BACKOFF_SECONDS": "1", "STALK_RETRY_MAX": "1", "STALK_RETRY_JITTER": "false"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p.get("type") != "row"]


def queries(board: dict) -> list[tuple[str, str]]:
    """(panel title + refId, expr) of every target of every panel."""
    return [(f"{board['uid']} / {p['title']} / {t['refId']}", t["expr"]) for p in panels(board) for t in p["targets"]]


def substitute(expr: str, **values: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    for name, value in values.items():
        expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


# --- static checks ------------------------------------------------------------------------------

def test_there_are_dashboards_with_unique_uids_and_titles():
    boards = [load(p) for p in DASHBOARDS]
    assert {b["uid"] for b in boards} >= {"stalk-overview", "stalk-queues", "stalk-workers"}
    assert len({b["uid"] for b in boards}) == len({b["title"] for b in boards}) == len(boards)
    for path, board in zip(DASHBOARDS, boards):
        assert path.stem == board["uid"]
        assert len(board["uid"]) <= 40  # Grafana's limit


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_datasource_namespace_and_queue_are_template_variables(path):
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "queue"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(.+, {name}\)", var["definition"]) and var["query"]["query"] == var["definition"]
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_panel_uses_the_datasource_variable_and_exported_metrics(path):
    board = load(path)
    names = exported_names()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            used = set(re.findall(r"\bstalk_[a-z_]+\b", target["expr"]))
            assert used and used <= names, f"{panel['title']}: {sorted(used - names)} are not exported"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_no_dashboard_reads_a_deprecated_metric(path):
    from stalk_operator.metrics import DEPRECATED_METRICS

    text = path.read_text()
    for old, new in DEPRECATED_METRICS.items():
        assert not re.search(rf"\b{old}\b", text), f"{path.name} reads {old}: use {new}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_panels_do_not_overlap(path):
    taken: set[tuple[int, int]] = set()
    for panel in load(path)["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


# --- the live test ------------------------------------------------------------------------------

class Processes:
    def __init__(self, logdir: Path) -> None:
        self.logdir, self.started = logdir, []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.logdir / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, env=env, cwd=self.logdir, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def log(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def deployment(name: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": 5,
                                           "containers": [{"name": "worker", "image": "stalk:test"}]}}}}


def taskqueue(name: str, queue: str, broker: str, target: str, **spec) -> dict:
    return {"apiVersion": "stalk.dev/v1alpha1", "kind": "TaskQueue", "metadata": {"name": name},
            "spec": {"queue": queue, "broker": {"url": broker},
                     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}, **spec}}


def prometheus_config(namespace: str, api: int, worker: int, operator: int) -> dict:
    def job(name: str, port: int, pod: str, **extra) -> dict:
        # The labels a ServiceMonitor/PodMonitor gives its targets.
        return {"job_name": name, **extra,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": namespace, "pod": pod}}]}

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            job("stalk-api", api, "stalk-api-0"),
            job("stalk-worker", worker, "stalk-worker-default-0"),
            # As the chart's operator ServiceMonitor: keep the TaskQueue's own namespace label.
            job("stalk-operator", operator, "stalk-operator-0", honor_labels=True),
        ],
    }


@pytest.mark.cluster
def test_every_panel_query_returns_data_from_a_real_prometheus(kube_cluster, kube_namespace, redis_server, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus is not installed: run `make system-deps` (Debian's prometheus package)")
    ns = kube_namespace
    broker, backend = fresh_redis_pair(redis_server)
    api_port, worker_port, operator_port, prom_port = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    env.update(STALK_BROKER_URL=broker, STALK_RESULT_BACKEND=backend, PYTHONUNBUFFERED="1",
               STALK_DATABASE_URL=f"sqlite:///{tmp_path / 'records.db'}")
    stalk = str(Path(sys.executable).parent / "stalk")

    kube_cluster.kubectl("apply", "-f", str(CRD))
    kube_cluster.kubectl("wait", "--for=condition=Established", "crd/taskqueues.stalk.dev", "--timeout=60s")
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    objects = [deployment("workers-default", 1), deployment("workers-broken", 0),
               taskqueue("default", "default", broker, "workers-default", minReplicas=1, maxReplicas=3,
                         tasksPerReplica=1),
               taskqueue("broken", "classification", unreachable, "workers-broken", maxReplicas=1)]
    kube_cluster.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                              "items": objects}))

    procs = Processes(tmp_path)
    try:
        api = procs.start("api", [stalk, "api", "--host", "127.0.0.1", "--port", str(api_port)], env)
        worker = procs.start("worker", [stalk, "worker", "--queues", "default", "--concurrency", "2"],
                             {**env, **FAST_RETRIES, "STALK_WORKER_METRICS_PORT": str(worker_port)})
        operator = procs.start("operator", [sys.executable, "-m", "stalk_operator"], {
            **env, "KUBECONFIG": str(kube_cluster.kubeconfig), "STALK_OPERATOR_NAMESPACE": ns,
            "STALK_WATCH_NAMESPACES": ns, "STALK_METRICS_HOST": "127.0.0.1", "STALK_METRICS_PORT": str(operator_port)})
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(ns, api_port, worker_port, operator_port)))
        prom = procs.start("prometheus", [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                          f"--web.listen-address=127.0.0.1:{prom_port}"], env)

        api_url, prom_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prom_port}"
        for name, proc, url in (("api", api, f"{api_url}/readyz"), ("worker", worker, f"http://127.0.0.1:{worker_port}/metrics"),
                                ("operator", operator, f"http://127.0.0.1:{operator_port}/readyz"),
                                ("prometheus", prom, f"{prom_url}/-/ready")):
            wait_until(lambda: proc.poll() is None and httpx.get(url, timeout=2).status_code == 200, timeout=90,
                       what=f"{name} at {url} (log: {procs.log(name)})")

        http = httpx.Client(base_url=api_url, timeout=10)

        def submit(task: str, **body) -> str:
            response = http.post("/v1/tasks", json={"task": task, **body})
            assert response.status_code == 202, response.text
            return response.json()["task_id"]

        def status(task_id: str) -> str:
            return http.get(f"/v1/tasks/{task_id}").json()["status"]

        sleeper = submit("stalk.sleep", args=[60])
        wait_until(lambda: status(sleeper) == "STARTED", timeout=30, what="the sleeper to start")
        assert http.post(f"/v1/tasks/{sleeper}/cancel", params={"terminate": "true"}).status_code == 200
        ids = [submit("stalk.health_check") for _ in range(5)] + [submit("stalk.fail")]
        ids += [submit("stalk.sleep", args=[2]) for _ in range(6)]  # a backlog: the operator scales up
        for task_id in [sleeper, *ids]:
            wait_until(lambda: status(task_id) in {"SUCCESS", "FAILURE", "REVOKED"}, timeout=90,
                       what=f"task {task_id} to finish")

        def run(expr: str) -> list:
            response = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
            assert response.status_code == 200, f"{expr}: {response.text}"
            return response.json()["data"]["result"]

        all_queries = [(where, substitute(expr, namespace=ns, queue="default"))
                       for path in DASHBOARDS for where, expr in queries(load(path))]

        def empty() -> list[str]:
            return [f"{where}: {expr}" for where, expr in all_queries if not run(expr)]

        try:
            wait_until(lambda: not empty(), timeout=120, interval=2, what="every panel query to return data")
        except AssertionError:
            pytest.fail("panel queries without data:\n" + "\n".join(empty()), pytrace=False)

        # The variables' own queries list the test's namespace and queue.
        for path in DASHBOARDS:
            for var in load(path)["templating"]["list"]:
                if var["type"] != "query":
                    continue
                selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"]).groups()
                found = httpx.get(f"{prom_url}/api/v1/label/{label}/values",
                                  params={"match[]": substitute(selector, namespace=ns)}, timeout=10).json()["data"]
                assert {"namespace": ns, "queue": "default"}[label] in found, (var["name"], found)

        # The alert rules load into the same Prometheus and evaluate without errors.
        groups = httpx.get(f"{prom_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} and all(
            r["health"] != "err" for g in groups for r in g["rules"]), groups
    finally:
        procs.stop_all()
