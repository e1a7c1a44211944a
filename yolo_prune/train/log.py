"""The pruning run log: one CSV row per pruning step (what changed, GFLOPs, loss, widths per group), a plot, a table.

Cheap to import: matplotlib is imported inside `PruneLog.plot` only.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import YoloPruneError

CSV_NAME = "prune_log.csv"
PNG_NAME = "prune_widths.png"
# position: epochs (fractional) at the step; pruned / regrown: channels newly masked / unmasked by the step; changed:
# channels that changed identity within a group at the same width (a swap counts once); compensated: convs whose
# weights took over masked inputs (train/compensate.py); loss / kd_loss: mean train
# loss per image (Ultralytics' items summed, kd separately) over the batches since the previous step
FIXED_COLUMNS = ["step", "position", "target_gflops", "gflops", "params", "pruned", "regrown", "changed",
                 "compensated", "loss", "kd_loss"]  # fmt: skip


class PruneLog:
    """Per-step record of a pruning run in `run_dir/prune_log.csv`, kept across resumed runs.

    Columns: FIXED_COLUMNS, then the method's evidence columns (`ctx.log(name=value)`: numbers or short text; a new
    name adds a column, earlier rows left empty), then one width column per channel group.

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
    def extra_columns(self) -> list[str]:
        """The method evidence columns in the file so far."""
        found = self._read_header()
        return found[len(FIXED_COLUMNS) : len(found) - len(self.group_names)] if found else []

    @property
    def header(self) -> list[str]:
        return FIXED_COLUMNS + self.extra_columns + self.group_names

    def record(self, row: dict, widths: list[int], extra: dict | None = None) -> None:
        """Append one step: `row` holds the FIXED_COLUMNS (a missing value is written empty), `extra` the method's
        evidence, then the widths. The header is written once (rewritten when a new evidence column appears);
        appending works across a resumed run (file already exists)."""
        if len(widths) != len(self.group_names):
            raise YoloPruneError(f"PruneLog.record got {len(widths)} widths for {len(self.group_names)} groups.")
        extra = dict(extra or {})
        clash = set(extra) & set(FIXED_COLUMNS + self.group_names)
        if clash:
            raise YoloPruneError(f"Method log columns {sorted(clash)} clash with the prune log's own columns; rename "
                                 "them in the method's ctx.log(...).")  # fmt: skip
        self.run_dir.mkdir(parents=True, exist_ok=True)
        columns = self.extra_columns
        new = [k for k in extra if k not in columns]
        if new and self._read_header():
            self._add_columns(columns + new)
        columns = columns + new
        write_header = not self._read_header()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if write_header:
                writer.writerow(FIXED_COLUMNS + columns + self.group_names)
            writer.writerow([_cell(row.get(k)) for k in FIXED_COLUMNS] + [_cell(extra.get(k)) for k in columns]
                            + [int(w) for w in widths])  # fmt: skip

    def rows(self) -> list[dict]:
        """The logged steps in order (the method's evidence under "extra"); a step logged twice (a run resumed from
        an earlier checkpoint) keeps its latest row."""
        if not self._read_header():
            return []
        extras = self.extra_columns
        by_step: dict[int, dict] = {}
        with open(self.csv_path, newline="") as f:
            for line in csv.DictReader(f):
                row = {k: (float(line[k]) if line[k] != "" else None) for k in FIXED_COLUMNS}
                row["step"] = int(row["step"])
                row["widths"] = [int(line[name]) for name in self.group_names]
                row["extra"] = {k: _value(line[k]) for k in extras}
                by_step[row["step"]] = row
        return [by_step[k] for k in sorted(by_step)]

    def _read_header(self) -> list[str]:
        """The file's header, checked against this model's groups ([] when there is no file yet)."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return []
        with open(self.csv_path, newline="") as f:
            found = next(csv.reader(f), [])
        n = len(self.group_names)
        if found[: len(FIXED_COLUMNS)] != FIXED_COLUMNS or len(found) < len(FIXED_COLUMNS) + n or \
                found[len(found) - n :] != self.group_names:  # fmt: skip
            raise YoloPruneError(
                f"{self.csv_path} was written for a different model or version; resume into the run folder it "
                "belongs to or start a new run."
            )
        return found

    def _add_columns(self, extras: list[str]) -> None:
        """Rewrite the file with more evidence columns (earlier rows empty there), atomically."""
        with open(self.csv_path, newline="") as f:
            old = list(csv.DictReader(f))
        header = FIXED_COLUMNS + extras + self.group_names
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows([line.get(k, "") or "" for k in header] for line in old)
            os.replace(tmp, self.csv_path)
        finally:
            tmp.unlink(missing_ok=True)

    def plot(self) -> Path:
        """Draw run_dir/prune_widths.png and return its path.

        Top: the width of every group, dense vs the last step, in model order. Middle: target and actual GFLOPs per
        step over training position, with the mean train loss (and kd loss) on a second axis. Bottom: channels
        pruned, regrown and changed per step. Read back from the CSV, so a resumed run shows its whole history.
        """
        from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's backend alone

        rows = self.rows()
        n = len(self.group_names)
        evidence = [k for k in self.extra_columns if any(isinstance(r["extra"][k], float) for r in rows)]
        panels, ratios = (4, [3, 2, 1.5, 1.5]) if evidence else (3, [3, 2, 1.5])
        fig = Figure(figsize=(min(max(8.0, 0.16 * n + 2), 24.0), 10.0 + 2.5 * bool(evidence)), layout="constrained")
        axes = fig.subplots(panels, 1, height_ratios=ratios)
        self._plot_widths(axes[0], rows)
        self._plot_steps(axes[1], axes[2], rows)
        if evidence:
            self._plot_evidence(axes[3], rows, evidence)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.png_path.with_name(f".{self.png_path.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(tmp, dpi=110, format="png")
            os.replace(tmp, self.png_path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.png_path

    def _plot_widths(self, ax, rows):
        latest = rows[-1]["widths"] if rows else self.base_widths
        n = len(self.group_names)
        ax.bar(range(n), self.base_widths, width=0.85, color="#c9d6e8", label="dense")
        ax.bar(range(n), latest, width=0.55, color="#2f6db5", label=f"step {rows[-1]['step']}" if rows else "dense")
        step = max(1, -(-n // 60))  # at most ~60 tick labels stay readable
        ax.set_xticks(list(range(n))[::step], self.group_names[::step], rotation=90, fontsize=6)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel("channels")
        ax.set_title("Channels per group (model order)")
        ax.legend(loc="upper left", fontsize=8)

    def _plot_steps(self, ax, churn, rows):
        x = [r["position"] for r in rows]
        ax.axhline(self.base_gflops, color="#888888", linestyle="--", label=f"dense {self.base_gflops:.3g} GFLOPs")
        if rows:
            targets = [(r["position"], r["target_gflops"]) for r in rows if r["target_gflops"] is not None]
            if targets:  # none in a latency-targeted run (its target is in ms)
                ax.plot(*zip(*targets), color="#999999", label="target")
            ax.plot(x, [r["gflops"] for r in rows], marker=".", color="#2f6db5", label="pruned")
        ax.set_ylabel("GFLOPs")
        ax.set_ylim(0, 1.1 * max([self.base_gflops] + [r["gflops"] for r in rows]))
        ax.legend(loc="lower left", fontsize=8)
        loss = ax.twinx()
        for key, colour in (("loss", "#c0392b"), ("kd_loss", "#e08e0b")):
            pts = [(r["position"], r[key]) for r in rows if r[key] is not None]
            if pts:
                loss.plot(*zip(*pts), color=colour, linewidth=1.5, label=f"train {key} (mean since last step)")
        loss.set_ylabel("loss per image")
        if loss.lines:
            loss.legend(loc="upper right", fontsize=8)
        for key, colour in (("pruned", "#2f6db5"), ("regrown", "#27ae60"), ("changed", "#8e44ad")):
            churn.plot(x, [r[key] for r in rows], marker=".", linewidth=1.5, color=colour, label=key)
        churn.set_xlabel("training position (epochs)")
        churn.set_ylabel("channels per step")
        churn.legend(loc="upper right", fontsize=8)

    @staticmethod
    def _plot_evidence(ax, rows, columns):
        """The method's numeric evidence per step, each series scaled to its largest magnitude (shown in the label)."""
        for key in columns:
            pts = [(r["position"], r["extra"][key]) for r in rows if isinstance(r["extra"][key], float)]
            top = max(abs(v) for _, v in pts) or 1.0
            ax.plot([p for p, _ in pts], [v / top for _, v in pts], marker=".", linewidth=1.2,
                    label=f"{key} (max {top:.3g})")  # fmt: skip
        ax.set_xlabel("training position (epochs)")
        ax.set_ylabel("method evidence (scaled)")
        ax.legend(loc="upper right", fontsize=7)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    try:
        return f"{float(value):.6g}"  # numpy and torch scalars
    except (TypeError, ValueError):
        return str(value)


def _value(text: str):
    """A CSV cell back: None (empty), a float, or the text."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


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
