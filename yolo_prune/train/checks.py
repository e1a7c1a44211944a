"""What `yolo-prune train` checks before the trainer starts: a bad request fails with one error and writes nothing.

Ultralytics creates the run folder (args.yaml, weights/) in the trainer's constructor and finds most problems later
(a dataset at its first look, an unreachable FLOPs cut at the first pruning step), so each of these runs first.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import YoloPruneError

MAX_STRIDE = 32  # the largest stride of the detectors yolo-prune builds (P3-P5 heads)


def check_data(data) -> tuple[Path, dict]:
    """The dataset YAML (the embedded demo set when None) and Ultralytics' checked dataset dict, as the trainer will
    read it: a missing file, missing image folders or a malformed YAML fail here."""
    from ..data import dataset_yaml, load_dataset

    file = dataset_yaml(data)
    info = load_dataset(file)
    for split in ("train", "val"):
        if not info.get(split):
            raise YoloPruneError(f"Dataset '{file}' has no '{split}' split; training needs both train and val.")
    return file, info


def check_train_args(overrides: dict) -> None:
    """The numeric train arguments that Ultralytics would only trip over later (with a traceback)."""
    epochs = overrides.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise YoloPruneError(f"--epochs must be a whole number >= 1, got {epochs}.")
    if overrides.get("imgsz") is not None:
        check_imgsz(overrides["imgsz"])


def check_imgsz(imgsz, stride: int = MAX_STRIDE) -> int:
    """`imgsz` as an int, or one error when it is not a positive multiple of the model stride."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz <= 0 or imgsz % stride:
        raise YoloPruneError(f"--imgsz must be a positive multiple of the model stride {stride} (e.g. 640 or 320), "
                             f"got {imgsz}.")  # fmt: skip
    return imgsz


def check_classes(model, nc: int, weights) -> None:
    """A trained or pruned model keeps its class count: its head must match the dataset's."""
    have = getattr(model.model[-1], "nc", None)
    if have != nc:
        raise YoloPruneError(f"--weights {weights} predicts {have} classes, the dataset has {nc}; train on a dataset "
                             "with the same classes (a pruned head cannot be rebuilt for another count).")  # fmt: skip


def check_reachable(model, settings, measure=None) -> None:
    """Fail now, not at the first pruning step, when the cut is deeper than the floors allow (or, with --latency,
    when the latency table does not fit the model; a missing table is measured here by `measure`, once, and
    cached for the trainer to read)."""
    if not settings.cut:
        return
    from ..graph.analyze import analyze
    from ..masks.budget import Budget
    from .pruner import cost_model

    graph = analyze(model, settings.imgsz)
    budget = Budget(graph, settings.round_to, settings.min_keep, cost=cost_model(model, graph, settings, measure))
    base, floor = budget.cost.total(), budget.min_total()
    if base * (1 - settings.cut) < floor - 1e-9:
        flag = "--latency" if settings.latency else "--flops"
        raise YoloPruneError(
            f"{flag} {settings.cut} is unreachable for this model with --round-to {settings.round_to} and "
            f"--min-keep {settings.min_keep}: the largest reachable cut is {1 - floor / base:.3f}. Lower {flag} "
            "or --min-keep."
        )
