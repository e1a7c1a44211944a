"""`yolo-prune prune` and `info`: FLOPs targets met by Ultralytics' counter, plain-CLI compatibility, clear errors."""

import json
import subprocess
import sys

import pytest
import torch
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import get_flops

from tests.models import ALL_MODELS
from yolo_prune import api
from yolo_prune.checkpoint import is_one_shot_prune
from yolo_prune.cli import main
from yolo_prune.errors import YoloPruneError


@pytest.mark.parametrize("name", ALL_MODELS)
def test_prune_cuts_flops_by_target(name, tmp_path):
    out = tmp_path / "slim.pt"
    report = api.prune(name, flops=0.37, out=out)
    model, _ = load_checkpoint(str(out))  # Ultralytics' own loader, on the saved file
    measured = get_flops(model, 640)
    assert 1 - measured / report["base_gflops"] == pytest.approx(0.37, abs=0.005)
    assert report["predicted_gflops"] == pytest.approx(measured, rel=1e-9)
    ckpt = torch.load(out, weights_only=False)
    widths = ckpt["yolo_prune"]["widths"]
    assert is_one_shot_prune(ckpt)  # what tells a later fine-tune to keep batch statistics (test_freeze_bn.py)
    assert all(w % 8 == 0 or w == full for w, full in zip(widths.values(), _full_widths(name).values()))


def _full_widths(name):
    from yolo_prune.graph.analyze import analyze
    from yolo_prune.nn.build import load_model

    return {g.name: g.width for g in analyze(load_model(name)).groups}


def test_cli_prune_then_plain_ultralytics_cli(tmp_path, coco8_images, capsys):
    out = tmp_path / "v8n-slim.pt"
    assert main(["prune", "--model", "yolov8n.yaml", "--flops", "0.37", "--out", str(out)]) == 0
    assert "FLOPs cut 0.37" in capsys.readouterr().out
    env_cmd = [sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()"]
    for args in (["predict", f"model={out}", f"source={coco8_images[0]}", "imgsz=160", f"project={tmp_path}"],
                 ["export", f"model={out}", "format=onnx", "imgsz=160"]):  # fmt: skip
        run = subprocess.run(env_cmd + args, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                             env={**__import__("os").environ, "YOLO_OFFLINE": "1"})  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "v8n-slim.onnx").stat().st_size > 0


def test_slim_checkpoint_fine_tunes_without_regrowing(tmp_path, coco8_yaml):
    """A further .train() of a slim checkpoint keeps its widths (PruneTrainer never rebuilds from the YAML)."""
    from ultralytics import YOLO

    from yolo_prune.train.trainer import PruneTrainer

    out = tmp_path / "slim.pt"
    api.prune("yolov8n.yaml", flops=0.37, out=out)
    YOLO(str(out)).train(trainer=PruneTrainer, data=str(coco8_yaml), epochs=1, imgsz=64, batch=4, workers=0,
                         plots=False, project=str(tmp_path), name="ft", exist_ok=True, device="cpu", val=False)
    tuned, _ = load_checkpoint(str(tmp_path / "ft" / "weights" / "last.pt"))
    assert get_flops(tuned, 640) == pytest.approx(get_flops(load_checkpoint(str(out))[0], 640), rel=1e-9)


def test_info_json(capsys):
    assert main(["info", "--model", "yolo11n.yaml", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gflops"] == pytest.approx(get_flops(__import__("yolo_prune.nn.build").nn.build.load_model(
        "yolo11n.yaml"), 640), rel=1e-9)  # fmt: skip
    assert info["groups"] and info["barriers"] == ["model.10.m.0.attn (Attention)"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "yolov99z.yaml", "--flops", "0.37"], "Unknown model 'yolov99z.yaml'"),
        (["--model", "yolov8n.yaml", "--flops", "1.2"], "strictly between 0 and 1"),
        (["--model", "yolov8n.yaml", "--flops", "0"], "strictly between 0 and 1"),
        (["--model", "yolov8n.yaml", "--flops", "0.95"], "the largest reachable cut is 0."),
        (["--model", "yolov8n.yaml", "--flops", "0.3", "--method", "effp"], "prunes during training"),
    ],
)
def test_bad_input_one_clear_error_and_no_output(argv, message, tmp_path, capsys):
    out = tmp_path / "out.pt"
    with pytest.raises(SystemExit) if "--method" in argv else _no_raise():
        code = main(["prune", *argv, "--out", str(out)])
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_not_a_detection_checkpoint(tmp_path, capsys):
    from ultralytics.nn.tasks import ClassificationModel

    cls_ckpt = tmp_path / "cls.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", verbose=False)}, cls_ckpt)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for src in (cls_ckpt, junk):
        with pytest.raises(YoloPruneError, match="not an object detector|Cannot read"):
            api.prune(src, flops=0.37, out=tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
