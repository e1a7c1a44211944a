
"""Importing official YOLOv5/YOLOv7 checkpoints: equal outputs to the original code, exact round trips of the official
YOLOv7 layout, Ultralytics loading the result, and refusal of pickles that reference anything else."""

import copy
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.serialization import get_unsafe_globals_in_checkpoint

from tests.models import randomize
from yolo_prune.errors import YoloPruneError
from yolo_prune.nn.anchor import AnchorDetectionModel, IDetect
from yolo_prune.nn.build import config_path, load_checkpoint
from yolo_prune.nn.importer import import_checkpoint, is_foreign, load_foreign

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "yolov5n_ref.npz"


@pytest.fixture(scope="module")
def yolov5n():
    from tests.conftest import shared

    return shared("yolov5n_coco", "yolov5n.pt")


def letterbox(path: Path, size: int) -> np.ndarray:
    """The preprocessing of tools/make_yolov5_reference.py: long side to `size` (bilinear), centred grey-114 pad."""
    import cv2

    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    r = size / max(h, w)
    nh, nw = round(h * r), round(w * r)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, 3), 114, np.uint8)
    out[top : top + nh, left : left + nw] = img
    return out[:, :, ::-1].copy()


# -- YOLOv5n against the original code ---------------------------------------------------------------------------------
def test_yolov5n_outputs_equal_the_original_yolov5(yolov5n, coco128):
    """Reference: tools/make_yolov5_reference.py ran the original yolov5==7.0.14 classes on the same inputs.

    Tolerances (both sides float32 after .float() of the FP16 checkpoint, same torch build): raw maps and their sums
    agree to 1e-6 relative; decoded boxes to 2e-5 relative (float32 noise, squared in wh) or 1e-3 px; scores
    (objectness * class, a float32 product here) to 1e-5 relative.
    """
    ref = np.load(FIXTURE)
    images = [letterbox(coco128 / "images" / "train2017" / name, int(ref["size"])) for name in ref["images"]]
    np.testing.assert_array_equal([im.astype(np.float64).sum() for im in images], ref["input_sum"])
    model = load_foreign(yolov5n)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        y, raw = model(x)
    n = len(images)
    raw_sum = np.array([[r[i].double().sum().item() for r in raw] for i in range(n)])
    raw_abs = np.array([[r[i].double().abs().sum().item() for r in raw] for i in range(n)])
    np.testing.assert_allclose(raw_sum, ref["raw_sum"], rtol=1e-6)
    np.testing.assert_allclose(raw_abs, ref["raw_abs"], rtol=1e-6)
    # the original's decoded rows: x, y, w, h, objectness, class probabilities; ours: boxes, objectness * class
    boxes = y[:, :4].transpose(1, 2).double()
    obj = torch.cat([r[..., 4].reshape(n, -1) for r in raw], 1).sigmoid().double()
    cls = torch.cat([r[..., 5:].reshape(n, -1, 80) for r in raw], 1).sigmoid().double()
    assert boxes.shape[1] == int(ref["n_rows"])
    ours = torch.cat((boxes, obj[..., None], cls), 2)
    np.testing.assert_allclose(ours.sum(1).numpy(), ref["col_sum"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ours.abs().sum(1).numpy(), ref["col_abs"], rtol=1e-5, atol=1e-3)
    for i in range(n):
        idx = torch.from_numpy(ref["top_idx"][i])
        rows = torch.from_numpy(ref["top_rows"][i]).double()
        np.testing.assert_allclose(boxes[i, idx], rows[:, :4], rtol=2e-5, atol=1e-3)
        np.testing.assert_allclose(y[i, 4:, idx].T.double(), rows[:, 4:5] * rows[:, 5:], rtol=1e-5, atol=1e-7)
    assert float(ref["top_rows"][:, 0, 4].min()) > 0.5  # the fixture holds real detections, not background


def test_imported_checkpoint_loads_in_ultralytics(yolov5n, coco128, tmp_path):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import load_checkpoint as ul_load

    out = import_checkpoint(yolov5n, tmp_path / "sub" / "yolov5n.pt")
    assert out == tmp_path / "sub" / "yolov5n.pt" and not list(out.parent.glob("*.tmp"))
    stored = torch.load(out, weights_only=False)
    assert next(stored["model"].parameters()).dtype == torch.float16  # as Ultralytics and the original store it
    model, ckpt = ul_load(str(out))
    assert type(model) is AnchorDetectionModel and ckpt["ema"] is None and ckpt["epoch"] == -1
    assert ckpt["imported_from"]["file"] == "yolov5n.pt"
    coco_names = yaml.safe_load((coco128 / "data.yaml").read_text())["names"]
    assert model.names == coco_names
    assert model.stride.tolist() == [8, 16, 32] and model.yaml["anchors"][0] == [10, 13, 16, 30, 33, 23]
    direct = load_foreign(yolov5n)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], direct(x)[0], rtol=0, atol=0)  # FP16 storage loses nothing
    assert type(load_checkpoint(str(yolov5n))) is AnchorDetectionModel  # --weights/--model import automatically
    image = coco128 / "images" / "train2017" / "000000000009.jpg"  # bowls of fruit and broccoli
    result = YOLO(str(out))(str(image), imgsz=320, verbose=False)[0]
    labels = {result.names[int(c)] for c in result.boxes.cls}
    assert "bowl" in labels


