"""`yolo-prune train` from the command line on the embedded demo data, then the plain Ultralytics CLI on its best.pt."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import get_flops

from yolo_prune.cli import main
from yolo_prune.nn.build import load_model

YOLO_CLI = [sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()"]


@pytest.mark.slow
def test_train_cli_on_demo_data_then_plain_yolo(tmp_path, capfd):
    argv = ["train", "--cfg", "yolov7-tiny.yaml", "--flops", "0.37", "--epochs", "2", "--imgsz", "64",
            "--project", str(tmp_path), "--name", "demo", "workers=0", "plots=False"]  # fmt: skip
    assert main(argv) == 0
    best = tmp_path / "demo" / "weights" / "best.pt"
    model, ckpt = load_checkpoint(str(best))
    base = get_flops(load_model("yolov7-tiny.yaml", nc=model.model[-1].nc), 640)
    assert 1 - get_flops(model, 640) / base == pytest.approx(0.37, abs=0.005)
    out, err = capfd.readouterr()
    assert "training on the embedded demo dataset" in out + err
    assert "slim" in out + err and "mAP50-95" in out + err  # the closing base-vs-slim table
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    for args in (["val", f"model={best}", "imgsz=64", "batch=8", "plots=False"],
                 ["predict", f"model={best}", f"source={ckpt['train_args']['data'].rsplit('/', 1)[0]}/images/val",
                  "imgsz=64", f"project={tmp_path}", "max_det=5"]):  # fmt: skip
        run = subprocess.run(YOLO_CLI + args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "demo" / "prune_log.csv").exists()


def test_train_cli_bad_input(capsys, tmp_path):
    assert main(["train", "--cfg", "nope.yaml", "--flops", "0.3", "--project", str(tmp_path)]) == 2
    assert "Unknown model 'nope.yaml'" in capsys.readouterr().err
    assert main(["train", "--flops", "1.5", "--project", str(tmp_path)]) == 2
    assert "--flops" in capsys.readouterr().err
    assert main(["train", "--flops", "0.3", "lr0", "--project", str(tmp_path)]) == 2
    assert "key=value" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_train_from_official_weights_writes_only_inside_the_run_folder(tmp_path, monkeypatch, coco8_yaml,
                                                                        yolov5n_official):  # fmt: skip
    from ultralytics.utils import SETTINGS

    weights_dir = Path(SETTINGS["weights_dir"])
    before = sorted(weights_dir.rglob("*")) if weights_dir.exists() else []
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["train", "--weights", yolov5n_official, "--flops", "0.3", "--data", coco8_yaml, "--epochs", "1",
            "--imgsz", "64", "--project", tmp_path / "runs", "--name", "v5", "workers=0", "plots=False"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    assert not list(work.iterdir())  # no weights/, no runs/detect/val in the working directory
    assert (sorted(weights_dir.rglob("*")) if weights_dir.exists() else []) == before
    assert (tmp_path / "runs" / "v5" / "weights" / "best.pt").is_file()
