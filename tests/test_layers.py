"""The package's layering, read from the source with ``ast``: every import, at module level or inside a function
(a function-local import is a dependency all the same, only a hidden one).

protocol < chain < serving, ledger < journal, lifecycle < cli, flows; ``core`` is the ground floor under all of it;
``testing`` holds the test doubles, which the product never imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "atoma_ops"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module ``source`` imports (relative imports resolved against ``module``)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # ``from . import x`` / ``from pkg import submodule``: the names may be modules too
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        out[name] = imports_of(path.read_text(), name, path.name == "__init__.py")
    return out


GRAPH = graph()


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(importers: str, forbidden: tuple[str, ...], allowed_inside: str | None = None) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if within(module, importers)
        for target in targets
        if any(within(target, f) for f in forbidden) and not (allowed_inside and within(target, allowed_inside))
    )


def test_the_scanner_sees_function_local_and_relative_imports():
    source = (
        "import os\n"
        "from .store import NodeStore\n"
        "from ..protocol import abi\n"
        "def f():\n"
        "    from ...cli import app\n"
        "    import prefect.tasks\n"
    )
    found = imports_of(source, "atoma_ops.serving.engines.cpu")
    assert {"os", "atoma_ops.serving.engines.store", "atoma_ops.serving.protocol", "atoma_ops.cli",
            "prefect.tasks"} <= found
    found = imports_of("from .store import NodeStore\ndef f():\n    from ..cli import app\n", "atoma_ops.serving.node")
    assert found == {"atoma_ops.serving.store", "atoma_ops.serving.store.NodeStore", "atoma_ops.cli", "atoma_ops.cli.app"}
    assert imports_of("from . import events\n", "atoma_ops.protocol", is_package=True) >= {"atoma_ops.protocol.events"}


def test_the_graph_covers_the_package():
    assert {"atoma_ops.protocol.events", "atoma_ops.lifecycle.settle", "atoma_ops.testing.sui.node"} <= set(GRAPH)
    # a function-local import of the package, known to be there, is in the graph
    assert "atoma_ops.home" in GRAPH["atoma_ops.serving.node"]


def test_protocol_imports_nothing_of_the_package_outside_itself():
    others = sorted(
        f"{m} imports {t}" for m, ts in GRAPH.items() if within(m, "atoma_ops.protocol")
        for t in ts if within(t, "atoma_ops") and not within(t, "atoma_ops.protocol")
    )
    assert others == []


def test_core_imports_nothing_of_the_package_outside_itself():
    others = sorted(
        f"{m} imports {t}" for m, ts in GRAPH.items() if within(m, "atoma_ops.core")
        for t in ts if within(t, "atoma_ops") and not within(t, "atoma_ops.core")
    )
    assert others == []


def test_nothing_in_the_package_imports_prefect():
    assert violations("atoma_ops", ("prefect",)) == []


def test_product_code_never_imports_the_test_doubles():
    found = sorted(
        f"{m} imports {t}" for m, ts in GRAPH.items() if within(m, "atoma_ops") and not within(m, "atoma_ops.testing")
        for t in ts if within(t, "atoma_ops.testing")
    )
    assert found == []


@pytest.mark.parametrize("layer", ["atoma_ops.chain", "atoma_ops.serving", "atoma_ops.ledger"])
def test_lower_layers_never_import_the_journal_the_lifecycle_or_the_cli(layer):
    assert violations(layer, ("atoma_ops.journal", "atoma_ops.lifecycle", "atoma_ops.cli")) == []


def test_the_home_owns_the_layout_and_imports_nothing_above_the_chain():
    """Serving and the ledger ask the home where their files live, never the reverse."""
    above = ("atoma_ops.serving", "atoma_ops.ledger", "atoma_ops.journal", "atoma_ops.lifecycle", "atoma_ops.cli")
    assert violations("atoma_ops.home", above) == []
    assert "atoma_ops.home" in GRAPH["atoma_ops.serving.store"] and "atoma_ops.home" in GRAPH["atoma_ops.ledger.store"]


def test_the_localnet_contract_and_engine_do_not_import_each_other():
    """Both use the execution context (ctx.py); the contract never reaches for the engine, even for a type."""
    assert violations("atoma_ops.chain.localnet.contract", ("atoma_ops.chain.localnet.engine",)) == []
    assert "atoma_ops.chain.localnet.ctx" in GRAPH["atoma_ops.chain.localnet.contract"]
