"""Tests that read ../shared/data also pass when ../shared is a symbolic link (Ultralytics resolves image paths)."""

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FILES = ["eval/test_coco_ground_truth.py", "export/test_int8_calibration.py"]  # they compare paths with the data code's


def test_path_comparing_tests_pass_with_a_symlinked_shared_folder(tmp_path, coco128):
    shared = coco128.parents[1]  # the real ../shared
    shutil.copytree(TESTS, tmp_path / "repo" / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *FILES],
                         cwd=tmp_path / "repo" / "tests", capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert "passed" in run.stdout and "shared data folder" not in run.stdout, run.stdout[-3000:]  # really ran
