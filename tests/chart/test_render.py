"""The chart rendered by the real helm: lint, scenarios, production defaults, and its single sources.

No cluster here: `helm lint --strict` and `helm template`. What the API server thinks of the
rendered objects is in test_cluster.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from stalk_operator import permissions
from stalk_workers.queues import BUILTIN_QUEUES, load_queue_table
from tests.chart.conftest import CHART, REPO, SCENARIOS, by_kind

SCENARIO_IDS = [p.name.removesuffix("-values.yaml") for p in SCENARIOS]
MONITORING = ["monitoring.coreos.com/v1"]
POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def test_the_scenarios_cover_defaults_everything_on_external_services_and_cluster_wide():
    assert SCENARIO_IDS == ["01-defaults", "02-everything-on", "03-external-services", "04-cluster-wide"]


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=["chart-defaults", *SCENARIO_IDS])
def test_helm_lint_strict_passes(helm, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    out = helm.run(*args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    """Every scenario rendered once, as if the cluster served the Prometheus Operator's API."""
    return {sid: helm.template(values=[path], api_versions=MONITORING) for sid, path in zip(SCENARIO_IDS, SCENARIOS)}


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_every_object_carries_the_app_kubernetes_io_labels(rendered, sid):
    for obj in rendered[sid]:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "stalk", where
        assert labels.get("app.kubernetes.io/instance") == "stalk", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/component"), where
        assert len(obj["metadata"]["name"]) <= 63, where


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_every_pod_runs_non_root_read_only_without_capabilities_with_requests(rendered, sid):
    for obj in rendered[sid]:
        if obj["kind"] not in POD_KINDS:
            continue
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert sc["capabilities"] == {"drop": ["ALL"]}, f"{where}/{c['name']}"
            assert c["resources"]["requests"]["memory"], f"{where}/{c['name']}"


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_long_running_containers_have_probes(rendered, sid):
    for obj in rendered[sid]:
        if obj["kind"] not in {"Deployment", "StatefulSet"} or obj["metadata"]["name"].endswith("-beat"):
            continue  # beat serves nothing to probe; it restarts when its process exits
        for c in pod_spec(obj)["containers"]:
            assert "livenessProbe" in c, f"{obj['metadata']['name']}/{c['name']}"


def queue_names(objects: list[dict]) -> dict[str, str]:
    """Worker Deployment name -> queue name."""
    return {name: d["metadata"]["labels"]["stalk.dev/queue"]
            for name, d in by_kind(objects, "Deployment").items()
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}


@pytest.mark.parametrize("sid", ["01-defaults", "02-everything-on"])
def test_each_queue_gets_a_worker_deployment_starting_at_min_replicas_and_a_taskqueue_pointing_at_it(rendered, sid):
    objects = rendered[sid]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    scenario = yaml.safe_load(SCENARIOS[SCENARIO_IDS.index(sid)].read_text()) or {}
    # Helm merges the scenario's queues into the defaults; null removes one.
    queues = {k: v for k, v in {**values["queues"], **scenario.get("queues", {})}.items() if v is not None}
    workers = queue_names(objects)
    assert sorted(workers.values()) == sorted(queues)
    taskqueues = by_kind(objects, "TaskQueue")
    assert sorted(taskqueues) == sorted(workers)
    for name, queue in workers.items():
        deployment = by_kind(objects, "Deployment")[name]
        # A first install (no live Deployment for `lookup`) starts at minReplicas, 0 included; an upgrade
        # keeps the live replicas (tests/chart/test_cluster.py).
        assert deployment["spec"]["replicas"] == queues[queue].get("minReplicas", 0), name
        spec = taskqueues[name]["spec"]
        assert spec["queue"] == queue
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] == queues[queue].get("minReplicas", 0)
        assert spec["maxReplicas"] == queues[queue]["maxReplicas"]
        assert spec["broker"]["secretKeyRef"]["key"] == "broker-url"
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:3] == ["worker", "--queues", queue]


def test_queue_names_with_underscores_and_dots_become_valid_object_names(rendered):
    workers = queue_names(rendered["02-everything-on"])
    assert workers["stalk-worker-gpu-jobs-v2"] == "gpu_jobs.v2"


