"""Each hook of the method contract is called at its point of the real Ultralytics loop, and the upstream order of
calls these points rely on is pinned (Ultralytics 8.4.190)."""

import inspect

import numpy as np
import pytest
import torch
import ultralytics
from torch import nn
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.torch_utils import unwrap_model

from yolo_prune.masks.clusters import ClusterCentres
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods import base as registry
from yolo_prune.methods.base import PruningMethod
from yolo_prune.methods.criteria import FoldedL1
from yolo_prune.methods.settings import PruneSettings
from yolo_prune.methods.uniform import Uniform
from yolo_prune.safe_load import load
from yolo_prune.train.log import PruneLog
from yolo_prune.train.trainer import PruneTrainer

RUN = dict(epochs=2, imgsz=64, batch=1, workers=0, plots=False, device="cpu", exist_ok=True, val=True, nbs=2,
           close_mosaic=0, mosaic=0.0, seed=0, deterministic=True)  # fmt: skip


class Probe(PruningMethod):
    """Checks the trainer's state at every hook and records the calls."""

    cache_batches = 2
    trainer: PruneTrainer = None

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        self.calls = {k: 0 for k in ("setup", "param_groups", "before", "after", "prune_step", "epoch_end", "finish")}
        self.extra = nn.Parameter(torch.ones(3))
        self.before_params = None
        self.updates_seen = 0
        self.changed = 0  # steps that changed the model's parameters (the warm-up starts at lr 0)

    def score(self, ctx):
        return FoldedL1(self.graph)(ctx.model)

    def setup(self, ctx):
        t = self.trainer
        assert t.optimizer is None and t.ema is None and ctx.optimizer is None
        assert unwrap_model(t.model) is ctx.model
        self.calls["setup"] += 1

    def param_groups(self, ctx):
        assert self.calls["setup"] == 1 and ctx.optimizer is not None and self.trainer.ema is None
        self.calls["param_groups"] += 1
        return [{"params": [self.extra], "lr": 0.123, "weight_decay": 0.0}]

    def before_optimizer_step(self, ctx):
        grads = [p.grad for p in ctx.model.parameters() if p.grad is not None]
        assert grads and torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 10 + 1e-3  # clipped
        self.before_params = [p.detach().clone() for p in ctx.model.parameters()]
        assert self.trainer.ema.updates == self.updates_seen  # this step's EMA update has not run yet
        modules = dict(ctx.model.named_modules())
        for name, keep in ctx.masks.norm_keep.items():  # masked rows hold their dense shadow values for the step
            assert modules[name].weight[~keep].abs().sum() > 0
        self.extra.grad = torch.ones(3)
        self.calls["before"] += 1

    def after_optimizer_step(self, ctx):
        assert self.calls["after"] + 1 == self.calls["before"]
        assert self.trainer.ema.updates == self.updates_seen + 1  # after the EMA update
        self.updates_seen += 1
        self.changed += any(not torch.equal(a, p) for a, p in zip(self.before_params, ctx.model.parameters()))
        for model in (ctx.model, ctx.ema.ema):
            modules = dict(model.named_modules())
            for name, keep in ctx.masks.norm_keep.items():
                assert modules[name].weight[~keep].abs().max() == 0 and modules[name].bias[~keep].abs().max() == 0
        self.calls["after"] += 1

    def prune_step(self, ctx):
        assert ctx.step == self.calls["prune_step"] and ctx.target_gflops < ctx.base_gflops
        modules = dict(ctx.model.named_modules())
        before = {n: modules[n].weight.detach().clone() for n in ctx.masks.norm_keep}
        current, dense = ctx.loss(), ctx.loss(type(ctx.masks)(ctx.graph), batches=1)
        assert np.isfinite(current) and np.isfinite(dense) and len(self.trainer.pruner.batches) == 2
        if ctx.masks.norm_keep:
            assert current != dense
        assert all(torch.equal(modules[n].weight, w) for n, w in before.items())  # restored exactly
        self.calls["prune_step"] += 1
        ctx.log(probe_loss=current, probe_note=f"step {ctx.step}")
        return super().prune_step(ctx)

    def on_epoch_end(self, ctx):
        assert "metrics/mAP50-95(B)" in ctx.metrics
        self.calls["epoch_end"] += 1
        return False

    def finish(self, ctx):
        assert ctx.model is not self.trainer.pruner.model and ctx.optimizer is None  # a checkpoint's model
        group = ctx.graph.groups[0]
        assert dict(ctx.model.named_modules())[group.members[0]].weight.shape[0] == group.width  # not slim yet
        self.calls["finish"] += 1
        alive = np.flatnonzero(ctx.masks.masks[group.name])[:2].tolist()
        ClusterCentres(ctx.graph, {group.name: [alive]}).pull(ctx.model, 1.0)  # make them identical, then merge
        return {group.name: [alive]}

    def state_dict(self):
        return {"calls": dict(self.calls)}


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, coco8_yaml):
    registry.register_method("probe")(Probe)
    try:
        tmp = tmp_path_factory.mktemp("hooks")
        settings = PruneSettings(flops=0.3, method="probe", warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=3)
        trainer = PruneTrainer(overrides={**RUN, "model": "yolov8n.yaml", "data": str(coco8_yaml),
                                          "project": str(tmp), "name": "probe"}, prune=settings)  # fmt: skip
        Probe.trainer = trainer
        trainer.train()
        yield trainer
    finally:
        registry._METHODS.pop("probe", None)
        Probe.trainer = None


