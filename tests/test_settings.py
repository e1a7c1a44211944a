"""One source for every pruning setting: flags and API keywords generated from PruneSettings and the methods'
option dataclasses, one clear error for a bad value or another method's option."""

import argparse
import dataclasses

import pytest

from yolo_prune import api
from yolo_prune.cli import _build_parser, main
from yolo_prune.errors import YoloPruneError
from yolo_prune.methods import get_method, list_methods
from yolo_prune.methods.settings import TRAIN_RENAME, PruneSettings, split_keywords
from yolo_prune.options import add_flags, flag_name, given_flags, setting


def flags_of(command: str) -> set[str]:
    sub = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def test_train_flags_come_from_the_dataclasses():
    flags = flags_of("train")
    for f in dataclasses.fields(PruneSettings):
        if f.name != "options":
            assert flag_name(TRAIN_RENAME.get(f.name, f.name)) in flags
    for key in list_methods(one_shot=False):
        for f in dataclasses.fields(get_method(key).Options):
            assert flag_name(f.name) in flags
    assert "--imgsz" in flags and "--flops-imgsz" in flags  # Ultralytics' training size and the FLOPs size
    assert {"--round-to", "--min-keep", "--imgsz", "--random-seed"} <= flags_of("prune")


def test_a_new_field_is_enough_for_a_flag_and_a_keyword():
    @dataclasses.dataclass
    class More(PruneSettings):
        dry_run: bool = setting(False, "a setting added later")
        table: str | None = setting(None, "another")

    parser = argparse.ArgumentParser()
    add_flags(parser, More)
    args = parser.parse_args(["--dry-run", "--table", "x.json", "--round-to", "16"])
    assert given_flags(args, More) == {"dry_run": True, "table": "x.json", "round_to": 16}
    assert More(**given_flags(args, More)).validate().table == "x.json"


def test_api_keywords_split_into_settings_options_and_ultralytics():
    settings, options, rest = split_keywords({"flops": 0.3, "flops_imgsz": 320, "regrow": 0.1, "epochs": 2,
                                              "imgsz": 160}, TRAIN_RENAME)  # fmt: skip
    assert (
        settings == {"flops": 0.3, "imgsz": 320} and options == {"regrow": 0.1} and rest == {"epochs": 2, "imgsz": 160}
    )


@pytest.mark.parametrize("kwargs, message", [
    (dict(flops="a lot"), "--flops must be a number, got 'a lot'"),
    (dict(flops=0.3, steps_per_epoch=1.5), "--steps-per-epoch must be a whole number"),
    (dict(flops=0.3, regrow=2.0), "--regrow must be a fraction within [0, 1]"),
    (dict(flops=0.3, method="asfp", regrow=0.1), "--regrow is an option of method 'effp', not of 'asfp'"),
    (dict(flops=0.3, method="l1"), "prunes a trained model at once"),
])  # fmt: skip
def test_train_keywords_are_checked_before_anything_runs(kwargs, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(YoloPruneError) as e:
        api.train(cfg="yolov8n.yaml", **kwargs)
    assert message in str(e.value)
    assert not list(tmp_path.iterdir())


def test_cli_option_of_another_method_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--cfg", "yolov8n.yaml", "--flops", "0.3", "--method", "uniform", "--kappa", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--kappa is an option of method 'asfp', not of 'uniform'" in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_prune_passes_method_options(tmp_path):
    a, b = (api.prune("yolov8n.yaml", flops=0.3, method="random", imgsz=64, random_seed=s)["model"] for s in (0, 1))
    assert [p.shape for p in a.parameters()] != [p.shape for p in b.parameters()]
    with pytest.raises(YoloPruneError, match="training-only"):
        api.prune("yolov8n.yaml", flops=0.3, steps_per_epoch=2)
