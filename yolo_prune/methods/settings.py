"""PruneSettings: everything that defines a pruning run, in one dataclass (the flags and API keywords of `train` and
`prune` are generated from it, see yolo_prune/options.py), and the split of API keywords into settings, the chosen
method's options and Ultralytics arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import YoloPruneError
from ..masks.budget import MIN_KEEP, ROUND_TO
from ..options import Options, flag_fields, setting
from .base import build_options, get_method, list_methods, option_owners


@dataclass
class PruneSettings(Options):
    """Everything that defines a pruning run; validated once, saved in last.pt, passed to DDP children as JSON."""

    flops: float = setting(0.0, "fraction of FLOPs to remove, e.g. 0.37 (0 = train without pruning)")
    method: str = setting("effp", "pruning method", choices=lambda: _methods(in_training=True))
    imgsz: int = setting(640, "image size at which FLOPs are counted (the papers' and Ultralytics' convention)")
    round_to: int = setting(ROUND_TO, "kept widths are multiples of this (TensorRT FP16: 8; INT8 or DLA: 16 or 32)")
    min_keep: float = setting(MIN_KEEP, "floor: never keep less than this fraction of a channel group")
    warmup_frac: float = setting(0.1, "share of the run trained dense before the first pruning step")
    prune_frac: float = setting(0.6, "share of the run at which the FLOPs target is reached; fixed masks afterwards")
    steps_per_epoch: int = setting(4, "pruning steps per epoch during the pruning phase")
    compensate: bool | None = setting(
        None,
        lambda: (
            "hand masked channels over to their consumers by least squares (train/compensate.py); default: on when "
            "training starts from weights (learned channel correlations to use), off from scratch (measured worse)"
            + _compensation_exceptions()
        ),
    )
    distill: float | None = setting(
        None,
        lambda: (
            "weight of feature distillation from the dense starting model (train/distill.py); default: 1 with "
            "--weights, else 0 (off)" + _distill_exceptions()
        ),
    )
    freeze_bn: bool | None = setting(
        None,
        "train with every BatchNorm normalising by its running statistics, frozen, as at inference; default: on "
        "when fine-tuning from weights without pruning (measured better on a small set), off while pruning (the "
        "batch statistics absorb each mask change: measured no better frozen) and when fine-tuning a `yolo-prune "
        "prune` checkpoint (its statistics are the dense model's: measured worse frozen)",
    )
    criterion: str = setting(
        "taylor",
        "channel scores of effp and asfp: 'taylor' of the training loss, or 'damage', the second-order rise of the "
        "distance to the dense model at the head inputs (methods/damage.py; 2 extra passes per pruning step)",
        choices=["taylor", "damage"],
    )
    latency: float = setting(0.0, "fraction of latency to remove instead of FLOPs, e.g. 0.3 (batch 1 at the FLOPs "
                             "image size on --backend; predicted from a measured table, docs/latency.md)")  # fmt: skip
    backend: str = setting("onnxruntime", "where latency is measured (with --latency)",
                           choices=["onnxruntime", "tensorrt"])  # fmt: skip
    lut: str | None = setting(None, "latency table from `yolo-prune profile` (with --latency); default: measured once "
                              "and cached under ~/.cache/yolo-prune/latency (the path is printed)")  # fmt: skip
    # the chosen method's options (its Options dataclass as a dict, every field filled in by validate)
    options: dict = field(default_factory=dict, metadata={"flag": False})

    @property
    def cut(self) -> float:
        """The fraction to remove, of FLOPs or of latency (0: no pruning)."""
        return self.latency or self.flops

    def check(self) -> None:
        if not 0 <= self.flops < 1:
            raise YoloPruneError(f"--flops must be a fraction in [0, 1) (e.g. 0.37), got {self.flops}.")
        if self.flops and self.latency:
            raise YoloPruneError("Give either --flops (fraction of FLOPs to remove) or --latency (fraction of "
                                 "latency to remove), not both.")  # fmt: skip
        if not 0 <= self.latency < 1:
            raise YoloPruneError(f"--latency must be a fraction in [0, 1) (e.g. 0.3), got {self.latency}.")
        if self.backend not in ("onnxruntime", "tensorrt"):
            raise YoloPruneError(f"--backend must be onnxruntime or tensorrt, got '{self.backend}'.")
        if self.lut is not None and not self.latency:
            raise YoloPruneError("--lut is the latency table for --latency; add --latency L or drop --lut.")
        if not 0 <= self.warmup_frac < self.prune_frac <= 1:
            raise YoloPruneError(
                f"Need 0 <= --warmup-frac < --prune-frac <= 1, got {self.warmup_frac} and {self.prune_frac}."
            )
        if self.steps_per_epoch < 1:
            raise YoloPruneError(f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}.")
        if self.distill is not None and not self.distill >= 0:
            raise YoloPruneError(f"--distill must be a weight >= 0 (0 switches distillation off), got {self.distill}.")
        if self.criterion not in ("taylor", "damage"):
            raise YoloPruneError(f"--criterion must be 'taylor' or 'damage', got {self.criterion!r}.")
        if self.round_to < 1:
            raise YoloPruneError(f"--round-to must be a positive integer, got {self.round_to}.")
        if not 0 <= self.min_keep <= 1:
            raise YoloPruneError(f"--min-keep must be within [0, 1], got {self.min_keep}.")

    def validate(self, one_shot: bool = False) -> PruneSettings:
        """Types and ranges, the method (one usable in training, or one-shot), and the method's options."""
        super().validate()
        cls = get_method(self.method)
        if self.cut and one_shot and not cls.one_shot:
            raise YoloPruneError(f"Method '{self.method}' prunes during training; use `yolo-prune train --method "
                                 f"{self.method}`.")  # fmt: skip
        if self.cut and not one_shot and not cls.in_training:
            raise YoloPruneError(f"Method '{self.method}' prunes a trained model at once; use `yolo-prune prune "
                                 f"--method {self.method}`, or one of {_methods(in_training=True)} here.")  # fmt: skip
        self.options = build_options(self.method, self.options).to_dict()
        return self


def _compensation_exceptions() -> str:
    """The methods whose from-weights default is not 'on at every cut' (PruningMethod.compensate_from_cut)."""
    late = {m: get_method(m).compensate_from_cut for m in _methods(in_training=True)}
    parts = [f"{m}: only from a cut of {c:g}" if math.isfinite(c) else f"{m}: never" for m, c in late.items() if c > 0]
    return "".join(f"; {p}" for p in parts)


def _distill_exceptions() -> str:
    """The methods that prune from weights without distillation by default (PruningMethod.distill_from_weights)."""
    off = [m for m in _methods(in_training=True) if not get_method(m).distill_from_weights]
    return f"; 0 for {', '.join(off)} when pruning (measured better without)" if off else ""


def _methods(in_training: bool) -> list[str]:
    return list_methods(one_shot=not in_training)


TRAIN_RENAME = {"imgsz": "flops_imgsz"}  # `train --imgsz` / `imgsz=` is Ultralytics' training image size


def split_keywords(kwargs: dict, rename: dict[str, str] | None = None) -> tuple[dict, dict, dict]:
    """Python API keywords -> (PruneSettings fields, method options, the rest: Ultralytics arguments)."""
    public = {(rename or {}).get(f.name, f.name): f.name for f in flag_fields(PruneSettings)}
    owners = option_owners()
    settings, options, rest = {}, {}, {}
    for key, value in kwargs.items():
        if key in public:
            settings[public[key]] = value
        elif key in owners:
            options[key] = value
        else:
            rest[key] = value
    return settings, options, rest
