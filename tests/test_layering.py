"""The pipeline's layers only import downwards (nn <- graph <- masks <- methods <- train), checked with ast."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "yolo_prune"
# package -> yolo_prune subpackages it must not import
FORBIDDEN = {
    "nn": {"graph", "masks", "methods", "slim", "train", "eval", "export", "bench"},
    "graph": {"masks", "methods", "slim", "train", "eval", "export", "bench"},
    "masks": {"methods", "slim", "train", "eval", "export", "bench"},
    "methods": {"slim", "train", "eval", "export", "bench"},
    "slim": {"methods", "train", "eval", "export", "bench"},
    "eval": {"methods", "train", "masks", "slim"},
    "export": {"methods", "train", "masks"},
    "bench": {"methods", "train", "masks"},
}


def imported_subpackages(path: Path) -> set[str]:
    found = set()
    package_parts = path.relative_to(PKG.parent).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = list(package_parts[: len(package_parts) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "yolo_prune" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    for path in (PKG / layer).rglob("*.py"):
        bad = imported_subpackages(path) & FORBIDDEN[layer]
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, yolo_prune; print(any(m in sys.modules for m in ('torch', 'ultralytics', 'tensorrt')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