def test_every_hook_is_called_at_its_point(probe_run):
    method = probe_run.pruner.method
    calls = method.calls
    assert calls["setup"] == 1 and calls["param_groups"] == 1
    assert calls["before"] == calls["after"] == probe_run.ema.updates > 0 and method.changed > 0
    assert calls["prune_step"] == len(probe_run.pruner.schedule.positions)
    assert calls["epoch_end"] == RUN["epochs"]
    assert calls["finish"] == 2  # last.pt and best.pt
    first = probe_run.pruner.graph.groups[0].name  # finish merged two of its alive channels into one
    for path in (probe_run.last, probe_run.best):
        assert load(path)["yolo_prune"]["widths"][first] == int(probe_run.pruner.masks.masks[first].sum()) - 1
    group = next(g for g in probe_run.optimizer.param_groups if any(p is method.extra for p in g["params"]))
    assert group["initial_lr"] == 0.123 and not torch.equal(method.extra.detach(), torch.ones(3))  # it trained


def test_method_evidence_lands_in_the_prune_log_and_plot(probe_run):
    g = probe_run.pruner.graph
    log = PruneLog(probe_run.save_dir, [x.name for x in g.groups], [x.width for x in g.groups], 1.0)
    assert log.extra_columns == ["probe_loss", "probe_note"]
    rows = log.rows()
    assert [r["extra"]["probe_note"] for r in rows] == [f"step {k}" for k in range(len(rows))]
    assert all(r["extra"]["probe_loss"] > 0 for r in rows)
    assert log.plot().stat().st_size > 10_000


