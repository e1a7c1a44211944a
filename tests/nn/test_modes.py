"""Module modes restored exactly after a temporary switch (nn/modes.py), and the measurements that use it.

A training model whose BatchNorms normalise by running statistics (`--freeze-bn`) must keep them so after the
eval-mode forwards taken inside a run (compensation's statistics, the quick validation, ctx.loss): `model.train(True)`
as a "restore" would switch every BatchNorm to batch statistics for the rest of the epoch.
"""

import torch
from torch import nn
from ultralytics.cfg import get_cfg

from yolo_prune.graph.analyze import analyze
from yolo_prune.nn.build import load_model
from yolo_prune.nn.modes import eval_mode, modes_restored
from yolo_prune.train.compensate import Compensation
from yolo_prune.train.loss import detection_loss


def frozen_training_model():
    model = load_model("yolov8n.yaml").train()
    frozen = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in frozen:
        m.eval()
    return model, frozen


def test_eval_mode_puts_every_module_back():
    model, frozen = frozen_training_model()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model.model[0].conv.training and not any(m.training for m in frozen)
    with modes_restored(model):
        model.train()
        assert all(m.training for m in frozen)
    assert not any(m.training for m in frozen)


def test_compensation_statistics_keep_frozen_batch_norms_frozen():
    model, frozen = frozen_training_model()
    comp = Compensation(analyze(model, 64))
    comp.statistics(model, torch.rand(1, 3, 64, 64), list(comp.sites)[:2])
    assert model.training and not any(m.training for m in frozen)


def test_detection_loss_keeps_frozen_batch_norms_frozen():
    model, frozen = frozen_training_model()
    batch = {"img": torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "batch_idx": torch.zeros(1),
             "cls": torch.zeros(1, 1), "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}  # fmt: skip
    model.args = get_cfg()  # the loss gains, as the trainer sets them
    assert detection_loss(model, [batch]) > 0
    assert model.training and not any(m.training for m in frozen)
