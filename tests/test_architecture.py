"""The layers of docs/ARCHITECTURE.md are those of the imports: which top-level part of eroseg_at imports which."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "eroseg_at"

# What training and evaluation both import: the parts below both.
BELOW_BOTH = {
    "attacks",
    "checkpoint",
    "configs",
    "data",
    "errors",
    "metrics",
    "predictions",
    "progress",
    "visualization",
}
# docs/ARCHITECTURE.md, "Layers": each part and the parts it imports (any module of it, at any depth).
LAYERS = {
    "attacks": {"predictions"},
    "data": {"errors"},
    "models": {"errors"},
    "metrics": {"predictions"},
    "checkpoint": {"attacks", "errors"},
    # Training builds models through configs; it stops on a signal after a checkpoint.
    "training": BELOW_BOTH | {"signals"},
    "evaluation": BELOW_BOTH | {"models"},
    "cli": {"configs", "errors", "evaluation", "signals", "training"},
    # Settings that cannot work together are a ConfigError (a UserError).
    "configs": {"errors"},
    # The package root names the two calls it exports on first use (evaluate_model, build_attack).
    "__init__": {"attacks", "evaluation"},
}


def part(module: str) -> str:
    """``eroseg_at.evaluation.keys`` -> ``evaluation``; ``eroseg_at.cli`` -> ``cli``."""
    return module.split(".")[1] if "." in module else module


def imported_parts(path: Path) -> set[str]:
    """The parts of eroseg_at that one module imports (the package imports absolutely, never relatively)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            # ``from eroseg_at import training`` imports a part by its name.
            parent = (
                [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "eroseg_at" else []
            )
            names += [node.module, *parent]
    return {part(name) for name in names if name.startswith("eroseg_at.")}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = part(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
        graph[source] |= imported_parts(path) - {source}
    return {source: targets for source, targets in graph.items() if targets}


def test_each_part_imports_what_the_architecture_page_says():
    assert import_graph() == LAYERS


def test_training_and_evaluation_never_import_each_other():
    graph = import_graph()
    assert "evaluation" not in graph["training"] and "training" not in graph["evaluation"]
