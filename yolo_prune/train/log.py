"""The pruning run log: one CSV row per epoch (GFLOPs, params, alive channels per group), a plot, a summary table.

Cheap to import: matplotlib is imported inside `PruneLog.plot` only.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import YoloPruneError

CSV_NAME = "prune_log.csv"
PNG_NAME = "prune_widths.png"
FIXED_COLUMNS = ["epoch", "gflops", "params"]


class PruneLog:
    """Per-epoch record of a pruning run in `run_dir/prune_log.csv`, kept across resumed runs.

    Args:
        run_dir: the Ultralytics run folder (`runs/detect/train`).
        group_names: channel group names in model order; one CSV column each.
        base_widths: channel count of each group in the dense model.
        base_gflops: GFLOPs of the dense model, drawn as the reference line.
    """

    def __init__(self, run_dir: Path, group_names: list[str], base_widths: list[int], base_gflops: float):
        if len(group_names) != len(base_widths):
            raise YoloPruneError(f"PruneLog got {len(group_names)} group names but {len(base_widths)} base widths.")
        self.run_dir = Path(run_dir)
        self.group_names = list(group_names)
        self.base_widths = [int(w) for w in base_widths]
        self.base_gflops = float(base_gflops)
        self.csv_path = self.run_dir / CSV_NAME
        self.png_path = self.run_dir / PNG_NAME

    @property
    def header(self) -> list[str]:
        return FIXED_COLUMNS + self.group_names

    def record(self, epoch: int, gflops: float, params: int, widths: list[int]) -> None:
        """Append one row to run_dir/prune_log.csv: epoch, gflops, params, then one column per group (alive count).

        The header is written once; appending works across a resumed run (file already exists).
        """
        if len(widths) != len(self.group_names):
            raise YoloPruneError(f"PruneLog.record got {len(widths)} widths for {len(self.group_names)} groups.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new_file = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        if not new_file:
            self._check_header()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(self.header)
            writer.writerow([int(epoch), f"{float(gflops):.6g}", int(params)] + [int(w) for w in widths])

    def rows(self) -> list[dict]:
        """The logged epochs in order; an epoch logged twice (a run resumed from an earlier checkpoint) keeps its
        latest row."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return []
        self._check_header()
        by_epoch: dict[int, dict] = {}
        with open(self.csv_path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = int(row["epoch"])
                by_epoch[epoch] = {
                    "epoch": epoch,
                    "gflops": float(row["gflops"]),
                    "params": int(row["params"]),
                    "widths": [int(row[name]) for name in self.group_names],
                }
        return [by_epoch[e] for e in sorted(by_epoch)]

    def plot(self) -> Path:
        """Draw run_dir/prune_widths.png and return its path.

        Top: the width of every group, dense vs latest logged epoch, in model order. Bottom: GFLOPs over all logged
        epochs (read back from the CSV, so a resumed run shows its whole history) with the dense GFLOPs as reference.
        """
        from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's backend alone
        from matplotlib.ticker import MaxNLocator

        rows = self.rows()
        latest = rows[-1]["widths"] if rows else self.base_widths
        n = len(self.group_names)
        fig = Figure(figsize=(min(max(8.0, 0.16 * n + 2), 24.0), 7.5), layout="constrained")
        top, bottom = fig.subplots(2, 1, height_ratios=[3, 2])

        x = range(n)
        top.bar(x, self.base_widths, width=0.85, color="#c9d6e8", label="dense")
        top.bar(x, latest, width=0.55, color="#2f6db5", label=f"epoch {rows[-1]['epoch']}" if rows else "dense")
        step = max(1, -(-n // 60))  # at most ~60 tick labels stay readable
        top.set_xticks(list(x)[::step], self.group_names[::step], rotation=90, fontsize=6)
        top.set_xlim(-0.6, n - 0.4)
        top.set_ylabel("channels")
        top.set_title("Channels per group (model order)")
        top.legend(loc="upper left", fontsize=8)

        bottom.axhline(self.base_gflops, color="#888888", linestyle="--", label=f"dense {self.base_gflops:.3g} GFLOPs")
        if rows:
            bottom.plot([r["epoch"] for r in rows], [r["gflops"] for r in rows], marker="o", color="#2f6db5",
                        label="pruned")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.set_xlabel("epoch")
        bottom.set_ylabel("GFLOPs")
        bottom.set_ylim(0, 1.1 * max([self.base_gflops] + [r["gflops"] for r in rows]))
        bottom.legend(loc="upper right", fontsize=8)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.png_path.with_name(f".{self.png_path.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(tmp, dpi=110, format="png")
            os.replace(tmp, self.png_path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.png_path

    def _check_header(self):
        with open(self.csv_path, newline="") as f:
            found = next(csv.reader(f), [])
        if found != self.header:
            raise YoloPruneError(
                f"{self.csv_path} was written for a different model ({len(found) - 3} groups, expected "
                f"{len(self.group_names)}); resume into the run folder it belongs to or start a new run."
            )


_TABLE_COLUMNS = [  # (key, header, format of the value)
    ("gflops", "GFLOPs", "{:.2f}"),
    ("params", "params (M)", "{:.2f}"),
    ("map50_95", "mAP50-95", "{:.3f}"),
    ("map50", "mAP50", "{:.3f}"),
    ("size_mb", "size (MB)", "{:.1f}"),
]


def summary_table(rows: list[dict]) -> str:
    """A printed table, one row per model ('base', 'slim'): GFLOPs, params (M), mAP50-95, mAP50, file size (MB).

    Args:
        rows: dicts with "model" (the row's name) and any of "gflops", "params" (a count), "map50_95", "map50",
            "size_mb"; a missing or None value is shown as '-'.
    """

    def cell(row, key, fmt):
        value = row.get(key)
        if value is None:
            return "-"
        return fmt.format(value / 1e6 if key == "params" else value)

    header = ["model"] + [title for _, title, _ in _TABLE_COLUMNS]
    body = [[str(r.get("model", "-"))] + [cell(r, k, f) for k, _, f in _TABLE_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def fmt_line(line):
        return "  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])])

    return "\n".join(fmt_line(line) for line in [header] + body)
