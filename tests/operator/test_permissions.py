"""stalk_operator.permissions says what the code calls: every kubernetes client method the operator's
modules name is listed with the permission it needs (and nothing listed is unused), and kopf watches
exactly the resources listed. That the chart and the kustomize base grant exactly ``required()`` is
in tests/chart/test_render.py and tests/k8s/test_kustomize.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import kopf
from kubernetes import client

import stalk_operator
import stalk_operator.handlers  # noqa: F401 - registers the kopf handlers
from stalk_operator.permissions import (
    CLIENT_CALLS, CLUSTER, NOT_GRANTED, OWN, WATCHED, WATCHED_RESOURCES, Permission, required,
)

PACKAGE = Path(stalk_operator.__file__).parent


def operator_syntax() -> list[tuple[str, ast.AST]]:
    return [(path.name, node) for path in sorted(PACKAGE.glob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))]


def client_api_methods(class_names: set[str]) -> set[str]:
    """The API-call methods (those with a ``_with_http_info`` twin) of the named kubernetes client classes."""
    methods = set()
    for name in class_names:
        members = dict(inspect.getmembers(getattr(client, name), inspect.isfunction))
        methods |= {m for m in members if f"{m}_with_http_info" in members}
    return methods


def client_methods_named_in_the_operator() -> dict[str, list[str]]:
    """Client method -> where the operator's code names it (called, or picked as in kube.read_scale)."""
    nodes = operator_syntax()
    # Every client API class the operator builds or is handed is named somewhere (client.CoreV1Api, ...).
    classes = {getattr(node, "attr", None) or getattr(node, "id", None) for _, node in nodes
               if isinstance(node, (ast.Attribute, ast.Name))}
    methods, found = client_api_methods({c for c in classes if c and c.endswith("Api") and hasattr(client, c)}), {}
    for where, node in nodes:
        if isinstance(node, ast.Attribute) and node.attr in methods:
            found.setdefault(node.attr, []).append(f"{where}:{node.lineno}")
    return found


def test_every_client_call_of_the_operator_is_listed_with_its_permission_and_none_listed_is_unused():
    named = client_methods_named_in_the_operator()
    assert {m: where for m, where in named.items() if m not in CLIENT_CALLS} == {}, "add them to CLIENT_CALLS"
    assert sorted(set(CLIENT_CALLS) - set(named)) == [], "listed in CLIENT_CALLS but never called"


def test_kopf_watches_exactly_the_listed_resources_and_writes_nothing_to_them():
    registry = kopf.get_default_registry()
    watched = {(h.selector.group, h.selector.any_name) for h in registry._watching.get_all_handlers()}
    assert watched == set(WATCHED_RESOURCES)
    # Create/update/delete handlers, daemons, timers or indexes would add finalizers, annotations and patches.
    assert not [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers(),
                *registry._indexing.get_all_handlers(), *registry._webhooks.get_all_handlers()]


def test_what_a_namespaced_and_a_cluster_wide_operator_need():
    namespaced, wide = required(cluster_wide=False), required(cluster_wide=True)
    assert namespaced[WATCHED] == wide[WATCHED]
    lease = "coordination.k8s.io", "leases"
    assert namespaced[OWN] == {Permission(*lease, "get"), Permission(*lease, "patch")}
    # kopf reads namespaces only when it serves a list of them.
    assert namespaced[CLUSTER] - wide[CLUSTER] == {Permission("", "namespaces", "list"), Permission("", "namespaces", "watch")}
    # No `get` where only a watch is used, no `update` anywhere, and the Lease's `create` left to the installer.
    for scopes in (namespaced, wide):
        everything = set().union(*scopes.values())
        assert not [p for p in everything if p.verb in ("update", "delete", "deletecollection", "*")]
        assert {p.resource for p in everything if p.verb == "get"} == {
            "deployments/scale", "statefulsets/scale", "secrets", "leases"}
        assert not everything & NOT_GRANTED
