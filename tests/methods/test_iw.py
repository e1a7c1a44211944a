"""IW (importance weights + error tolerance): the weights, their fold into BN, the EMA, the ranking, the stop."""

from copy import deepcopy

import numpy as np
import pytest
import torch
from ultralytics.utils.torch_utils import ModelEMA

from tests.models import randomize
from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods.iw import ImportanceWeights, ToleranceStop, initial_weights
from yolo_prune.nn.build import load_model
from yolo_prune.slim.slim import slim


@pytest.fixture()
def v8n():
    model = randomize(load_model("yolov8n.yaml"), seed=1).eval()
    graph = analyze(model, 64)
    return model, graph, Budget(graph)


def gated(model, graph, init="uniform"):
    weights = ImportanceWeights(graph, model, init=init, seed=3).attach(model)
    return weights


def test_initialisations():
    conv = torch.randn(6, 3, 3, 3)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(initial_weights("ones", conv, g), torch.ones(6))
    u = initial_weights("uniform", conv, g)
    assert ((u > 0) & (u < 1)).all() and u.std() > 0.05
    l1 = initial_weights("l1", conv, g)
    norms = conv.abs().flatten(1).sum(1)
    assert torch.allclose(l1, norms / norms.max()) and l1.max() == 1
    with pytest.raises(ValueError, match="unknown initialisation"):
        initial_weights("zeros", conv, g)


def test_gates_change_the_output_and_fold_exactly_into_an_ordinary_slim_model(v8n):
    model, graph, budget = v8n
    x = torch.rand(2, 3, 64, 64)
    plain = model(x)[0]
    weights = gated(model, graph)
    try:
        with torch.no_grad():
            out = model(x)[0]
            assert (out - plain).abs().max() > 1e-2  # the weights act on the forward
            assert torch.equal(deepcopy(model)(x)[0], plain)  # ... of this model only, not of copies (the EMA)
            masks = MaskSet(graph, budget.allocate(weights.scores(graph), graph.gflops() * 0.7))
            masks.apply(model)
            masked = model(x)[0]
            folded = weights.folded_copy(model)
            assert all(type(m).__module__.startswith(("torch", "ultralytics")) for m in folded.modules())
            small = slim(folded, graph, masks.masks)
            assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
            assert (small(x)[0] - masked).abs().max() < 1e-4  # slim == masked, with the weights folded in
    finally:
        weights.detach()
    with torch.no_grad():
        assert not torch.equal(model(x)[0], masked)  # detached: the hook is gone


def test_every_weight_gets_a_gradient_and_the_pull(v8n):
    model, graph, _ = v8n
    weights = gated(model, graph, init="ones")
    try:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        preds = model(torch.rand(2, 3, 64, 64))
        (preds["boxes"].pow(2).mean() + preds["scores"].sigmoid().mean()).backward()
        grads = [a.grad for a in weights.weights]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        before = [g.clone() for g in grads]
        weights.weights[0].data[:2] = torch.tensor([0.5, -0.5])
        weights.pull(1e-3)
        assert torch.allclose(weights.weights[0].grad[:2] - before[0][:2], torch.tensor([1e-3, -1e-3]))
    finally:
        weights.detach()


def test_ema_averages_the_folded_values(v8n):
    model, graph, budget = v8n
    weights = gated(model, graph)
    try:
        ema = ModelEMA(model)  # a copy: ungated, raw BN values
        ema.updates = 500  # a decay well inside (0, 1)
        name = weights.norms[5]
        modules, ema_modules = dict(model.named_modules()), dict(ema.ema.named_modules())
        start = ema_modules[name].weight.detach().clone()
        with torch.no_grad():
            modules[name].weight.mul_(1.5)  # the optimizer moved the raw value
        masks = MaskSet(graph, budget.allocate(weights.scores(graph), graph.gflops() * 0.7))
        ema.update(model)
        weights.follow_ema(ema, model, masks.norm_keep)
        d = ema.decay(ema.updates)
        a = weights.weights[weights.norms.index(name)].detach()
        expected = d * start + (1 - d) * a * modules[name].weight.detach()
        keep = masks.norm_keep.get(name, torch.ones_like(a, dtype=torch.bool))
        got = ema_modules[name].weight.detach()
        assert torch.allclose(got[keep], expected[keep], atol=1e-6)
        # masked rows follow the raw value only (the engine zeroes them); they do not get the gate's share
        assert torch.allclose(got[~keep], (d * start + (1 - d) * modules[name].weight.detach())[~keep], atol=1e-6)
    finally:
        weights.detach()


