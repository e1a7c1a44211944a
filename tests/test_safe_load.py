"""Checkpoints and model YAMLs never run code from the file: every command refuses a payload with one clear error."""

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from yolo_prune import safe_load
from yolo_prune.cli import main
from yolo_prune.errors import YoloPruneError
from yolo_prune.safe_load import TRUST_ENV, load, load_checkpoint


class Call:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture
def evil(slim_v8n, tmp_path):
    """A genuine checkpoint with one extra key whose value runs `touch marker` when unpickled normally."""
    marker = tmp_path / "pwned"
    ckpt = torch.load(slim_v8n, weights_only=False)
    ckpt["x"] = Call(os.system, f"touch {marker}")
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    return path, marker


@pytest.fixture
def no_trust(monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "0")  # restored after the test, also where the CLI sets it


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("argv", [
    ["info", "--model", "{evil}"],
    ["prune", "--model", "{evil}", "--flops", "0.3", "--imgsz", "64", "--out", "{tmp}/out.pt"],
    ["val", "--model", "{evil}", "--data", "{data}", "--imgsz", "64"],
    ["export", "--model", "{evil}", "--imgsz", "64", "--out", "{tmp}/out.onnx"],
    ["bench", "--model", "{evil}", "--backend", "torch", "--imgsz", "64"],
    ["train", "--weights", "{evil}", "--flops", "0.3", "--data", "{data}", "--project", "{tmp}/runs"],
    ["train", "--resume", "{evil}"],
])  # fmt: skip
def test_every_command_refuses_a_payload_in_a_checkpoint(argv, evil, coco8_yaml, tmp_path, capsys, no_trust):
    path, marker = evil
    argv = [a.format(evil=path, tmp=tmp_path, data=coco8_yaml) for a in argv]
    assert main(argv) == 2
    one_line_error(capsys, "posix.system", "nothing from the file was run", "--trust-checkpoint")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # no output, no run folder


def test_trust_checkpoint_opts_in(evil, capsys, no_trust):
    path, marker = evil
    assert main(["info", "--model", str(path), "--imgsz", "64", "--trust-checkpoint"]) == 0
    assert marker.exists()  # control: the payload is real, and the flag really loads with the ordinary unpickler


def test_legacy_pickle_is_refused(tmp_path, no_trust):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.pt"
    ckpt = {"epoch": 299, "best_fitness": 0.5, "model": Call(os.system, f"touch {marker}"), "optimizer": None}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # the pre-1.6 format: one plain pickle stream
    with pytest.raises(YoloPruneError, match=r"posix\.system"):
        load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control
    assert marker.exists()


def test_model_classes_are_never_called(tmp_path, no_trust):
    """A class of the allow-list called with crafted arguments would run its constructor: here a YAML parse that
    Ultralytics `eval`s an activation from."""
    marker = tmp_path / "pwned"
    cfg = {"nc": 1, "activation": f"__import__('os').system('touch {marker}')",
           "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[[0], 1, "Detect", ["nc"]]]}  # fmt: skip
    path = tmp_path / "call.pt"
    torch.save({"model": Call(DetectionModel, cfg)}, path)
    with pytest.raises(YoloPruneError, match="DetectionModel"):
        load(path)
    assert not marker.exists()
    with pytest.raises(TypeError):  # control: an ordinary unpickling evaluates the activation, then fails to build
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload, named", [
    (Call(getattr, nn.Conv2d, "register_forward_hook"), "getattr"),
    (Call(eval, "1"), "builtins.eval"),
    (Call(nn.Conv2d, 3, 3, 1), "Conv2d"),
])  # fmt: skip
def test_calls_outside_the_plain_data_ones_are_refused(payload, named, tmp_path, no_trust):
    path = tmp_path / "x.pt"
    torch.save({"model": None, "x": payload}, path)
    with pytest.raises(YoloPruneError, match=named):
        load(path)


def test_a_file_never_makes_us_import_a_module(tmp_path, no_trust):
    path = tmp_path / "main.pt"
    path.write_bytes(b"\x80\x02cyolo_prune.__main__\nmain\n)R.")  # GLOBAL yolo_prune.__main__.main, call it
    with pytest.raises(YoloPruneError, match=r"yolo_prune\.__main__\.main"):
        load(path)
    assert "yolo_prune.__main__" not in sys.modules  # importing it would have run the CLI


def test_our_outputs_load_under_the_restricted_loader(slim_v8n, yolov5n_coco, no_trust):
    for path in (slim_v8n, yolov5n_coco):
        model, ckpt = load_checkpoint(path)
        assert isinstance(model, DetectionModel) and model.task == "detect" and isinstance(ckpt, dict)


def test_our_outputs_load_under_ultralytics_safe_load(slim_v8n, yolov5n_coco, tmp_path):
    """`ULTRALYTICS_SAFE_LOAD=1` (torch weights-only loading): a stock-class slim model loads in plain Ultralytics;
    one with yolo-prune classes (the imported YOLOv5n) once yolo-prune registered them."""
    code = textwrap.dedent(f"""
        from ultralytics.nn.tasks import load_checkpoint
        load_checkpoint({str(slim_v8n)!r})
        import sys; assert "yolo_prune" not in sys.modules
        import yolo_prune  # installs: our classes join torch's weights-only allow-list
        load_checkpoint({str(yolov5n_coco)!r})
        print("loaded")
    """)  # fmt: skip
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "YOLO_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("activation", ['__import__("os").system("touch {marker}")', "nn.SiLU().__class__()",
                                        "eval('nn.ReLU()')", "os.system"])  # fmt: skip
