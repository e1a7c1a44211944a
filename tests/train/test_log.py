"""The pruning run log: CSV rows across a resume, the widths/GFLOPs plot, the summary table."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from yolo_prune.errors import YoloPruneError
from yolo_prune.train.log import PruneLog, summary_table

GROUPS = ["model.0.conv", "model.1.conv", "model.2.cv1"]
BASE = [16, 32, 32]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_record_writes_header_once_and_rows(tmp_path):
    log = PruneLog(tmp_path, GROUPS, BASE, base_gflops=8.7)
    log.record(0, 8.7, 3_000_000, [16, 32, 32])
    log.record(1, 6.25, 2_100_000, [12, 24, 30])
    assert read_csv(tmp_path / "prune_log.csv") == [
        ["epoch", "gflops", "params"] + GROUPS,
        ["0", "8.7", "3000000", "16", "32", "32"],
        ["1", "6.25", "2100000", "12", "24", "30"],
    ]


def test_resume_appends_to_existing_file(tmp_path):
    PruneLog(tmp_path, GROUPS, BASE, 8.7).record(0, 8.0, 2_900_000, [15, 30, 32])
    resumed = PruneLog(tmp_path, GROUPS, BASE, 8.7)  # a new process re-opens the same run folder
    resumed.record(1, 7.0, 2_500_000, [14, 28, 31])
    resumed.record(2, 6.0, 2_200_000, [13, 26, 30])
    lines = read_csv(tmp_path / "prune_log.csv")
    assert [line[0] for line in lines] == ["epoch", "0", "1", "2"]
    assert [r["gflops"] for r in resumed.rows()] == [8.0, 7.0, 6.0]
    assert resumed.rows()[-1]["widths"] == [13, 26, 30]


def test_epoch_logged_twice_keeps_latest_row(tmp_path):
    log = PruneLog(tmp_path, GROUPS, BASE, 8.7)
    log.record(0, 8.0, 1, [16, 32, 32])
    log.record(1, 7.0, 1, [15, 31, 32])  # then killed before the epoch-1 checkpoint: resume repeats epoch 1
    log.record(1, 6.5, 1, [14, 30, 32])
    assert [(r["epoch"], r["gflops"]) for r in log.rows()] == [(0, 8.0), (1, 6.5)]


def test_resume_with_other_groups_is_one_clear_error(tmp_path):
    PruneLog(tmp_path, GROUPS, BASE, 8.7).record(0, 8.0, 1, BASE)
    other = PruneLog(tmp_path, GROUPS[:2], BASE[:2], 8.7)
    with pytest.raises(YoloPruneError, match="different model"):
        other.record(1, 7.0, 1, [1, 2])


def test_mismatched_lengths_raise(tmp_path):
    with pytest.raises(YoloPruneError):
        PruneLog(tmp_path, GROUPS, [1, 2], 8.7)
    with pytest.raises(YoloPruneError):
        PruneLog(tmp_path, GROUPS, BASE, 8.7).record(0, 1.0, 1, [1, 2])


def test_plot_writes_png(tmp_path):
    names = [f"model.{i}.cv{i % 3}" for i in range(90)]  # enough groups that tick labels get thinned
    base = [16 * (1 + i % 4) for i in range(90)]
    log = PruneLog(tmp_path, names, base, 8.7)
    for epoch, keep in enumerate([1.0, 0.8, 0.6]):
        log.record(epoch, 8.7 * keep, 1000, [max(1, int(w * keep)) for w in base])
    path = log.plot()
    assert path == tmp_path / "prune_widths.png" and path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 600
        pixels = np.asarray(im.convert("RGB"))
    # both bar colours are drawn: the dense widths and the latest (pruned) ones
    for rgb in [(0xC9, 0xD6, 0xE8), (0x2F, 0x6D, 0xB5)]:
        assert (np.abs(pixels.astype(int) - rgb).sum(-1) < 6).sum() > 500
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_without_rows_shows_dense(tmp_path):
    path = PruneLog(tmp_path / "new", GROUPS, BASE, 8.7).plot()
    assert path.is_file() and path.stat().st_size > 0


def test_summary_table_aligns_and_marks_missing():
    table = summary_table([
        {"model": "base", "gflops": 13.2, "params": 6_020_000, "map50_95": 0.4123, "map50": 0.6, "size_mb": 12.34},
        {"model": "slim", "gflops": 4.9, "params": 2_100_000, "map50_95": None, "map50": 0.587, "size_mb": 4.4},
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "GFLOPs", "params", "(M)", "mAP50-95", "mAP50", "size", "(MB)"]
    assert lines[1].split() == ["base", "13.20", "6.02", "0.412", "0.600", "12.3"]
    assert lines[2].split() == ["slim", "4.90", "2.10", "-", "0.587", "4.4"]
    assert len({len(line) for line in lines}) == 1  # right-aligned columns: every line equally long
    assert lines[0].index("mAP50-95") + len("mAP50-95") == lines[2].index("-") + 1


def test_import_is_cheap():
    code = "import sys, yolo_prune.train.log; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
