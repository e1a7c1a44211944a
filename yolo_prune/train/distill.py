"""Distillation from the dense starting model: the masked student imitates its frozen copy at the head's inputs.

Why: fine-tuning on a few hundred images cannot re-teach a pruned network what its removed channels knew, but the
dense model it started from still knows it. A frozen copy taken when training starts (the pretrained weights) is the
teacher; at every batch the student's multi-scale features entering the detection head (P3/P4/P5 for YOLO) are pulled
towards the teacher's by a normalised mean squared error, both in training mode on the same batch, with their
BatchNorms normalising alike (batch statistics, or the frozen running ones with `--freeze-bn`). Channels the masks
removed are exactly zero in the student (masks/mask.py) and are left out of the loss, so the surviving channels and
the head learn to carry their share.

Integration is through the model's criterion (Ultralytics calls `model.criterion(preds, batch)` from `model.loss`):
the stock criterion is wrapped, its loss gets `weight * batch_size * kd` added, and `kd_loss` joins its loss items,
so Ultralytics prints and logs it like any other loss column. The teacher forward runs under the trainer's autocast.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


class FeatureDistillation:
    """A frozen teacher and forward pre-hooks that capture both models' detection-head inputs."""

    def __init__(self, student: nn.Module, weight: float, batch_statistics: bool = True):
        """`batch_statistics`: whether the student's BatchNorms normalise with batch statistics (Ultralytics' train
        mode) or with their frozen running statistics (`--freeze-bn`); the teacher does the same."""
        self.weight = float(weight)
        self.teacher = frozen_like_student(deepcopy(student), batch_statistics)
        self._features: dict[str, dict[int, torch.Tensor]] = {"student": {}, "teacher": {}}
        self._hooks = [_head(m).register_forward_pre_hook(self._capture(who))
                       for who, m in (("student", student), ("teacher", self.teacher))]  # fmt: skip

    def _capture(self, who: str):
        store = self._features[who]

        def hook(_module, args):  # copied out: heads overwrite the list's entries in place
            store.update(enumerate(args[0]))

        return hook

    def attach(self, student: nn.Module) -> None:
        """Wrap the student's criterion (created here, as Ultralytics would create it on the first batch)."""
        base = student.criterion if getattr(student, "criterion", None) is not None else student.init_criterion()
        student.criterion = DistilledCriterion(base, self)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised feature MSE over the head's input levels, alive student channels only."""
        student = dict(self._features["student"])
        with torch.no_grad():
            self.teacher(images)
        teacher = self._features["teacher"]
        total = images.new_zeros(())
        for k, s in student.items():
            t = teacher[k]
            alive = s.detach().abs().amax(dim=(0, 2, 3)) > 0
            energy = t.float().pow(2).mean().clamp_min(1e-12)
            total = total + (s[:, alive].float() - t[:, alive].float()).pow(2).mean() / energy
        return total / max(len(student), 1)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def state_dict(self) -> dict:
        teacher = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
        return {"weight": self.weight, "teacher": teacher}

    def load_state_dict(self, state: dict) -> None:
        self.weight = float(state["weight"])
        self.teacher.load_state_dict(state["teacher"])


class DistilledCriterion:
    """The stock detection criterion plus the distillation term (a plain callable, as Ultralytics expects)."""

    def __init__(self, base, distill: FeatureDistillation):
        self.base, self.distill = base, distill

    def __call__(self, preds, batch: dict):
        loss, items = self.base(preds, batch)
        kd = self.distill.loss(batch["img"])
        return loss.sum() + self.distill.weight * batch["img"].shape[0] * kd, {**items, "kd_loss": kd.detach()}

    def __getattr__(self, name):  # the rest of the stock criterion's interface (e.g. `update` of v8 losses)
        if name in ("base", "distill"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


def frozen_like_student(model: nn.Module, batch_statistics: bool) -> nn.Module:
    """No gradients, and BatchNorm normalising like the student's (batch statistics or the running ones), never
    updating its own.

    Same mode as the student, so a dense student matches its teacher exactly and only what pruning changed is
    penalised (an eval-mode teacher would differ from a train-mode student by the statistics alone).
    """
    model.train().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: statistics stay the teacher's
            m.train(batch_statistics)
    return model


def _head(model: nn.Module) -> nn.Module:
    return model.model[-1]