def test_ultralytics_calls_the_points_in_the_order_the_contract_relies_on():
    """Pins upstream: set_model_attributes runs before the optimizer and the EMA exist, the optimizer is built in the
    train pipeline, on_pretrain_routine_end after resume; in a batch the optimizer step (unscale, clip, step, EMA
    update) precedes on_train_batch_end; validation precedes the checkpoint save; best.pt follows best_fitness."""
    assert ultralytics.__version__ == "8.4.190", "re-check these pins for another Ultralytics version"
    setup = inspect.getsource(BaseTrainer._setup_train)
    order = [setup.index(s) for s in ("self.set_model_attributes()", "self._build_train_pipeline()",
                                      "self.ema = ModelEMA(", "self.resume_training(ckpt)",
                                      'self.run_callbacks("on_pretrain_routine_end")')]  # fmt: skip
    assert order == sorted(order)
    assert "self.build_optimizer(" in inspect.getsource(BaseTrainer._build_train_pipeline)
    step = inspect.getsource(BaseTrainer.optimizer_step)
    order = [step.index(s) for s in ("unscale_", "clip_grad_norm_", "self.scaler.step(", "self.ema.update(")]
    assert order == sorted(order)
    loop = inspect.getsource(BaseTrainer._do_train)
    order = [loop.index(s) for s in ("self.optimizer_step()", 'self.run_callbacks("on_train_batch_end")',
                                     "self.metrics, self.fitness = self.validate()", "self.save_model()",
                                     'self.run_callbacks("on_fit_epoch_end")', "self.final_eval()")]  # fmt: skip
    assert order == sorted(order)
    assert "self.best_fitness = fitness" in inspect.getsource(BaseTrainer.validate)
    assert "if self.best_fitness == self.fitness:" in inspect.getsource(BaseTrainer.save_model)


class RollbackAtFirstEpochEnd(Uniform):
    """Ends pruning at the first epoch end, rolling back to the masks before the last step."""

    def __init__(self, graph, budget, options=None):
        super().__init__(graph, budget, options)
        self.history = []

    def prune_step(self, ctx):
        self.history.append({k: v.copy() for k, v in ctx.masks.masks.items()})
        return super().prune_step(ctx)

    def on_epoch_end(self, ctx):
        return MaskSet(ctx.graph, self.history[-1])


def test_on_epoch_end_ends_pruning_with_the_masks_it_returns(tmp_path, coco8_yaml):
    registry.register_method("rollback")(RollbackAtFirstEpochEnd)
    try:
        settings = PruneSettings(flops=0.3, method="rollback", warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=3)
        trainer = PruneTrainer(overrides={**RUN, "model": "yolov8n.yaml", "data": str(coco8_yaml),
                                          "project": str(tmp_path), "name": "stop"}, prune=settings)  # fmt: skip
        trainer.train()
    finally:
        registry._METHODS.pop("rollback", None)
    p = trainer.pruner
    assert p.stopped and p.final and p.steps_done == 2 < len(p.schedule.positions)  # steps at 0.5, 0.8; then stop
    rolled_back = p.method.history[-1]
    assert all((p.masks.masks[k] == rolled_back[k]).all() for k in rolled_back)
    widths = {k: int(v.sum()) for k, v in rolled_back.items()}
    for path in (trainer.best, trainer.last):  # both epochs had the final architecture: best.pt exists, at it
        assert load(path)["yolo_prune"]["widths"] == widths
    rows = PruneLog(trainer.save_dir, [g.name for g in p.graph.groups], [g.width for g in p.graph.groups], 1.0).rows()
    assert len(rows) == 3 and rows[-1]["regrown"] > 0  # the rollback is logged as a step of its own


def test_on_epoch_end_true_fixes_the_current_masks():
    from yolo_prune.nn.build import load_model
    from yolo_prune.train.pruner import InTrainingPruner

    model = load_model("yolov8n.yaml")
    pruner = InTrainingPruner(model, PruneSettings(flops=0.3, method="uniform", steps_per_epoch=2).validate(), 4)
    pruner.maybe_step(model, None, position=pruner.schedule.positions[0])
    first = {k: v.copy() for k, v in pruner.masks.masks.items()}
    pruner.method.on_epoch_end = lambda ctx: True
    assert pruner.epoch_end(model, None, {"metrics/mAP50-95(B)": 0.1}, 1.0) is None and pruner.final
    assert pruner.maybe_step(model, None, position=4.0) is None  # the schedule stops
    assert all((pruner.masks.masks[k] == first[k]).all() for k in first)
