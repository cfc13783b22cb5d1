"""The import contract: arrows point down only (docs/architecture.md, "Components").

``workers/`` is the base every component shares, so it never imports the API or the operator;
the API does not import the operator. Every import counts, also one inside a function or a
``try``: a command that needs another component lives with that component and joins ``stalk``
through the ``stalk.commands`` entry point group instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> the packages it must never import
FORBIDDEN = {
    "stalk_workers": ("stalk_api", "stalk_operator"),
    "stalk_api": ("stalk_operator",),
}
PACKAGE_DIRS = {"stalk_workers": REPO / "workers" / "stalk_workers", "stalk_api": REPO / "api" / "stalk_api"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))  # importlib.import_module("...")
    return found


@pytest.mark.parametrize("package", FORBIDDEN)
def test_no_import_points_up(package):
    offending = []
    for path in sorted(PACKAGE_DIRS[package].rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                offending.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not offending, f"{package} must not import {', '.join(FORBIDDEN[package])}:\n" + "\n".join(offending)


def test_the_contract_sees_imports_inside_functions_and_try(tmp_path):
    # The shape that hid the old back-arrow: a lazy import inside `try ... except ImportError`.
    source = tmp_path / "m.py"
    source.write_text("def f():\n    try:\n        from stalk_operator.local_mode import X\n"
                      "    except ImportError:\n        X = None\n")
    assert imported_modules(source) == [(3, "stalk_operator.local_mode")]