def test_cli_import(yolov5n, tmp_path, capsys):
    from yolo_prune.cli import main

    assert main(["import", str(yolov5n), "--out", str(tmp_path / "v5.pt")]) == 0
    assert (tmp_path / "v5.pt").is_file()
    assert main(["import", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # an Ultralytics checkpoint needs no import: one clear sentence, nothing written
    assert main(["import", str(tmp_path / "v5.pt"), "--out", str(tmp_path / "again.pt")]) == 2
    assert "already an Ultralytics checkpoint" in capsys.readouterr().err and not (tmp_path / "again.pt").exists()


# -- the official YOLOv7 layout, made from our config with stand-ins of the official classes --------------------------
# Written to a temporary `models` package only to *produce* pickles naming models.common.* / models.yolo.*; the
# importer never sees them (the package is removed from sys.path and sys.modules before importing).
OFFICIAL_COMMON = '''
import torch
from torch import nn


def autopad(k, p=None):
    return k // 2 if p is None else p


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class MP(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x):
        return self.m(x)


class SP(nn.Module):
    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x):
        return self.m(x)


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class SPPCSPC(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), dim=1))


class RepConv(nn.Module):
    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True, deploy=False):
        super().__init__()
        self.deploy, self.groups, self.in_channels, self.out_channels = deploy, g, c1, c2
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())
        self.rbr_identity = nn.BatchNorm2d(num_features=c1) if c2 == c1 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False),
                                       nn.BatchNorm2d(num_features=c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, autopad(k, p) - k // 2, groups=g, bias=False),
                                     nn.BatchNorm2d(num_features=c2))

    def forward(self, x):
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + id_out)


class ImplicitA(nn.Module):
    def __init__(self, channel, mean=0.0, std=0.02):
        super().__init__()
        self.channel, self.mean, self.std = channel, mean, std
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))

    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    def __init__(self, channel, mean=1.0, std=0.02):
        super().__init__()
        self.channel, self.mean, self.std = channel, mean, std
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))

    def forward(self, x):
        return self.implicit * x


class C3TR(nn.Module):  # a real YOLOv5 class the importer does not rebuild
    pass
'''

OFFICIAL_YOLO = '''
import torch
from torch import nn

from models.common import ImplicitA, ImplicitM


class IDetect(nn.Module):
    stride = None

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.im[i](self.m[i](self.ia[i](x[i])))
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                yv, xv = torch.meshgrid([torch.arange(ny), torch.arange(nx)], indexing="ij")
                grid = torch.stack((xv, yv), 2).view((1, 1, ny, nx, 2)).float()
                y = x[i].sigmoid()
                y[..., 0:2] = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]
                y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
                z.append(y.view(bs, -1, self.no))
        return x if self.training else (torch.cat(z, 1), x)


class Model(nn.Module):  # the official one parses its yaml; here the test assembles the same attributes
    def __init__(self, yaml, layers, save, names, stride):
        super().__init__()
        self.yaml, self.model, self.save, self.names, self.stride = yaml, nn.Sequential(*layers), save, names, stride
        self.traced = False

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x
'''

# every YOLOv7 class the importer maps, at toy widths (RepConv with and without its identity branch)
ALL_CLASSES_YAML = """
nc: 3
depth_multiple: 1.0
width_multiple: 1.0
anchors: [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, MP, []]
  - [-1, 1, Conv, [32, 3, 1, None, 1, nn.LeakyReLU(0.1)]]
  - [-1, 1, MP, []]
  - [-1, 1, Conv, [32, 3, 1]]
  - [-1, 1, MP, []]
  - [-1, 1, SPPCSPC, [32]]
head:
  - [-1, 1, SP, [5]]
  - [[-1, 7], 1, Concat, [1]]
  - [-1, 1, nn.Upsample, [None, 2, 'nearest']]
  - [[-1, 5], 1, Concat, [1]]
  - [-1, 1, nn.Upsample, [None, 2, 'nearest']]
  - [[-1, 3], 1, Concat, [1]]
  - [-1, 1, RepConv, [16, 3, 1]]
  - [11, 1, RepConv, [96, 3, 1]]
  - [9, 1, RepConv, [32, 3, 1]]
  - [[14, 15, 16], 1, IDetect, [nc, anchors]]
"""

REPCONV_NAMES = {"conv1.conv": "rbr_dense.0", "conv1.bn": "rbr_dense.1", "conv2.conv": "rbr_1x1.0",
                 "conv2.bn": "rbr_1x1.1", "bn": "rbr_identity"}  # fmt: skip


@pytest.fixture
def official(tmp_path, monkeypatch):
    """The stand-in `models` package, importable only inside this fixture."""
    pkg = tmp_path / "official" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "common.py").write_text(textwrap.dedent(OFFICIAL_COMMON))
    (pkg / "yolo.py").write_text(textwrap.dedent(OFFICIAL_YOLO))
    monkeypatch.syspath_prepend(str(pkg.parent))
    import models.common
    import models.yolo

    yield models.common, models.yolo
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]


