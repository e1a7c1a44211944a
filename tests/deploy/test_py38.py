"""The kit runs on JetPack 5's Python 3.8 without torch or Ultralytics."""

import ast
import os
import shutil
import subprocess

import pytest

# names that only exist from Python 3.9 on (syntax alone would not catch them)
PY39_ATTRIBUTES = {"removeprefix", "removesuffix", "is_relative_to", "cache", "topological_sort"}
ALLOWED_IMPORTS = {"argparse", "contextlib", "hashlib", "io", "json", "os", "sys", "tempfile", "time", "types",
                   "typing", "numpy", "cv2", "tensorrt", "pycuda", "pycocotools", "onnxruntime", "onnx", "yolokit",
                   "runtimes", "trtkit", "sitegraph", "build_engine"}  # fmt: skip


def kit_files(kit_dir):
    files = sorted(kit_dir.glob("*.py"))
    assert {f.name for f in files} >= {"yolokit.py", "runtimes.py", "trtkit.py", "detect.py", "benchmark.py",
                                       "build_engine.py", "sitegraph.py", "profile_latency.py"}
    return files


def test_kit_is_python38_syntax(kit_dir):
    for file in kit_files(kit_dir):
        tree = ast.parse(file.read_text(), filename=str(file), feature_version=(3, 8))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in PY39_ATTRIBUTES, f"{file.name}:{node.lineno} uses .{node.attr} (Python 3.9+)"
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                # list[int] / dict[...] at run time is 3.9+; the kit uses typing.List / Dict
                assert node.value.id not in {"list", "dict", "tuple", "set", "type"}, f"{file.name}:{node.lineno}"
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
                names = [n.id for n in (node.left, node.right) if isinstance(n, ast.Name)]
                assert "None" not in names and not {"int", "str", "float"} & set(names), f"{file.name}:{node.lineno}"
            if isinstance(node, ast.keyword) and node.arg == "strict":
                raise AssertionError(f"{file.name}:{node.lineno} zip(strict=) is Python 3.10+")


def test_kit_imports_nothing_from_the_host(kit_dir):
    for file in kit_files(kit_dir):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    assert name.split(".")[0] in ALLOWED_IMPORTS, f"{file.name} imports {name}"


def python38() -> str | None:
    """A working Python 3.8: $PYTHON38, or python3.8 on the PATH (a pyenv shim may exist yet not run)."""
    for candidate in (os.environ.get("PYTHON38"), shutil.which("python3.8")):
        if candidate:
            done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                  text=True)  # fmt: skip
            if done.returncode == 0 and done.stdout.strip() == "(3, 8)":
                return candidate
    return None


def test_kit_compiles_with_python38(kit_dir, tmp_path):
    interpreter = python38()
    if interpreter is None:
        pytest.skip("no working Python 3.8 here (set PYTHON38=/path/to/python3.8 to run this check)")
    for file in kit_files(kit_dir):
        cfile = str(tmp_path / (file.name + "c"))
        code = f"import py_compile; py_compile.compile({str(file)!r}, cfile={cfile!r}, doraise=True)"
        done = subprocess.run([interpreter, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
