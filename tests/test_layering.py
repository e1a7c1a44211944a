"""The package's import structure, read with ast (function-level imports included, so lazy imports count too):

- the pipeline's layers only import downwards: nn -> graph -> masks -> methods -> slim -> train -> eval/export/bench,
  and slimming and the deployment stages not even all of those (INDEPENDENT);
- the support modules (errors, checkpoint, safe_load, data, demo_data) import no pipeline layer but nn;
- the entry modules (package __init__, _ultralytics, api, cli, __main__) are imported by no layer or support module;
- the Jetson kit (deploy/, Python 3.8, no torch) imports nothing of yolo_prune;
- no two modules import each other, directly or around a cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "yolo_prune"
PIPELINE = ["nn", "graph", ("masks", "latency"), "methods", "slim", "train", ("eval", "export", "bench")]
SUPPORT = {"errors", "checkpoint", "safe_load", "data", "demo_data", "options"}
ENTRY = {"__init__", "_ultralytics", "api", "cli", "__main__"}
RANK = {name: r for r, layer in enumerate(PIPELINE) for name in ([layer] if isinstance(layer, str) else layer)}
# below them, but still not theirs to import: slimming and the deployment stages work on any model, however pruned
INDEPENDENT = {"slim": {"methods"}, "eval": {"methods", "masks", "slim", "train"},
               "export": {"methods", "masks", "train"}, "bench": {"methods", "masks", "train"}}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The yolo_prune modules `path` imports (for `from x import y`, both x and x.y: y may be a submodule)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.split(".")[0] == "yolo_prune"}


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}
# a module's own ancestor packages are imported before it anyway (`from .. import x` names one): not an edge
GRAPH = {name: {m for m in imports(p) if m in MODULES and not (name + ".").startswith(m + ".")}
         for name, p in MODULES.items()}  # fmt: skip


def part(name: str) -> str:
    """The subpackage or top-level module a module belongs to: yolo_prune.nn.anchor.heads -> nn."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_is_classified():
    assert {part(m) for m in MODULES} == set(RANK) | SUPPORT | ENTRY


@pytest.mark.parametrize("layer", sorted(RANK))
def test_layer_imports_only_downwards(layer):
    for name in (m for m in MODULES if part(m) == layer):
        for target in GRAPH[name]:
            other = part(target)
            assert other not in ENTRY, f"{name} imports the entry module {target}"
            assert other in SUPPORT or RANK[other] <= RANK[layer], f"{name} imports {target} (a layer above)"
            assert other not in INDEPENDENT.get(layer, ()), f"{name} imports {target}"


def test_support_modules_import_no_layer_but_nn():
    for name in (m for m in MODULES if part(m) in SUPPORT):
        assert {part(t) for t in GRAPH[name]} <= SUPPORT | {"nn"}, f"{name} imports {sorted(GRAPH[name])}"


def test_no_import_cycles():
    done, active = set(), []

    def visit(name):
        if name in active:
            cycle = active[active.index(name) :] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        active.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        active.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_the_jetson_kit_imports_nothing_of_yolo_prune():
    for path in (ROOT / "deploy").rglob("*.py"):
        assert not imports(path), f"{path.relative_to(ROOT)} imports {sorted(imports(path))}"


def test_import_installs_and_loads_only_what_it_needs():
    """`import yolo_prune` installs into Ultralytics (so it imports torch and ultralytics), nothing heavier."""
    code = (
        "import sys, yolo_prune, ultralytics.nn.tasks as t; "
        "print(t.SPPCSPC.__module__, [m for m in ('tensorrt', 'onnx', 'matplotlib', 'yolo_prune.train.trainer', "
        "'yolo_prune.graph') if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["yolo_prune.nn.modules", "[]"]