def _official_model(ours: AnchorDetectionModel, cfg: dict, common, yolo) -> nn.Module:
    """The official-layout model equal to `ours`: official classes, official parameter names, same weights."""
    layers = []
    for (_f, _n, name, _args), m in zip(cfg["backbone"] + cfg["head"], ours.model):
        state = m.state_dict()
        if name == "Conv":
            c = m.conv
            o = common.Conv(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], None, c.groups,
                            copy.deepcopy(m.act))  # fmt: skip
        elif name == "MP":
            o = common.MP(m.kernel_size)
        elif name == "SP":
            o = common.SP(m.kernel_size, m.stride)
        elif name == "Concat":
            o = common.Concat(m.d)
        elif name == "nn.Upsample":
            o = copy.deepcopy(m)
        elif name == "SPPCSPC":
            o = common.SPPCSPC(m.cv1.conv.in_channels, m.cv7.conv.out_channels)
        elif name == "RepConv":
            o = common.RepConv(m.conv1.conv.in_channels, m.conv1.conv.out_channels, 3, m.conv1.conv.stride[0])
            state = {_official_repconv_key(k): v for k, v in state.items()}
        elif name == "IDetect":
            pixels = (m.anchors * m.stride.view(-1, 1, 1)).view(m.nl, -1).tolist()
            o = yolo.IDetect(m.nc, pixels, [c.in_channels for c in m.m])
            o.stride = m.stride.clone()
            state["anchor_grid"] = o.anchor_grid
        else:
            raise AssertionError(name)
        o.load_state_dict(state)
        o.i, o.f = m.i, m.f
        layers.append(o)
    names = [f"class{i}" for i in range(cfg["nc"])]
    return yolo.Model(dict(cfg, ch=3), layers, ours.save, names, ours.stride.clone())


def _official_repconv_key(key: str) -> str:
    head, _, tail = key.rpartition(".")
    return f"{REPCONV_NAMES.get(head, head)}.{tail}"


def _our_key(key: str) -> str:
    for ours, official in REPCONV_NAMES.items():
        key = key.replace(f".{official}.", f".{ours}.")
    return key


def _save_official(model: nn.Module, path: Path):
    """As YOLOv7's strip_optimizer leaves a release checkpoint: FP16 model, numpy best_fitness, no optimizer."""
    torch.save({"epoch": -1, "best_fitness": np.array([0.51]), "training_results": "", "model": model.half(),
                "ema": None, "updates": None, "optimizer": None, "wandb_id": None}, path)  # fmt: skip