def test_the_weights_decide_what_is_pruned(v8n):
    model, graph, budget = v8n
    weights = ImportanceWeights(graph, model, init="ones")
    quiet = graph.groups[12]
    with torch.no_grad():
        for conv, a in zip(weights.convs, weights.weights):
            if conv in quiet.members:
                a[: a.numel() // 2] = 0.01  # half of this group's filters learned they are not needed
    scores = weights.scores(graph)
    assert np.isclose(scores[quiet.name], 0.01).sum() == quiet.width // 2
    masks = budget.allocate(scores, graph.gflops() * 0.97)
    assert (~masks[quiet.name]).sum() >= quiet.width // 4  # the silenced channels go first
    assert not masks[quiet.name][: quiet.width // 2].all()
    assert sum((~m).sum() for k, m in masks.items() if k != quiet.name) < (~masks[quiet.name]).sum()


def test_tolerance_keeps_steps_until_the_summed_drop_crosses_it_then_refuses_all():
    stop = ToleranceStop(tolerance=0.02)
    assert stop.judge(0.30, 0.29)  # costs 0.01
    assert stop.judge(0.31, 0.32)  # pruning helped: credit, never below zero
    assert stop.spent == pytest.approx(0.0)
    assert stop.judge(0.33, 0.315)  # 0.015 spent
    assert not stop.judge(0.32, 0.31)  # 0.025 > 0.02: rolled back, and pruning ends
    assert stop.stopped and stop.spent == pytest.approx(0.015)
    assert not stop.judge(0.3, 0.3)
    again = ToleranceStop(0.02)
    again.load_state_dict(stop.state_dict())
    assert again == stop


# -- in the real trainer -------------------------------------------------------------------------------------------
TINY = dict(imgsz=64, batch=1, workers=0, plots=False, device="cpu", exist_ok=True, close_mosaic=0, mosaic=0.0,
            nbs=1, seed=0, deterministic=True)  # fmt: skip


def iw_run(tmp_path, data, name, model="yolov8n.yaml", epochs=2, overrides=None, **options):
    from yolo_prune.methods.settings import PruneSettings
    from yolo_prune.train.trainer import PruneTrainer

    settings = PruneSettings(flops=0.3, method="iw", warmup_frac=0.1, prune_frac=0.7, steps_per_epoch=2,
                             options=options)  # fmt: skip
    trainer = PruneTrainer(overrides={**TINY, "model": str(model), "data": str(data), "epochs": epochs,
                                      "project": str(tmp_path), "name": name, **(overrides or {})},
                           prune=settings)  # fmt: skip
    grads = []

    def record(optimizer, args, kwargs):  # after the method's pull, before the step
        group = next(g for g in optimizer.param_groups if g.get("param_group") == "iw")
        grads.append([p.grad.detach().clone() for p in group["params"]])

    trainer.add_callback("on_pretrain_routine_end", lambda t: t.optimizer.register_step_pre_hook(record))
    trainer.train()
    return trainer, grads


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, coco8_yaml):
    return iw_run(tmp_path_factory.mktemp("iw"), coco8_yaml, "scratch", tolerance=1.0, iw_init="uniform")


@pytest.mark.slow
def test_the_weights_train_in_their_own_optimizer_group(scratch_run):
    trainer, grads = scratch_run
    method = trainer.pruner.method
    group = next(g for g in trainer.optimizer.param_groups if g.get("param_group") == "iw")
    assert [id(p) for p in group["params"]] == [id(a) for a in method.weights.weights]
    assert group["weight_decay"] == 0 and group["initial_lr"] == pytest.approx(10 * trainer.optimizer.param_groups[0]
                                                                               ["initial_lr"])  # fmt: skip
    others = {id(p) for g in trainer.optimizer.param_groups if g is not group for p in g["params"]}
    assert not others & {id(a) for a in method.weights.weights}
    assert len(grads) >= 6 and all(all(g.abs().sum() > 0 for g in step) for step in grads)
    start = ImportanceWeights(trainer.pruner.graph, unwrap(trainer), init="uniform", seed=0).weights
    moved = max(float((a.detach().cpu() - b.detach()).abs().max()) for a, b in zip(method.weights.weights, start))
    assert moved > 1e-3
    # the EMA (a few updates: it is close to the last model) holds the folded values, as the training model now does
    model, ema = dict(unwrap(trainer).named_modules()), dict(trainer.ema.ema.named_modules())
    for name, a in zip(method.weights.norms, method.weights.weights):
        keep = trainer.pruner.masks.norm_keep.get(name, torch.ones(a.numel(), dtype=torch.bool))
        folded, averaged = model[name].weight.detach()[keep], ema[name].weight.detach().float()[keep]
        assert (averaged - folded).abs().median() < 0.1 * (a.detach()[keep] - 1).abs().median() * folded.abs().median()


@pytest.mark.slow
def test_scratch_run_with_a_large_tolerance_reaches_the_cap_and_logs_the_weights(scratch_run):
    import csv

    from ultralytics.nn.tasks import load_checkpoint

    trainer, _ = scratch_run
    with open(trainer.save_dir / "prune_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(trainer.pruner.schedule.positions)
    assert all(r["iw_decision"] == "kept" for r in rows)
    q = [[float(r[f"iw_q{p:02d}"]) for p in (5, 25, 50, 75, 95)] for r in rows]
    assert all(a <= b for row in q for a, b in zip(row, row[1:]))  # quantiles, in order
    assert (trainer.save_dir / "iw_weights.png").stat().st_size > 10_000
    assert trainer.pruner.method.weights._handle is None  # folded into the training model at the end, hook gone
    base = trainer.pruner.base_gflops
    for path in (trainer.last, trainer.best):
        model, _ = load_checkpoint(path)
        assert all(type(m).__module__.startswith(("torch", "ultralytics")) for m in model.modules())
        assert 1 - trainer.pruner.graph.gflops(trainer.pruner.masks.masks) / base == pytest.approx(0.3, abs=0.005)


def unwrap(trainer):
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(trainer.model)


@pytest.mark.slow
def test_a_tiny_tolerance_rolls_back_the_step_that_crosses_it_and_ends_pruning(tmp_path, yolov5n_coco, coco8_yaml):
    import csv

    trainer, _ = iw_run(tmp_path, coco8_yaml, "tiny", model=yolov5n_coco, tolerance=0.001,
                        overrides={"imgsz": 160, "val": False})  # fmt: skip
    with open(trainer.save_dir / "prune_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    decisions = [r["iw_decision"] for r in rows]
    assert "rolled back" in decisions
    crossed = decisions.index("rolled back")
    row = rows[crossed]
    assert float(row["map_before"]) > 0.05  # real detections: there is accuracy to lose
    previous = float(rows[crossed - 1]["gflops"]) if crossed else trainer.pruner.base_gflops
    assert float(row["gflops"]) == pytest.approx(previous)  # the step was rolled back ...
    assert float(row["candidate_gflops"]) < previous  # ... the one it would have taken
    assert float(row["map_spent"]) + float(row["map_before"]) - float(row["map_after"]) > 0.001
    assert all(d == "stopped" for d in decisions[crossed + 1 :])
    assert trainer.pruner.final and trainer.pruner.stopped
    target = trainer.pruner.base_gflops * (1 - 0.3)
    assert trainer.pruner.masks.gflops() > target + 0.01 * trainer.pruner.base_gflops  # stopped before the cap
