"""Data-free proxy for a pruning allocation (issue 9, docs/results.md): the head-input feature error on held-out images.

The COCO YOLOv5n is pruned by CUT in 8 steps without training (compensation fitted on 16 train images), with channel
scores measured once on the 96 train images of the coco128 split: Taylor |dL| of the detection loss, or head damage
(random projections of the head inputs, methods/damage.py), and mixtures. Printed: the normalised MSE of the head
inputs on the held-out images, params, and a few neck widths.

    python tools/coco128_split.py /tmp/c128split && python tools/allocation_probe.py 0.2 /tmp/c128split
"""

import glob
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from yolo_prune.graph.analyze import analyze
from yolo_prune.masks.budget import Budget
from yolo_prune.masks.mask import MaskSet
from yolo_prune.methods.criteria import per_group
from yolo_prune.nn.build import load_model
from yolo_prune.train.compensate import Compensation

torch.manual_seed(0)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
W = str(DATA / "yolov5n_coco" / "yolov5n.pt")
files = sorted(glob.glob(str(DATA / "coco128" / "images" / "train2017" / "*.jpg")))


def load(fs):
    return torch.stack(
        [
            torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((320, 320)))).permute(2, 0, 1).float() / 255
            for f in fs
        ]
    )


def batch(fs):
    img = load(fs)
    idx, cls, box = [], [], []
    for i, f in enumerate(fs):
        lab = Path(f.replace("images", "labels").replace(".jpg", ".txt"))
        if lab.exists():
            for line in lab.read_text().split("\n"):
                if line.strip():
                    v = [float(t) for t in line.split()]
                    idx.append(i)
                    cls.append(v[0])
                    box.append(v[1:5])
    return {"img": img, "batch_idx": torch.tensor(idx), "cls": torch.tensor(cls)[:, None], "bboxes": torch.tensor(box)}


split = [line.strip() for line in open(Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/c128split") / "train.txt")]
train = [f for f in files if any(f.endswith(Path(s).name) for s in split)] or files[:96]
held = [f for f in files if f not in train]
print(len(train), len(held))


def bn_terms(model, norms):
    mods = dict(model.named_modules())
    return {n: (mods[n].weight * mods[n].weight.grad + mods[n].bias * mods[n].bias.grad).detach() for n in norms}


def sensitivity(model, g, kind):
    model.train()
    norms = sorted({s.site.norm_name for s in g.sites if s.site.norm_name})
    acc = {}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    for k in range(0, 96, 16):
        b = batch(train[k : k + 16])
        if kind == "det":
            model.zero_grad()
            loss, _ = model.loss(b)
            loss.sum().backward()
            t = {n: v**2 for n, v in bn_terms(model, norms).items()}
        else:  # random projections of the head inputs: E[(v.J d)^2] = |J d|^2, the KD loss change (Gauss-Newton)
            out = {}
            h = model.model[-1].register_forward_pre_hook(lambda m, a, out=out: out.__setitem__("f", list(a[0])))
            t = {}
            for _ in range(4):
                model.zero_grad()
                model(b["img"])
                loss = sum(
                    (torch.randn_like(f) * f).sum() / (f.detach().pow(2).mean() * f[0].numel()).sqrt() for f in out["f"]
                )
                loss.backward()
                for n, v in bn_terms(model, norms).items():
                    t[n] = t.get(n, 0) + v**2 / 4
            h.remove()
        for n in norms:
            acc[n] = acc.get(n, 0) + t[n] / 6
    model.eval()
    return {n: v.double().numpy() for n, v in acc.items()}


def feats(model, x):
    out = {}
    h = model.model[-1].register_forward_pre_hook(lambda m, a, out=out: out.__setitem__("f", list(a[0])))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return out["f"]


def err(a, b):
    return float(np.mean([float(((s - t) ** 2).mean() / (t**2).mean()) for s, t in zip(a, b)]))


base = load_model(W).float()
g = analyze(base, 640)
det = sensitivity(load_model(W).float(), g, "det")
kd = sensitivity(load_model(W).float(), g, "kd")
x_fit, x_held = load(train[:16]), load(held)
ref = feats(load_model(W).float(), x_held)
cut = float(sys.argv[1]) if len(sys.argv) > 1 else 0.2


def scores_from(per_norm, power):
    per_conv = {s.site.name: per_norm[s.site.norm_name] ** power for s in g.sites if s.site.norm_name in per_norm}
    sc = per_group(g, per_conv)
    mean = np.concatenate(list(sc.values())).mean()
    return {k: v / mean for k, v in sc.items()}


def run(name, scores, steps=8):
    m = load_model(W).float().eval()
    budget = Budget(g, 8, 0.25)
    c = Compensation(g)
    masks = g.full_masks()
    for k in range(steps):
        target = g.gflops() * (1 - cut * (k + 1) / steps)
        new = budget.allocate(scores, target, start=masks)
        old_a, new_a = g.alive_components(masks), g.alive_components(new)
        stats = c.statistics(m, x_fit, c.losing(old_a, new_a))
        c.step([m], stats, old_a, new_a)
        masks = new
        MaskSet(g, masks).apply(m)
    params = g.params(m, masks)
    w = {k: int(v.sum()) for k, v in masks.items()}
    print(
        f"{name:<30} err={err(feats(m, x_held), ref):.4f} params={params / 1e6:.2f}M  "
        f"m18={w.get('model.18')} m21={w.get('model.21')} m17cv3={w.get('model.17.cv3')}",
        flush=True,
    )


sd, sk = scores_from(det, 0.5), scores_from(kd, 1.0)
run("taylor |dL| det (current)", sd)
run("kd second-order", sk)
run("det + kd", {k: sd[k] + sk[k] for k in sd})
run("sqrt kd", scores_from(kd, 0.5))
run("det + sqrt kd", {k: sd[k] + scores_from(kd, 0.5)[k] for k in sd})
