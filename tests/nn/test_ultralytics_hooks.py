"""`install()` (yolo_prune/_ultralytics.py): idempotent, version-checked, and each Ultralytics behaviour it relies on
pinned here, so an Ultralytics release that changes one fails a named test instead of a user's run."""

import copy
import os
import subprocess
import sys
import types

import pytest
import ultralytics.nn.tasks as tasks
from ultralytics import YOLO
from ultralytics.utils import checks

from yolo_prune import install
from yolo_prune._ultralytics import SUPPORTED_ULTRALYTICS, UnsupportedUltralytics, check_version
from yolo_prune.nn.anchor import AnchorDetectionModel, ImplicitA
from yolo_prune.nn.cfg import config_path
from yolo_prune.nn.modules import SPPCSPC


def test_install_is_idempotent():
    before = (tasks.parse_model, checks.check_file, vars(tasks.DetectionModel)["__new__"], tasks.SPPCSPC)
    install()
    install()
    assert (tasks.parse_model, checks.check_file, vars(tasks.DetectionModel)["__new__"], tasks.SPPCSPC) == before
    # one wrapper around the stock function each, never a wrapper around a wrapper
    assert tasks.parse_model.__wrapped__.__module__ == "ultralytics.nn.tasks"
    assert checks.check_file.__wrapped__.__module__ == "ultralytics.utils.checks"
    assert not hasattr(tasks.parse_model.__wrapped__, "__wrapped__")
    assert not hasattr(checks.check_file.__wrapped__, "__wrapped__")


@pytest.mark.parametrize("version, ok", [("8.4.190", True), ("8.4.191", True), ("8.4.999.dev0", True),
                                         ("8.4.189", False), ("8.3.250", False), ("8.5.0", False), ("9.0", False),
                                         ("unknown", False)])  # fmt: skip
def test_version_range(version, ok):
    if ok:
        check_version(version)
        return
    with pytest.raises(UnsupportedUltralytics, match=rf"ultralytics{SUPPORTED_ULTRALYTICS}.*{version}.*pip install"):
        check_version(version)


def test_import_with_an_unsupported_ultralytics_fails_with_one_message():
    """The version is checked before anything else of yolo-prune touches Ultralytics."""
    code = ("import ultralytics\nultralytics.__version__ = '8.5.0'\n"
            "try:\n    import yolo_prune\nexcept ImportError as e:\n    print(e)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == (f"yolo-prune needs ultralytics{SUPPORTED_ULTRALYTICS} (it extends that release "
                                  "line's model parser and trainer), but ultralytics 8.5.0 is installed; run: pip "
                                  f"install 'ultralytics{SUPPORTED_ULTRALYTICS}'")  # fmt: skip


# -- the upstream behaviour each step relies on ----------------------------------------------------------------------
def test_parse_model_resolves_module_names_in_the_tasks_namespace():
    """Step 1: a row's module name is looked up in `ultralytics.nn.tasks`' globals, where install() put ours."""
    d = {"nc": 1, "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "ImplicitA", [16]]], "head": []}
    layers, _ = tasks.parse_model.__wrapped__(d, 3, verbose=False)
    assert type(layers[1]) is ImplicitA and layers[1].implicit.shape[1] == 16


def test_stock_parse_model_still_cannot_build_explicit_channel_rows():
    """Step 2: if this starts passing, Ultralytics learned output widths of other modules: drop nn/explicit.py."""
    cfg = tasks.yaml_model_load(config_path("yolov7.yaml"))
    with pytest.raises(TypeError):
        tasks.parse_model.__wrapped__(copy.deepcopy(cfg), 3, verbose=False)  # SPPCSPC(512): no output width
    ours, _ = tasks.parse_model(copy.deepcopy(cfg), 3, verbose=False)
    assert type(ours[51]) is SPPCSPC


def test_check_yaml_searches_only_the_ultralytics_package(tmp_path, monkeypatch):
    """Step 3: stock check_file does not find our configs by name; the wrapper does, and a local file still wins."""
    assert checks.check_file.__wrapped__("yolov7.yaml", hard=False) == []
    assert checks.check_yaml("yolov7.yaml") == str(config_path("yolov7.yaml"))
    assert tasks.yaml_model_load("yolov7-tiny.yaml")["yaml_file"] == "yolov7-tiny.yaml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov7.yaml").write_text("nc: 1\n")
    assert checks.check_yaml("yolov7.yaml") == "yolov7.yaml"


def test_yolo_and_the_detection_trainer_build_through_detection_model():
    """Step 4: YOLO(...) and DetectionTrainer.get_model call tasks.DetectionModel(cfg, ...), which hands anchor
    configs (and only those) to AnchorDetectionModel."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    assert YOLO("yolov8n.yaml").task_map["detect"]["model"] is tasks.DetectionModel
    trainer = types.SimpleNamespace(data={"nc": 2, "channels": 3}, set_model_names_for_load=lambda m: m)
    anchor_cfg = tasks.yaml_model_load(config_path("yolov7-tiny-idetect.yaml"))
    for cfg in (anchor_cfg, "yolov7-tiny-idetect.yaml"):
        model = DetectionTrainer.get_model(trainer, cfg=copy.deepcopy(cfg), verbose=False)
        assert type(model) is AnchorDetectionModel and model.model[-1].nc == 2
    stock = DetectionTrainer.get_model(trainer, cfg="yolov7-tiny.yaml", verbose=False)
    assert type(stock) is tasks.DetectionModel
    assert type(copy.deepcopy(stock)) is tasks.DetectionModel  # deepcopy/unpickling call __new__(cls) alone


# -- offline and settings -----------------------------------------------------------------------------------------
def test_nothing_changes_the_ultralytics_settings(tmp_path):
    """`import yolo_prune` and a build by name leave Ultralytics' settings file byte for byte as Ultralytics wrote it
    (the settings path comes from YOLO_CONFIG_DIR; a training run is checked in tests/test_ultralytics_native.py)."""
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path)}
    first = "import ultralytics.utils as u; print(u.SETTINGS_FILE)"
    run = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, env=env, timeout=300)
    settings = tmp_path / "Ultralytics" / "settings.json"
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == str(settings), run.stderr[-2000:]
    written = settings.read_bytes()
    code = "import yolo_prune\nfrom ultralytics import YOLO\nYOLO('yolov7-tiny-idetect.yaml')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert settings.read_bytes() == written