@pytest.mark.parametrize("source", ["yolov7-tiny-idetect.yaml", "all-classes"])
def test_official_yolov7_layout_round_trips_exactly(source, official, tmp_path):
    common, yolo = official
    cfg = yaml.safe_load(ALL_CLASSES_YAML if source == "all-classes" else config_path(source).read_text())
    torch.manual_seed(0)
    ours = randomize(AnchorDetectionModel(copy.deepcopy(cfg), verbose=False)).eval()
    reference = _official_model(ours, cfg, common, yolo).eval()
    path = tmp_path / "yolov7-official.pt"
    _save_official(copy.deepcopy(reference), path)
    reference = reference.half().float()  # what the checkpoint holds
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]
    sys.path.remove(str(Path(common.__file__).parents[1]))

    assert is_foreign(path)
    imported = load_checkpoint(str(path))
    assert "models" not in sys.modules  # nothing of the official code was imported to read the file
    assert type(imported) is AnchorDetectionModel and type(imported.model[-1]) is IDetect
    theirs, mine = reference.state_dict(), imported.state_dict()
    mapped = {_our_key(k): v for k, v in theirs.items() if not k.endswith("anchor_grid")}
    assert mapped.keys() == mine.keys()
    for k, v in mapped.items():
        assert torch.equal(mine[k], v.to(mine[k].dtype)), k
    assert imported.names == {i: f"class{i}" for i in range(cfg["nc"])}
    assert imported.stride.tolist() == reference.stride.tolist()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        z, raw_ref = reference(x)
        y, raw = imported(x)
    for a, b in zip(raw, raw_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[:, :4].transpose(1, 2), z[..., :4], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(y[:, 4:].transpose(1, 2), z[..., 4:5] * z[..., 5:], rtol=1e-5, atol=1e-6)
    for n, act in reference.named_modules():  # each official activation, same kind and slope at the same place
        if n.endswith(".act"):
            mine = imported.get_submodule(n)
            assert type(mine) is type(act) and getattr(mine, "negative_slope", 0) == getattr(act, "negative_slope", 0)


def test_unknown_model_class_is_named(official, tmp_path):
    common, yolo = official
    conv = common.Conv(3, 8)
    conv.i, conv.f = 0, -1
    odd = common.C3TR()
    odd.i, odd.f = 1, -1
    model = yolo.Model({"nc": 1}, [conv, odd], [], ["a"], torch.tensor([32.0]))
    torch.save({"model": model}, tmp_path / "odd.pt")
    with pytest.raises(YoloPruneError, match=r"models\.common\.C3TR"):
        load_foreign(tmp_path / "odd.pt")


# -- refusing everything else ------------------------------------------------------------------------------------------
class _Reduce:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "hidden in a real checkpoint"])
def test_malicious_pickle_is_refused_and_nothing_runs(kind, request, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if kind == "os.system":
        payload, name = _Reduce(os.system, f"touch {marker}"), r"(posix|os)\.system"
        torch.save({"epoch": -1, "model": payload}, path)
    elif kind == "builtins.eval":
        payload, name = _Reduce(eval, f"open({str(marker)!r}, 'w')"), r"builtins\.eval"
        torch.save({"epoch": -1, "model": payload}, path)
    else:  # a genuine official checkpoint with one extra global appended to its dict
        import pickle
        import zipfile

        payload, name = _Reduce(os.system, f"touch {marker}"), r"(posix|os)\.system"
        with zipfile.ZipFile(request.getfixturevalue("yolov5n")) as z:
            entries = {n: z.read(n) for n in z.namelist()}
        pkl = next(n for n in entries if n.endswith("data.pkl"))
        # one more item in the checkpoint dict, set just before STOP: {..., "x": os.system("touch marker")}
        key = b"X\x01\x00\x00\x00x"  # BINUNICODE "x"
        entries[pkl] = entries[pkl][:-1] + key + pickle.dumps(payload, protocol=2)[2:-1] + b"s."  # SETITEM, STOP
        with zipfile.ZipFile(path, "w") as z:
            for n, data in entries.items():
                z.writestr(n, data)
        assert is_foreign(path)
    for load in (load_foreign, lambda p: import_checkpoint(p, tmp_path / "out.pt"), load_checkpoint):
        with pytest.raises(YoloPruneError, match=name) as e:
            load(str(path))
        assert "nothing from the file was run" in str(e.value)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    # control: the file really carries the call, and an ordinary unpickling runs it
    assert any(g.endswith(".system") or g.endswith(".eval") for g in get_unsafe_globals_in_checkpoint(str(path)))
    if kind != "hidden in a real checkpoint":  # (that one needs the original `models` package to get that far)
        torch.load(path, weights_only=False)
        assert marker.exists()
