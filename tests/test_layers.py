"""The layers of pipeline/ point one way (docs/architecture.md): every import of every module, at
its top or inside a function, read from the source, goes to its own layer or one below it.

    leaves      errors, sections, progress, media, fs, locks
    formats     what stages write and read back: shards, reader, codes, models
    models      pure PyTorch: they import nothing of the pipeline but each other
    modalities  the interface, the registry, the shared helpers, image, speech/, video/
    config      the settings tree
    services    tracking/ (MLflow), runtime (Ray)
    stages      one module per job, train/, cli
    jobs        argument parsing only: they import the cli and the stages

Only imports under `if TYPE_CHECKING:` (names for annotations, never run) are left out."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

LAYERS = [
    ("leaves", ["pipeline", "pipeline.errors", "pipeline.sections", "pipeline.progress", "pipeline.media",
                "pipeline.fs", "pipeline.locks"]),
    ("formats", ["pipeline.formats"]),
    ("models", ["pipeline.models"]),
    ("modalities", ["pipeline.modalities"]),
    ("config", ["pipeline.config"]),
    ("services", ["pipeline.tracking", "pipeline.runtime"]),
    ("stages", ["pipeline.stages", "pipeline.cli"]),
    ("jobs", ["jobs"]),
]


def layer(module: str) -> int:
    """The layer of a module: the longest prefix any layer names."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to docs/architecture.md and to LAYERS"
    return rank


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    for path in sorted((REPO / "jobs").glob("[!_]*.py")):  # jobs/_repo.py: the import path only
        found[f"jobs.{path.stem}"] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, known: set[str]) -> set[str]:
    """The pipeline modules `path` imports; `from pipeline.x import y` names pipeline.x.y when
    that is a module, else pipeline.x."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "pipeline":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


GRAPH = {name: imports(path, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_no_layer_above_its_own(module):
    mine = layer(module)
    above = sorted(f"{m} ({LAYERS[layer(m)][0]})" for m in GRAPH[module] if layer(m) > mine)
    assert not above, f"{module} ({LAYERS[mine][0]}) imports {', '.join(above)}"


def test_models_import_nothing_of_the_pipeline_but_models():
    for module, imported in GRAPH.items():
        if layer(module) == layer("pipeline.models"):
            assert all(m.startswith("pipeline.models") for m in imported), (module, imported)


def test_jobs_only_parse_arguments_and_call_a_stage():
    for module, imported in GRAPH.items():
        if module.startswith("jobs."):
            assert imported and all(m == "pipeline.cli" or m.startswith("pipeline.stages") for m in imported), \
                (module, imported)


def test_no_two_modules_import_each_other_even_through_others():
    """No import cycles (a package's own __init__ importing its modules, as a registry does, aside)."""
    edges = {m: {i for i in imported if not i.startswith(m + ".")} for m, imported in GRAPH.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert not cycles, cycles


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipeline.config\n"
                      "def f():\n    from pipeline.stages.shard import shard\n")
    assert imports(source, {"pipeline.stages.shard"}) == {"pipeline.stages.shard"}
    assert layer("pipeline.stages.shard") > layer("pipeline.modalities.image")
