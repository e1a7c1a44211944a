"""Feature distillation from the dense starting model (train/distill.py), on a small detector built from YAML."""

import torch

from yolo_prune.nn.build import load_model
from yolo_prune.train.distill import DistilledCriterion, FeatureDistillation


def student_and_batch():
    torch.manual_seed(0)
    model = load_model("yolov8n.yaml", nc=4).float().train()
    return model, torch.rand(2, 3, 64, 64)


def test_an_unpruned_student_matches_its_teacher_exactly_and_the_teacher_stays_frozen():
    model, x = student_and_batch()
    kd = FeatureDistillation(model, weight=1.0)
    stats = {k: v.clone() for k, v in kd.teacher.state_dict().items() if "running" in k}
    model(x)
    assert float(kd.loss(x).detach()) == 0.0  # same weights, same mode, same batch
    assert all(torch.equal(kd.teacher.state_dict()[k], v) for k, v in stats.items())
    assert not any(p.requires_grad for p in kd.teacher.parameters())


def test_masked_channels_are_left_out_and_gradients_reach_the_student():
    model, x = student_and_batch()
    kd = FeatureDistillation(model, weight=1.0)
    bn = model.model[model.model[-1].f[0]].cv2.bn  # the C2f whose output is the head's first level: its output BN
    with torch.no_grad():
        bn.weight[:3] = 0
        bn.bias[:3] = 0  # mask three channels as masks/mask.py does
        bn.weight[3:] *= 1.5  # and change what the alive ones compute
    model(x)
    loss = kd.loss(x)
    assert loss > 0
    loss.backward()
    assert bn.weight.grad[3:].abs().sum() > 0
    # the same value computed by hand: alive channels only, normalised by the teacher's energy
    feats = {}
    hooks = [m.model[-1].register_forward_pre_hook(lambda _m, a, who=who: feats.__setitem__(who, list(a[0])))
             for who, m in (("s", model), ("t", kd.teacher))]  # fmt: skip
    with torch.no_grad():
        model(x), kd.teacher(x)
    for h in hooks:
        h.remove()
    expected, dropped = 0.0, 0
    for s, t in zip(feats["s"], feats["t"]):
        alive = s.abs().amax(dim=(0, 2, 3)) > 0
        dropped += int((~alive).sum())
        expected += float(((s - t)[:, alive] ** 2).mean() / (t**2).mean())
    assert dropped >= 3
    with torch.no_grad():
        model(x)
        assert abs(float(kd.loss(x)) - expected / len(feats["s"])) < 1e-6


def test_the_criterion_adds_the_weighted_term_and_reports_it():
    model, x = student_and_batch()
    kd = FeatureDistillation(model, weight=2.0)

    def base(preds, batch):
        return torch.tensor([1.0, 2.0]), {"box": torch.tensor(0.5)}

    criterion = DistilledCriterion(base, kd)
    with torch.no_grad():
        model.model[0].bn.weight *= 1.5
    preds = model(x)
    loss, items = criterion(preds, {"img": x})
    assert set(items) == {"box", "kd_loss"} and items["kd_loss"] > 0
    assert torch.isclose(loss, torch.tensor(3.0) + 2.0 * 2 * items["kd_loss"])
