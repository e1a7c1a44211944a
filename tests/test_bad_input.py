"""Bad input to any command: one clear error line, exit code 2, no traceback, and nothing written (no training)."""

from pathlib import Path

import pytest
import torch
import yaml

from yolo_prune.cli import main

NON_DETECTORS = ["yolov8n-cls.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-obb.yaml"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory: whatever a failing command writes (runs/, weights/) would show up here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def fails_cleanly(argv, capsys, folder, *needles):
    before = files_in(folder)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"yolo-prune {argv[0]}: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert files_in(folder) == before, "a failing command wrote files"
    return err


# -- models that are not detectors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NON_DETECTORS)
@pytest.mark.parametrize("command", [["info"], ["prune", "--flops", "0.3", "--out", "out.pt"], ["export"]])
def test_non_detector_yamls_are_refused(name, command, workdir, capsys):
    head = {"cls": "Classify", "seg": "Segment", "pose": "Pose", "obb": "OBB"}[name.split("-")[1][:-5]]
    fails_cleanly([command[0], "--model", name, *command[1:]], capsys, workdir, "not an object detector", head)


def test_non_detector_checkpoint_is_refused(workdir, capsys):
    from ultralytics.nn.tasks import SegmentationModel

    torch.save({"model": SegmentationModel("yolov8n-seg.yaml", verbose=False), "train_args": {}}, "seg.pt")
    fails_cleanly(["info", "--model", "seg.pt"], capsys, workdir, "not an object detector", "Segment")


def test_train_refuses_a_non_detector(workdir, capsys, coco8_yaml):
    argv = ["train", "--cfg", "yolov8n-seg.yaml", "--flops", "0.3", "--data", coco8_yaml, "--project", "runs"]
    fails_cleanly(argv, capsys, workdir, "not an object detector")


# -- image sizes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("imgsz", [100, 0, -160])
@pytest.mark.parametrize("command", [
    ["prune", "--model", "yolov8n.yaml", "--flops", "0.3", "--out", "out.pt"],
    ["info", "--model", "yolov8n.yaml"],
    ["bench", "--model", "yolov8n.yaml", "--backend", "torch", "--runs", "1", "--warmup", "0"],
    ["val", "--model", "yolov8n.yaml"],
    ["export", "--model", "yolov8n.yaml", "--out", "out.onnx"],
    ["train", "--cfg", "yolov8n.yaml", "--flops", "0.3", "--project", "runs"],
])  # fmt: skip
def test_imgsz_must_be_a_positive_multiple_of_the_stride(imgsz, command, workdir, capsys):
    fails_cleanly([*command, "--imgsz", imgsz], capsys, workdir, "positive multiple of the model stride 32",
                  str(imgsz))  # fmt: skip


# -- outputs ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def unwritable(workdir):
    """Paths no process can create, not even root (a permission bit would not stop root)."""
    (workdir / "a_file").write_text("x")
    paths = [workdir / "a_file" / "out"]
    if Path("/proc/self").is_dir():
        paths.append(Path("/proc/out"))
    return paths


@pytest.mark.parametrize("command, suffix", [
    (["prune", "--model", "yolov8n.yaml", "--flops", "0.3", "--imgsz", "64", "--out"], ".pt"),
    (["export", "--model", "yolov8n.yaml", "--imgsz", "64", "--out"], ".onnx"),
    (["val", "--model", "yolov8n.yaml", "--imgsz", "64", "--json"], ".json"),
    (["bench", "--model", "yolov8n.yaml", "--backend", "torch", "--imgsz", "64", "--json"], ".json"),
    (["import", "{shared}", "--out"], ".pt"),
])  # fmt: skip
def test_unwritable_output_fails_before_any_work(command, suffix, unwritable, workdir, capsys, request):
    if "{shared}" in command:
        official = str(request.getfixturevalue("yolov5n_official"))
        command = [official if c == "{shared}" else c for c in command]
    for out in unwritable:
        fails_cleanly([*command, f"{out}{suffix}"], capsys, workdir, "cannot be written", str(out.parent))


def test_bench_on_a_missing_onnx(workdir, capsys):
    fails_cleanly(["bench", "--model", "missing.onnx"], capsys, workdir, "'missing.onnx' does not exist")


# -- train: everything checked before the trainer creates its run folder -----------------------------------------------
def write_yaml(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj) if not isinstance(obj, str) else obj)
    return path


@pytest.mark.parametrize("case", ["missing", "no images", "malformed", "no val"])
def test_train_checks_the_dataset_first(case, workdir, capsys, coco8):
    content = {
        "no images": {"path": str(workdir / "gone"), "train": "images/train", "val": "images/val", "names": {0: "a"}},
        "malformed": "path: [unclosed\ntrain: : :\n",
        "no val": {"path": str(coco8), "train": "images/train", "names": {0: "a"}},
    }
    data = write_yaml(workdir / "d.yaml", content[case]) if case in content else workdir / "nope.yaml"
    needle = {"missing": "not an existing .yaml", "no images": "images not found", "malformed": "YAML",
              "no val": "val"}[case]  # fmt: skip
    argv = ["train", "--cfg", "yolov8n.yaml", "--flops", "0.3", "--data", data, "--project", "runs"]
    fails_cleanly(argv, capsys, workdir, "Dataset", needle)


@pytest.mark.parametrize("extra, needle", [
    (["--flops", "0.999"], "unreachable"),
    (["--flops", "0.3", "--epochs", "0"], "--epochs must be"),
    (["--flops", "0.3", "epochs=-2"], "--epochs must be"),
    (["--flops", "0.3", "--weights", "missing.pt"], "does not exist"),
])  # fmt: skip
def test_train_checks_arguments_first(extra, needle, workdir, capsys, coco8_yaml):
    argv = ["train", "--cfg", "yolov8n.yaml", "--data", coco8_yaml, "--project", "runs", *extra]
    fails_cleanly(argv, capsys, workdir, needle)


def test_train_weights_with_other_classes(slim_v8n, workdir, capsys, coco8):
    one_class = write_yaml(workdir / "one.yaml", {"path": str(coco8), "train": "images/train", "val": "images/val",
                                                   "names": {0: "thing"}})  # fmt: skip
    argv = ["train", "--weights", slim_v8n, "--flops", "0.3", "--data", one_class, "--project", "runs"]
    fails_cleanly(argv, capsys, workdir, "predicts 80 classes, the dataset has 1")


@pytest.fixture
def bad_resumes(slim_v8n, workdir):
    """The --resume files the issue lists: missing, text, truncated, from a finished run, a non-training file."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    (workdir / "notes.txt").write_text("not a checkpoint\n")
    data = slim_v8n.read_bytes()
    (workdir / "cut.pt").write_bytes(data[: len(data) // 2])
    ckpt = torch.load(slim_v8n, weights_only=False)  # the layout strip_optimizer leaves at the end of a run
    ckpt.update(epoch=-1, optimizer=None, ema=None, train_args={**DEFAULT_CFG_DICT, "epochs": 3})
    torch.save(ckpt, workdir / "finished.pt")
    return {"missing.pt": "no such file", "notes.txt": "not a .pt file", "cut.pt": "truncated",
            "finished.pt": "that run finished", str(slim_v8n): "not a last.pt written by training"}  # fmt: skip


def test_every_bad_resume(bad_resumes, workdir, capsys):
    for path, needle in bad_resumes.items():
        fails_cleanly(["train", "--resume", path], capsys, workdir, needle)


def test_resume_without_a_run_to_resume(workdir, capsys):
    fails_cleanly(["train", "--resume"], capsys, workdir, "Nothing to resume")