def test_without_autoscaling_workers_get_fixed_replicas_and_no_taskqueues(rendered):
    objects = rendered["04-cluster-wide"]
    assert by_kind(objects, "TaskQueue") == {}
    replicas = {q: by_kind(objects, "Deployment")[n]["spec"]["replicas"] for n, q in queue_names(objects).items()}
    assert replicas == {"default": 1, "classification": 1, "summarization": 1, "notifications": 1}


def test_a_queue_overrides_the_worker_pod_shape(rendered):
    deployment = by_kind(rendered["02-everything-on"], "Deployment")["stalk-worker-gpu-jobs-v2"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"name": "STALK_TASK_MODULES", "value": "myapp.embeddings"} in spec["containers"][0]["env"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["stalk.dev/team"] == "ml"


def test_worker_grace_period_outlasts_the_hard_time_limit(rendered):
    config = by_kind(rendered["01-defaults"], "ConfigMap")["stalk-config"]["data"]
    hard = int(config["STALK_HARD_TIME_LIMIT_SECONDS"])
    for name in queue_names(rendered["01-defaults"]):
        spec = by_kind(rendered["01-defaults"], "Deployment")[name]["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > hard


def test_the_queue_table_config_map_is_what_the_workers_load(rendered, tmp_path):
    config = by_kind(rendered["02-everything-on"], "ConfigMap")["stalk-config"]["data"]
    assert config["STALK_QUEUES_FILE"] == "/etc/stalk/queues/queues.yaml"
    path = tmp_path / "queues.yaml"
    path.write_text(config["queues.yaml"])
    table = {q.name: q for q in load_queue_table(path)}
    assert set(table) == {"default", "gpu_jobs.v2"}
    assert table["gpu_jobs.v2"].pool == "solo" and table["gpu_jobs.v2"].max_wait_seconds == 60


def test_the_chart_default_queues_are_the_builtin_queue_table(tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    path = tmp_path / "queues.yaml"
    path.write_text(yaml.safe_dump(values["queues"]))
    # Helm renders maps in key order, so compare by name; routes of different queues must not overlap.
    assert sorted(load_queue_table(path), key=lambda q: q.name) == sorted(BUILTIN_QUEUES, key=lambda q: q.name)


def test_the_operator_is_namespaced_by_default_and_cluster_wide_when_asked(rendered):
    default, wide = rendered["01-defaults"], rendered["04-cluster-wide"]
    # Namespaced: cluster-wide only what kopf reads to observe namespaces and CRDs.
    assert list(by_kind(default, "ClusterRole")) == ["stalk-stalk-operator-discovery"]
    role = by_kind(default, "Role")["stalk-operator"]
    secrets = next(r for r in role["rules"] if r["resources"] == ["secrets"])
    assert secrets == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["stalk-redis"]}
    env = {e["name"]: e.get("value") for e in by_kind(default, "Deployment")["stalk-operator"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STALK_WATCH_NAMESPACES"] == "stalk"
    assert list(by_kind(wide, "ClusterRole")) == ["stalk-stalk-operator"]
    binding = by_kind(wide, "ClusterRoleBinding")["stalk-stalk-operator"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "stalk-operator", "namespace": "stalk"}]
    env = {e["name"]: e.get("value") for e in by_kind(wide, "Deployment")["stalk-operator"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STALK_WATCH_NAMESPACES"] == ""


@pytest.mark.parametrize("sid, cluster_wide", [("01-defaults", False), ("04-cluster-wide", True)],
                         ids=["namespaced", "cluster-wide"])
def test_the_operators_roles_grant_exactly_the_calls_in_permissions_py(rendered, sid, cluster_wide):
    need = permissions.required(cluster_wide=cluster_wide)
    roles = {(o["kind"], o["metadata"]["name"]): permissions.granted(o["rules"])
             for o in rendered[sid] if o["kind"] in ("Role", "ClusterRole")}
    if cluster_wide:
        expected = {("ClusterRole", "stalk-stalk-operator"): need[permissions.WATCHED] | need[permissions.CLUSTER]}
    else:
        expected = {("Role", "stalk-operator"): need[permissions.WATCHED],
                    ("ClusterRole", "stalk-stalk-operator-discovery"): need[permissions.CLUSTER]}
    expected[("Role", "stalk-operator-leader")] = need[permissions.OWN]
    assert roles == expected
    # The Lease it renews is the one the chart creates, and only that one.
    leader = by_kind(rendered[sid], "Role")["stalk-operator-leader"]["rules"]
    assert [r.get("resourceNames") for r in leader] == [[by_kind(rendered[sid], "Lease")["stalk-operator"]["metadata"]["name"]]]


def test_the_operator_may_not_write_anything_but_status_scale_pods_events_and_its_lease(rendered):
    allowed_writes = {("stalk.dev", "taskqueues/status"), ("apps", "deployments/scale"), ("apps", "statefulsets/scale"),
                      ("", "pods"), ("", "events"), ("coordination.k8s.io", "leases")}
    for sid in ("01-defaults", "04-cluster-wide"):
        objects = rendered[sid]
        for role in [*by_kind(objects, "Role").values(), *by_kind(objects, "ClusterRole").values()]:
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"]
                if set(rule["verbs"]) - {"get", "list", "watch"}:
                    for group in rule["apiGroups"]:
                        for resource in rule["resources"]:
                            assert (group, resource) in allowed_writes, f"{sid}: {rule}"


@pytest.mark.parametrize("sid", ["01-defaults", "04-cluster-wide"])
def test_a_pod_policy_holds_the_operators_service_account_to_the_deletion_cost(rendered, sid):
    (policy,) = by_kind(rendered[sid], "ValidatingAdmissionPolicy").values()
    (binding,) = by_kind(rendered[sid], "ValidatingAdmissionPolicyBinding").values()
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "stalk-stalk-operator-pod-deletion-cost"
    assert binding["spec"]["validationActions"] == ["Deny"] and policy["spec"]["failurePolicy"] == "Fail"
    assert [c["expression"] for c in policy["spec"]["matchConditions"]] == [
        "request.userInfo.username == 'system:serviceaccount:stalk:stalk-operator'"]
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]}]


def test_the_pod_policy_follows_the_service_account_and_can_be_turned_off(helm):
    objects = helm.template(sets={"operator.serviceAccount.name": "scaler"}, namespace="team-a")
    (policy,) = by_kind(objects, "ValidatingAdmissionPolicy").values()
    assert policy["metadata"]["name"] == "team-a-stalk-operator-pod-deletion-cost"
    assert policy["spec"]["matchConditions"][0]["expression"].endswith("== 'system:serviceaccount:team-a:scaler'")
    off = helm.template(sets={"operator.admissionPolicy.enabled": "false"})
    assert not [o for o in off if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_the_chart_and_the_kustomize_base_check_pods_with_the_same_policy(rendered):
    """One policy in two installers: all but the ServiceAccount it matches must agree."""
    base = [d for d in yaml.safe_load_all((REPO / "k8s" / "operator" / "pod-policy.yaml").read_text()) if d]
    (k8s_policy,) = [d for d in base if d["kind"] == "ValidatingAdmissionPolicy"]
    (chart_policy,) = by_kind(rendered["01-defaults"], "ValidatingAdmissionPolicy").values()
    differs = {"matchConditions"}
    assert ({k: v for k, v in chart_policy["spec"].items() if k not in differs}
            == {k: v for k, v in k8s_policy["spec"].items() if k not in differs})
    assert [c["name"] for c in chart_policy["spec"]["matchConditions"]] == [
        c["name"] for c in k8s_policy["spec"]["matchConditions"]]


def test_only_stalk_processes_reach_redis(rendered):
    policy = by_kind(rendered["01-defaults"], "NetworkPolicy")["stalk-redis"]
    expressions = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"]
    components = next(e for e in expressions if e["key"] == "app.kubernetes.io/component")
    assert sorted(components["values"]) == ["api", "beat", "flower", "operator", "recover", "worker"]
    assert by_kind(rendered["04-cluster-wide"], "NetworkPolicy") == {}


def test_external_services_come_from_the_given_secret_and_nothing_built_in_is_deployed(rendered):
    objects = rendered["03-external-services"]
    assert by_kind(objects, "StatefulSet") == {} and by_kind(objects, "Secret") == {}
    api = by_kind(objects, "Deployment")["stalk-api"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in api["containers"][0]["env"]}
    assert env["STALK_BROKER_URL"] == {"name": "stalk-external", "key": "broker-url"}
    assert env["STALK_RESULT_BACKEND"] == {"name": "stalk-external", "key": "result-backend-url"}
    assert env["STALK_DATABASE_URL"] == {"name": "stalk-external", "key": "database-url"}
    assert "initContainers" not in api
    job = by_kind(objects, "Job")["stalk-migrations"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert api["volumes"][-1]["secret"] == {"secretName": "stalk-external", "items": [{"key": "api-tokens", "path": "tokens"}]}


def test_beat_runs_exactly_one_replica_and_is_recreated_not_rolled(rendered):
    beat = by_kind(rendered["02-everything-on"], "Deployment")["stalk-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    config = by_kind(rendered["02-everything-on"], "ConfigMap")["stalk-config"]["data"]
    assert json.loads(config["STALK_BEAT_SCHEDULE"]) == {"heartbeat": {"task": "stalk.health_check", "seconds": 60}}


def test_monitoring_objects_exist_only_when_the_cluster_serves_their_api(helm):
    everything = SCENARIOS[SCENARIO_IDS.index("02-everything-on")]
    kinds = lambda objs: sorted({o["kind"] for o in objs if o["apiVersion"].startswith("monitoring.coreos.com")})  # noqa: E731
    assert kinds(helm.template(values=[everything], api_versions=MONITORING)) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    assert kinds(helm.template(values=[everything])) == []


def test_the_prometheus_rule_carries_the_alert_rules_file_unchanged(rendered):
    alerts = CHART / "files" / "alerts.yaml"
    rule = next(o for o in rendered["02-everything-on"] if o["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(alerts.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_each_dashboard_becomes_a_config_map_for_the_grafana_sidecar(rendered):
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    maps = [o for o in rendered["02-everything-on"] if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]]
    assert len(maps) == len(dashboards)
    for cm, path in zip(sorted(maps, key=lambda m: next(iter(m["data"]))), dashboards):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())


def test_config_changes_roll_the_pods_through_the_checksum_annotation(helm):
    def checksums(objects):
        return {n: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for n, d in by_kind(objects, "Deployment").items()}
    before = checksums(helm.template())
    after = checksums(helm.template(sets={"config.taskModules": "myapp.tasks"}))
    assert before.keys() == after.keys()
    assert all(before[n] != after[n] for n in before)
    assert checksums(helm.template()) == before  # deterministic: no random input


def test_the_helm_test_pod_submits_a_health_check_through_the_api(rendered):
    pod = by_kind(rendered["01-defaults"], "Pod")["stalk-test-health-check"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert "stalk submit stalk.health_check --wait" in container["args"][0]
    assert {"name": "STALK_API_URL", "value": "http://stalk-api:8000"} in container["env"]


def test_long_release_names_are_truncated_to_63_characters(helm):
    release = "a-release-name-that-is-as-long-as-helm-allows-it-53ch"  # helm's limit is 53
    assert len(release) == 53
    objects = helm.template(release=release)
    assert all(len(o["metadata"]["name"]) <= 63 for o in objects)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)


# --- single sources ------------------------------------------------------------------------------

def test_the_chart_crd_is_the_same_file_as_the_one_under_k8s():
    chart_crd = CHART / "crds" / "taskqueues.stalk.dev.yaml"
    source = REPO / "k8s" / "crd" / "taskqueues.stalk.dev.yaml"
    assert chart_crd.read_bytes() == source.read_bytes(), "run `make chart-crds`"
    assert [p.name for p in (CHART / "crds").iterdir()] == ["taskqueues.stalk.dev.yaml"]


def test_the_chart_readme_is_generated_from_the_current_values():
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "chart_readme.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- values.schema.json: typos fail at install with helm's own message --------------------------

SCHEMA_ROWS = [
    # (what the user typed, the words helm's message must contain)
    ({"api.replica": "3"}, ["at '/api'", "additional properties 'replica' not allowed"]),
    ({"queues.Reports.maxReplicas": "2"}, ["'Reports' does not match pattern"]),
    ({"queues.default.pool": "gevent"}, ["at '/queues/default/pool'", "value must be one of 'prefork', 'threads', 'solo'"]),
    ({"queues.default.concurrency": "0"}, ["at '/queues/default/concurrency'", "minimum"]),
    ({"queues.reports.routes[0]": "x.*"}, ["at '/queues/reports'", "missing property 'maxReplicas'"]),
    ({"queues.default.minReplica": "1"}, ["additional properties 'minReplica' not allowed"]),
    ({"api.resources.requests.memroy": "1Gi"}, ["additional properties 'memroy' not allowed"]),
    ({"operator.livenessProbe.periodSecond": "5"}, ["additional properties 'periodSecond' not allowed"]),
    ({"image.digest": "sha1:abc"}, ["at '/image/digest'", "does not match pattern"]),
    ({"migrations.mode": "hook"}, ["value must be one of 'initContainer', 'job'"]),
    ({"redis.enabled": "false"}, ["at '/externalRedis/existingSecret'", "minLength"]),
    ({"flower.enable": "true"}, ["additional properties 'enable' not allowed"]),
]


@pytest.mark.parametrize("sets, words", SCHEMA_ROWS, ids=[next(iter(s)) for s, _ in SCHEMA_ROWS])
def test_the_schema_rejects_a_typo_with_a_clear_message(helm, sets, words):
    cmd = ["template", "stalk", str(CHART)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    proc = helm.run(*cmd, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


TEMPLATE_RULES = [
    ({"config.hardTimeLimitSeconds": "400"}, "workers.terminationGracePeriodSeconds (360) must be above config.hardTimeLimitSeconds (400)"),
    ({"config.softTimeLimitSeconds": "300"}, "config.softTimeLimitSeconds (300) must be below config.hardTimeLimitSeconds (300)"),
    ({"config.visibilityTimeoutSeconds": "300"}, "config.visibilityTimeoutSeconds (300) must be larger than config.hardTimeLimitSeconds (300)"),
    ({"migrations.mode": "job"}, "migrations.mode job runs before install, when the built-in PostgreSQL does not exist yet"),
    ({"queues.default.minReplicas": "5", "queues.default.maxReplicas": "2"}, "queues.default: maxReplicas (2) must be >= minReplicas (5)"),
    ({"queues.a_b.maxReplicas": "1", "queues.a-b.maxReplicas": "1"}, "queues a-b and a_b would both be named stalk-worker-a-b"),
]


@pytest.mark.parametrize("sets, message", TEMPLATE_RULES, ids=[m.split(" ")[0] for _, m in TEMPLATE_RULES])
def test_values_that_contradict_each_other_fail_with_one_line_saying_why(helm, sets, message):
    cmd = ["template", "stalk", str(CHART)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    proc = helm.run(*cmd, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_the_packaged_chart_carries_the_crd_and_the_test_hook_but_not_the_unit_tests(helm, tmp_path):
    import tarfile

    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("stalk-*.tgz")
    names = set(tarfile.open(package).getnames())
    assert "stalk/crds/taskqueues.stalk.dev.yaml" in names
    assert "stalk/templates/tests/health-check.yaml" in names
    assert "stalk/values.schema.json" in names and "stalk/README.md" in names
    assert not [n for n in names if n.startswith(("stalk/tests/", "stalk/ci/"))]


@pytest.mark.parametrize(("sets", "reference"), [
    ({"image.tag": "1.2.3"}, "stalk:1.2.3"),
    ({"image.digest": "sha256:" + "a" * 64}, "stalk@sha256:" + "a" * 64),
    # What skaffold deploys (tag and digest): its file sync finds the pods by this exact reference.
    ({"image.tag": "1.2.3", "image.digest": "sha256:" + "a" * 64}, "stalk:1.2.3@sha256:" + "a" * 64),
])
def test_every_stalk_container_runs_the_image_reference_the_values_name(helm, sets, reference):
    images = {c["image"] for obj in helm.template(sets=sets) if obj["kind"] in POD_KINDS
              for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]
              if c["image"].startswith("stalk")}
    assert images == {reference}


def secret_values(objects: list[dict]) -> set[str]:
    """Every value (and every line of one, e.g. a tokens file) of the Secrets the chart renders."""
    import base64

    values = set()
    for obj in objects:
        if obj["kind"] == "Secret":
            raw = [base64.b64decode(v).decode() for v in (obj.get("data") or {}).values()]
            raw += list((obj.get("stringData") or {}).values())
            values |= {part for value in raw for part in [value, *value.splitlines()] if len(part) >= 8}
    return values


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_no_secret_reaches_a_command_line(rendered, sid):
    """Kubernetes expands $(VAR) in command and args, and a process's command line is world-readable
    (`ps`, /proc/PID/cmdline): a value from a Secret belongs in the environment or a file."""
    secrets = secret_values(rendered[sid])
    assert secrets or sid == "03-external-services"  # the chart's generated passwords, URLs and tokens
    for obj in rendered[sid]:
        if obj["kind"] not in POD_KINDS:
            continue
        for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]:
            where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            secret_vars = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            line = " ".join(c.get("command", []) + c.get("args", []))
            leaked = sorted(v for v in secret_vars if f"$({v})" in line)
            assert not leaked, f"{where}: {leaked} on its command line"
            assert not [v for v in secrets if v in line], f"{where}: a Secret's value on its command line"


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_one_recoverer_runs_with_the_apis_settings_and_secrets(rendered, sid):
    deployments = by_kind(rendered[sid], "Deployment")
    recover_pod, api_pod = pod_spec(deployments["stalk-recover"]), pod_spec(deployments["stalk-api"])
    (recover,), api = recover_pod["containers"], api_pod["containers"][0]
    assert deployments["stalk-recover"]["spec"]["replicas"] == 1
    assert recover["command"] == ["stalk"] and recover["args"][0] == "recover"
    # The same ConfigMap, the same URLs from the same Secrets, the same mounts (the API's tokens aside).
    from_secrets = lambda c: [e for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]  # noqa: E731
    assert recover["envFrom"] == api["envFrom"]
    assert from_secrets(recover) == from_secrets(api)
    assert recover_pod["volumes"] == [v for v in api_pod["volumes"] if v["name"] != "api-tokens"]
    assert recover["volumeMounts"] == [m for m in api["volumeMounts"] if m["name"] != "api-tokens"]
    # Kubernetes' Service variables would set STALK_API_PORT=tcp://…:8000 (release "stalk"): invalid settings.
    assert recover_pod["enableServiceLinks"] is False
    env = {e["name"]: e.get("value") for e in recover["env"]}
    assert env["STALK_RECOVER_METRICS_HOST"] == "0.0.0.0"  # the kubelet's probe and Prometheus reach it
    assert int(env["STALK_RECOVER_METRICS_PORT"]) == recover["ports"][0]["containerPort"]


def test_the_recoverer_is_scraped_and_alerted_on(rendered):
    objects = rendered["02-everything-on"]
    recover = by_kind(objects, "Deployment")["stalk-recover"]
    monitor = by_kind(objects, "PodMonitor")["stalk-recover"]
    labels = recover["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    assert port in {p["name"] for p in pod_spec(recover)["containers"][0]["ports"]}
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "stalk_recover_tasks_recovered_total" in alerts["StalkTasksRecovered"]["expr"]
    assert alerts["StalkTasksRecovered"]["labels"]["severity"] == "warning"


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_the_operator_gets_only_the_settings_it_reads(rendered, sid):
    # No broker URL, result backend or database URL: a TaskQueue names its own broker.
    from stalk_operator.config import OperatorSettings

    reads = {f"STALK_{name.upper()}" for name in OperatorSettings.model_fields}
    for obj in rendered[sid]:
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"]["app.kubernetes.io/component"] == "operator":
            (container,) = pod_spec(obj)["containers"]
            assert "envFrom" not in container
            assert {e["name"] for e in container["env"]} <= reads, container["env"]
