
"""YOLOv7 and YOLOv7-tiny (configs/yolov7*.yaml): official structure and size, RepConv fusion, the Ultralytics
train/val/predict/export loop, checkpoints in fresh processes, and the pruning engine's view of the models."""

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from tests.models import randomize
from yolo_prune.errors import YoloPruneError
from yolo_prune.nn.build import config_path, load_model

MODELS = ["yolov7.yaml", "yolov7-tiny.yaml"]
# the full model trains and exports in about a minute on 2 CPU cores
MODELS_SLOW_FULL = [pytest.param("yolov7.yaml", marks=pytest.mark.slow), "yolov7-tiny.yaml"]

# Layers the official YAMLs route from (and their comments): index -> (output channels, stride) at any input size
OFFICIAL_ROUTES = {
    "yolov7.yaml": {
        11: (256, 4), 16: (256, 8), 24: (512, 8), 29: (512, 16), 37: (1024, 16), 42: (1024, 32), 50: (1024, 32),
        51: (512, 32), 63: (256, 16), 75: (128, 8), 88: (256, 16), 101: (512, 32),
        102: (256, 8), 103: (512, 16), 104: (1024, 32),
    },
    "yolov7-tiny.yaml": {
        7: (64, 4), 14: (128, 8), 21: (256, 16), 28: (512, 32), 37: (256, 32), 47: (128, 16), 57: (64, 8),
        65: (128, 16), 73: (256, 32), 74: (128, 8), 75: (256, 16), 76: (512, 32),
    },
}  # fmt: skip
ACTIVATION = {"yolov7.yaml": (nn.SiLU, None), "yolov7-tiny.yaml": (nn.LeakyReLU, 0.1)}

# The official deploy (fused) yolov7.pt summary printed by the official repo: "306 layers, 36905341 parameters,
# 104.5 GFLOPS". YOLOv7-tiny: 6.2 M parameters, 13.8 GFLOPs (README/paper). Both with the anchor-based IDetect head.
OFFICIAL_SIZE = {"yolov7.yaml": (36_905_341, 104.5), "yolov7-tiny.yaml": (6.2e6, 13.8)}


def _image(path, size: int) -> torch.Tensor:
    import cv2

    bgr = cv2.resize(cv2.imread(str(path)), (size, size))
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)[None].float() / 255