def test_model_yaml_activation_is_parsed_not_evaluated(activation, tmp_path, capsys):
    import yaml
    from ultralytics.utils import ROOT

    marker = tmp_path / "pwned"
    cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8.yaml").read_text())
    cfg["activation"] = activation.format(marker=marker)
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["info", "--model", str(path), "--imgsz", "64"]) == 2
    one_line_error(capsys, "Activation", "nn.LeakyReLU(0.1)")
    assert not marker.exists()


@pytest.mark.parametrize("activation", ["nn.SiLU()", "nn.LeakyReLU(0.1)", "torch.nn.ReLU()", "nn.Hardswish()"])
def test_model_yaml_torch_activations_are_accepted(activation, tmp_path):
    import yaml
    from ultralytics.utils import ROOT

    from yolo_prune.nn.build import load_model

    cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8.yaml").read_text())
    path = tmp_path / "yolov8n-act.yaml"
    path.write_text(yaml.safe_dump({**cfg, "activation": activation}))
    model = load_model(path)
    assert type(model.model[0].act).__name__ == activation.split("nn.")[1].split("(")[0]


def test_model_yaml_rows_must_name_layer_classes(tmp_path, capsys):
    import yaml
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8.yaml").read_text())
    cfg["backbone"][0] = [-1, 1, "check_requirements", ["some-package"]]  # Ultralytics would call it: a pip install
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["info", "--model", str(path)]) == 2
    one_line_error(capsys, "check_requirements", "not a model layer class")


def test_pickle_helpers_stay_plain(tmp_path, no_trust):
    """Bytes, sets, numpy scalars and paths (what Ultralytics checkpoints carry beside the model) still load."""
    import numpy as np

    data = {"b": b"\x00\xff", "s": {1, 2}, "f": np.float64(0.5), "a": np.arange(3), "p": tmp_path, "d": torch.float16}
    path = tmp_path / "data.pt"
    torch.save(data, path)
    back = load(path)
    assert back["b"] == data["b"] and back["s"] == {1, 2} and back["f"] == 0.5 and back["p"] == tmp_path
    assert (back["a"] == np.arange(3)).all() and back["d"] is torch.float16


def test_a_checkpoint_yaml_is_checked_like_a_model_yaml(slim_v8n, tmp_path, capsys, no_trust):
    """Ultralytics' trainer rebuilds a checkpoint's model from its `yaml` dict, evaluating the activation there."""
    ckpt = torch.load(slim_v8n, weights_only=False)
    ckpt["model"].yaml = {**ckpt["model"].yaml, "activation": "__import__('os').getcwd()"}
    path = tmp_path / "yaml.pt"
    torch.save(ckpt, path)
    assert main(["info", "--model", str(path)]) == 2
    one_line_error(capsys, "Activation", "__import__")


def test_ultralytics_own_loads_are_restricted_inside_the_trainer(slim_v8n, evil, no_trust):
    """Pins what `ultralytics_loads` relies on: Ultralytics' loader goes through torch.load, which the public
    TORCH_FORCE_WEIGHTS_ONLY_LOAD switch turns weights-only, allowed only the globals our policy accepted."""
    from ultralytics.nn.tasks import load_checkpoint as ultralytics_load

    from yolo_prune.safe_load import ultralytics_loads

    path, marker = evil
    with ultralytics_loads(slim_v8n):
        ultralytics_load(str(slim_v8n))  # what the policy accepted loads
        with pytest.raises(TypeError, match="Weights only load failed"):  # Ultralytics' wording around torch's refusal
            ultralytics_load(str(path))
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


@pytest.mark.parametrize("key", ["model", "pretrained"])
def test_the_trainer_reads_model_and_pretrained_checkpoints_safely(key, evil, coco8_yaml, tmp_path, no_trust):
    from yolo_prune.train.trainer import PruneTrainer

    path, marker = evil
    model = str(path) if key == "model" else "yolov8n.yaml"
    overrides = dict(model=model, data=str(coco8_yaml), epochs=1, imgsz=64, device="cpu", workers=0, plots=False,
                     project=str(tmp_path), name="run", **({"pretrained": str(path)} if key == "pretrained" else {}))
    with pytest.raises(YoloPruneError, match=r"posix\.system"):
        PruneTrainer(overrides=overrides).train()
    assert not marker.exists()


def test_classes_re_exported_by_their_package_resolve():
    """Checkpoints saved before nn/anchor.py became a package name its classes `yolo_prune.nn.anchor.<Class>`."""
    from yolo_prune.nn.anchor import AnchorDetect, AnchorLoss

    assert safe_load.resolve("yolo_prune.nn.anchor", "AnchorDetect") is AnchorDetect
    assert safe_load.resolve("yolo_prune.nn.anchor", "AnchorLoss") is AnchorLoss
    with pytest.raises(pickle.UnpicklingError):  # still only our packages' classes
        safe_load.resolve("yolo_prune.nn.anchor", "torch")
