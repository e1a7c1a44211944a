"""The pruning run log: CSV rows across a resume, the widths/GFLOPs plot, the summary table."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from yolo_prune.errors import YoloPruneError
from yolo_prune.train.log import FIXED_COLUMNS, PruneLog, summary_table

GROUPS = ["model.0.conv", "model.1.conv", "model.2.cv1"]
BASE = [16, 32, 32]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def step(k, gflops, **kw):
    return {"step": k, "position": 1.0 + k / 4, "target_gflops": gflops, "gflops": gflops, "params": 1000 - k,
            "pruned": 8, "regrown": 0, "changed": 0, "compensated": 3, "loss": 0.2, "kd_loss": None, **kw}  # fmt: skip


def test_record_writes_header_once_and_one_row_per_step(tmp_path):
    log = PruneLog(tmp_path, GROUPS, BASE, base_gflops=8.7)
    log.record(step(0, 8.0, kd_loss=0.05), [16, 32, 24])
    log.record(step(1, 6.25, regrown=2, changed=2), [8, 24, 24])
    lines = read_csv(tmp_path / "prune_log.csv")
    assert lines[0] == FIXED_COLUMNS + GROUPS
    assert lines[1] == ["0", "1", "8", "8", "1000", "8", "0", "0", "3", "0.2", "0.05", "16", "32", "24"]
    assert lines[2][FIXED_COLUMNS.index("regrown")] == "2" and lines[2][FIXED_COLUMNS.index("kd_loss")] == ""
    rows = log.rows()
    assert [r["gflops"] for r in rows] == [8.0, 6.25]
    assert rows[1]["kd_loss"] is None and rows[1]["widths"] == [8, 24, 24]


def test_resume_appends_and_a_repeated_step_keeps_its_latest_row(tmp_path):
    PruneLog(tmp_path, GROUPS, BASE, 8.7).record(step(0, 8.0), [16, 32, 24])
    resumed = PruneLog(tmp_path, GROUPS, BASE, 8.7)  # a new process re-opens the same run folder
    resumed.record(step(1, 7.0), [16, 24, 24])  # then killed before the checkpoint: the resumed run repeats step 1
    resumed.record(step(1, 6.5), [8, 24, 24])
    resumed.record(step(2, 6.0), [8, 24, 16])
    assert [line[0] for line in read_csv(tmp_path / "prune_log.csv")] == ["step", "0", "1", "1", "2"]
    assert [(r["step"], r["gflops"]) for r in resumed.rows()] == [(0, 8.0), (1, 6.5), (2, 6.0)]


def test_resume_with_other_groups_is_one_clear_error(tmp_path):
    PruneLog(tmp_path, GROUPS, BASE, 8.7).record(step(0, 8.0), BASE)
    other = PruneLog(tmp_path, GROUPS[:2], BASE[:2], 8.7)
    with pytest.raises(YoloPruneError, match="different model"):
        other.record(step(1, 7.0), [1, 2])


def test_mismatched_lengths_raise(tmp_path):
    with pytest.raises(YoloPruneError):
        PruneLog(tmp_path, GROUPS, [1, 2], 8.7)
    with pytest.raises(YoloPruneError):
        PruneLog(tmp_path, GROUPS, BASE, 8.7).record(step(0, 1.0), [1, 2])


def test_plot_writes_png(tmp_path):
    names = [f"model.{i}.cv{i % 3}" for i in range(90)]  # enough groups that tick labels get thinned
    base = [16 * (1 + i % 4) for i in range(90)]
    log = PruneLog(tmp_path, names, base, 8.7)
    for k, keep in enumerate([1.0, 0.8, 0.6]):
        log.record(step(k, 8.7 * keep, kd_loss=0.1 * k, regrown=k), [max(1, int(w * keep)) for w in base])
    path = log.plot()
    assert path == tmp_path / "prune_widths.png" and path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 600
        pixels = np.asarray(im.convert("RGB"))
    # drawn: the dense and pruned width bars, the train loss, the kd loss and the regrown-channel curves
    for rgb in [(0xC9, 0xD6, 0xE8), (0x2F, 0x6D, 0xB5), (0xC0, 0x39, 0x2B), (0xE0, 0x8E, 0x0B), (0x27, 0xAE, 0x60)]:
        assert (np.abs(pixels.astype(int) - rgb).sum(-1) < 6).sum() > 50, rgb
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
