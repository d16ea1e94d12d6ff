"""Imports between hms_core modules: no cycles, and they point down the layers only.

The imports are read from the source (an AST walk), not by importing: module-level and
function-level imports both count, and ``from a import b`` where ``a.b`` is a module counts
as importing ``a.b``. A module may import modules of its own layer or of lower layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "hms_core"

# Highest layer first (numbered len(LAYERS) - 1 down to 0); a module belongs to the layer of
# its longest matching prefix.
LAYERS = (
    # entry points and operator verbs; config.schema (the schema generator) and
    # config.sections (the parse-time check) import every section's config class
    ("hms_core.cli", "hms_core.inference", "hms_core.ops", "hms_core.config.schema",
     "hms_core.config.sections"),
    # the stages after training: ensemble, ONNX export, results file and report figures
    ("hms_core.ensemble", "hms_core.export", "hms_core.report", "hms_core.results"),
    # training: the engine and train_fold, foundation pretraining and transfer, tuning
    ("hms_core.train", "hms_core.foundation", "hms_core.tune"),
    # the networks
    ("hms_core.models",),
    # data in, signal processing, window stores
    ("hms_core.signal", "hms_core.store", "hms_core.shard_reader", "hms_core.data", "hms_core.preprocess"),
    # facts and plumbing every layer uses; workflow.py sets up a process (log, threads) for
    # every entry point, Snakemake job or torchrun rank, and imports nothing of hms_core
    ("hms_core", "hms_core.contract", "hms_core.config", "hms_core.paths", "hms_core.status",
     "hms_core.errors", "hms_core.atomic", "hms_core.metrics", "hms_core.hashing",
     "hms_core.workflow", "hms_core.tracking"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The hms_core modules that module ``name`` (file ``path``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "import a.b.c" of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def layer_of(name: str) -> int | None:
    """``name``'s layer (0 = the bottom), by its longest prefix in :data:`LAYERS`."""
    best, layer = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, len(LAYERS) - 1 - i
    return layer


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or None when the graph has none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    unplaced = [name for name in all_modules() if layer_of(name) is None]
    assert not unplaced, f"add these modules to LAYERS in {Path(__file__).name}: {unplaced}"


def test_imports_point_down_the_layers():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in sorted(import_graph().items()) for target in sorted(targets)
              if layer_of(target) is not None and layer_of(target) > layer_of(name)]
    assert not upward, "imports must point down (layer 0 is the bottom):\n" + "\n".join(upward)


def test_the_walk_sees_function_level_and_submodule_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from hms_core import atomic\n\n\ndef f():\n    from hms_core.ensemble.stacking "
                      "import StackedHead\n    import hms_core.errors\n")
    modules = set(all_modules())
    assert imported_modules("hms_core.probe", source, modules) == {
        "hms_core.atomic", "hms_core.ensemble.stacking", "hms_core.errors"}


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(("name", "layer"), [("hms_core.config.schema", 5), ("hms_core.config", 0),
                                             ("hms_core.ops.monitor", 5), ("hms_core.status", 0)])
def test_longest_prefix_decides_the_layer(name, layer):
    assert layer_of(name) == layer