def _feature_shapes(model: nn.Module, imgsz: int) -> dict[int, tuple[int, int]]:
    """Output (channels, stride) of every top-level layer, from one real forward."""
    shapes, hooks = {}, []
    for layer in model.model[:-1]:
        hooks.append(layer.register_forward_hook(lambda m, _i, y: shapes.__setitem__(m.i, (y.shape[1], y.shape[2]))))
    with torch.no_grad():
        model(torch.zeros(1, 3, imgsz, imgsz))
    for h in hooks:
        h.remove()
    return {i: (c, imgsz // h) for i, (c, h) in shapes.items()}


# -- structure -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_layers_match_the_official_routes_at_640(name):
    model = load_model(name)
    assert model.model[-1].i == max(OFFICIAL_ROUTES[name]) + 1, "Detect must come right after the official layers"
    shapes = _feature_shapes(model, 640)
    assert {i: shapes[i] for i in OFFICIAL_ROUTES[name]} == OFFICIAL_ROUTES[name]
    detect = model.model[-1]
    assert detect.f == sorted(OFFICIAL_ROUTES[name])[-3:] and detect.nc == 80
    with torch.no_grad():
        y, _ = model(torch.zeros(1, 3, 640, 640))
    assert y.shape == (1, 4 + 80, 80 * 80 + 40 * 40 + 20 * 20)
    act_type, slope = ACTIVATION[name]
    acts = [m.act for m in model.modules() if hasattr(m, "act") and not isinstance(m.act, nn.Identity)]
    assert acts and all(type(a) is act_type for a in acts)
    assert slope is None or all(a.negative_slope == slope for a in acts)


def test_yolov7_has_the_official_special_layers():
    from ultralytics.nn.modules import RepConv

    from yolo_prune.nn.modules import SPPCSPC

    layers = load_model("yolov7.yaml").model
    assert isinstance(layers[51], SPPCSPC)
    assert [type(layers[i]) for i in (102, 103, 104)] == [RepConv] * 3
    assert [(layers[i].conv1.conv.in_channels, layers[i].c2) for i in (102, 103, 104)] == [(128, 256), (256, 512),
                                                                                            (512, 1024)]  # fmt: skip
    pools = [m for m in layers if isinstance(m, nn.MaxPool2d)]
    assert [m.i for m in pools] == [12, 25, 38, 76, 89] and all(m.kernel_size == m.stride == 2 for m in pools)


@pytest.mark.parametrize("name", MODELS)
def test_backbone_and_neck_have_the_official_size(name):
    """Our layers before Detect plus the official anchor head (fused: a 1x1 conv per level, c -> 3 x (5 + 80), with
    bias) must reproduce the official model's parameters and GFLOPs at 640."""
    import thop
    from ultralytics.utils.torch_utils import get_flops

    model = load_model(name).fuse(verbose=False)
    detect = model.model[-1]
    ch = [c for c, _ in (_feature_shapes(model, 640)[i] for i in detect.f)]
    feats = [torch.zeros(1, c, 640 // s, 640 // s) for c, s in zip(ch, (8, 16, 32))]
    detect_gflops = 2 * thop.profile(copy.deepcopy(detect), inputs=(feats,), verbose=False)[0] / 1e9
    body_params = sum(p.numel() for p in model.model[:-1].parameters())
    anchor_head_params = sum(c * 255 + 255 for c in ch)
    anchor_head_gflops = 2 * sum(f.shape[2] * f.shape[3] * c * 255 for f, c in zip(feats, ch)) / 1e9
    params = body_params + anchor_head_params
    gflops = get_flops(model, 640) - detect_gflops + anchor_head_gflops
    official_params, official_gflops = OFFICIAL_SIZE[name]
    if name == "yolov7.yaml":
        assert params == official_params
        assert round(gflops, 1) == official_gflops
    else:
        assert round(params / 1e6, 1) == official_params / 1e6
        assert abs(gflops - official_gflops) <= 0.1


@pytest.mark.parametrize("name", [*MODELS, "yolov7-tiny-idetect.yaml"])
def test_configs_resolve_by_name_and_by_path(name):
    """Ours and Ultralytics' own `YOLO(...)` (after `import yolo_prune`) build the same model, by name or by path."""
    from ultralytics import YOLO

    path = config_path(name)
    assert path is not None and path.name == name and path.is_file()
    models = [load_model(name), load_model(str(path)), YOLO(name).model, YOLO(str(path)).model]
    assert len({type(m) for m in models}) == 1
    assert len({sum(p.numel() for p in m.parameters()) for m in models}) == 1
    assert len({tuple(m.type for m in model.model) for model in models}) == 1


# -- RepConv fusion ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_fused_model_gives_the_same_outputs(name, coco8_images):
    from ultralytics.nn.modules import RepConv

    torch.manual_seed(0)
    model = load_model(name)
    randomize(model)
    x = _image(coco8_images[0], 640)
    fused = copy.deepcopy(model).fuse(verbose=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    rep = [m for m in fused.modules() if isinstance(m, RepConv)]
    assert len(rep) == (3 if name == "yolov7.yaml" else 0)
    assert all(hasattr(m, "conv") and not hasattr(m, "conv1") for m in rep)
    with torch.no_grad():
        (y0, raw0), (y1, raw1) = model(x), fused(x)
    for key in ("boxes", "scores"):  # raw Detect output: box distributions and class logits
        assert raw0[key].abs().max() > 1  # not a degenerate input
        assert (raw0[key] - raw1[key]).abs().max() < 1e-4
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-4)  # decoded boxes are in pixels


# -- pruning engine ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_engine_traces_the_whole_model(name):
    from ultralytics.utils.torch_utils import get_flops

    from yolo_prune.graph.analyze import analyze

    model = load_model(name)
    graph = analyze(model)
    assert graph.barriers == []
    assert graph.groups
    assert graph.gflops() == pytest.approx(get_flops(model, 640), rel=1e-9)


# -- the YAML extension --------------------------------------------------------------------------------------------
def test_parse_model_extension_leaves_stock_models_alone():
    import ultralytics.nn.tasks as tasks

    cfg = tasks.yaml_model_load("yolov8n.yaml")
    stock, _ = tasks.parse_model.__wrapped__(copy.deepcopy(cfg), 3, verbose=False)
    ours, _ = tasks.parse_model(copy.deepcopy(cfg), 3, verbose=False)
    summary = [[(m.i, m.f, m.type, m.np) for m in layers] for layers in (stock, ours)]
    assert summary[0] == summary[1]


def test_explicit_channel_row_with_repeats_is_one_clear_error():
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = yaml_model_load(config_path("yolov7.yaml"))
    cfg["head"][0][1] = 2  # layer 51: SPPCSPC x 2
    with pytest.raises(YoloPruneError, match="Layer 51 .SPPCSPC."):
        DetectionModel(cfg, verbose=False)


# -- Ultralytics loop: train, val, predict, export -----------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS_SLOW_FULL)
def test_train_val_predict_export(name, coco8_yaml, coco8_images, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    from ultralytics import YOLO

    yolo = YOLO(name)  # by name: `import yolo_prune` taught Ultralytics our configs
    yolo.train(data=str(coco8_yaml), epochs=1, imgsz=64, batch=4, workers=0, plots=False, device="cpu",
               project=str(tmp_path), name="train", exist_ok=True, amp=False, val=True)  # fmt: skip
    best = yolo.trainer.best
    assert best.is_file()
    trained = YOLO(str(best))
    assert trained.model.yaml["backbone"] == yaml.safe_load(config_path(name).read_text())["backbone"]

    metrics = trained.val(data=str(coco8_yaml), imgsz=64, batch=4, workers=0, plots=False, device="cpu",
                          project=str(tmp_path), name="val")  # fmt: skip
    assert metrics.nt_per_class.sum() == 17  # coco8 val: 4 images, 17 boxes (../shared/data/coco8/SOURCE.md)
    assert 0.0 <= metrics.box.map <= 1.0

    results = trained.predict([str(p) for p in coco8_images], imgsz=64, conf=0.0, max_det=10, device="cpu")
    assert len(results) == len(coco8_images)
    assert all(r.boxes.data.shape == (10, 6) for r in results)  # conf=0: every image yields max_det boxes

    onnx_path = trained.export(format="onnx", imgsz=64, device="cpu")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = load_model(str(best))
    with torch.no_grad():
        expected = reference(x)[0].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == expected.shape == (1, 84, 8 * 8 + 4 * 4 + 2 * 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


# -- checkpoints in a fresh process ------------------------------------------------------------------------------
_FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.patches import torch_load

    ckpt, ddp_state, x_path, out_path, cfg = sys.argv[1:6]
    x, out = torch.load(x_path), {}
    model = YOLO(ckpt).model.eval()
    out["checkpoint"] = model(x)[0]
    out["ddp"] = torch_load(ddp_state, map_location="cpu")["model"].eval()(x)[0]  # what a DDP worker unpickles
    out["rebuilt"] = sum(p.numel() for p in DetectionModel(model.yaml, verbose=False).parameters())  # trainer path
    out["yolo_prune_after_load"] = "yolo_prune" in sys.modules
    if cfg != "-":  # a YAML with stock modules only must build in plain Ultralytics
        out["from_yaml"] = sum(p.numel() for p in YOLO(cfg).model.parameters())
        out["yolo_prune_after_yaml"] = "yolo_prune" in sys.modules
    torch.save(out, out_path)
    """
)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_loads_in_a_fresh_plain_ultralytics_process(name, tmp_path):
    """Ultralytics checkpoint and a DDP-style cloudpickled model, loaded by `from ultralytics import YOLO` only."""
    cloudpickle = pytest.importorskip("cloudpickle")
    from ultralytics import YOLO
    from ultralytics.utils.patches import torch_save

    torch.manual_seed(0)
    yolo = YOLO(str(config_path(name)))
    model = yolo.model.eval()
    randomize(model)
    yolo.save(tmp_path / "ckpt.pt")
    torch_save({"model": model}, tmp_path / "ddp.pt", pickle_module=cloudpickle)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected_ckpt = copy.deepcopy(model).half().float()(x)[0]  # Model.save stores fp16 weights
        expected_ddp = model(x)[0]
    stock_only = name == "yolov7-tiny.yaml"
    args = [tmp_path / "ckpt.pt", tmp_path / "ddp.pt", tmp_path / "x.pt", tmp_path / "out.pt"]
    args.append(config_path(name) if stock_only else "-")
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_PROCESS)
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out["checkpoint"], expected_ckpt, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["ddp"], expected_ddp, rtol=1e-5, atol=1e-4)
    assert out["rebuilt"] == sum(p.numel() for p in model.parameters())
    # yolov7 holds our SPPCSPC: unpickling imports yolo_prune; yolov7-tiny is stock Ultralytics through and through
    assert out["yolo_prune_after_load"] is not stock_only
    if stock_only:
        assert out["from_yaml"] == out["rebuilt"] and out["yolo_prune_after_yaml"] is False
