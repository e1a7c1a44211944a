"""`yolo-prune` command line: one subcommand per pipeline stage, each a thin call into the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from .errors import YoloPruneError

ONE_SHOT_SETTINGS = ("imgsz", "round_to", "min_keep", "latency", "backend", "lut")  # what a one-shot prune uses
TRUST_HELP = ("load checkpoints with the ordinary unpickler, which runs code stored in them: only for files from a "
              "source you trust (default: a restricted loader refuses such code)")


def _model_arg(p, flag="--model", required=True, **kw):
    p.add_argument(flag, required=required, help="model YAML name (yolov8n.yaml, yolov7.yaml), .yaml path or .pt", **kw)


def _method_flags(p, one_shot: bool) -> None:
    """The options of every method the command runs, one flag group per method (generated from its dataclass)."""
    from .methods import get_method, list_methods
    from .options import add_flags

    for key in list_methods(one_shot=one_shot):
        if fields(get_method(key).Options):
            add_flags(p, get_method(key).Options, title=f"{key} options")


def _given_options(args, one_shot: bool) -> dict:
    from .methods import get_method, list_methods
    from .options import given_flags

    given = {}
    for key in list_methods(one_shot=one_shot):
        given.update(given_flags(args, get_method(key).Options))
    return given


def _build_parser() -> argparse.ArgumentParser:
    from .methods import list_methods
    from .methods.settings import TRAIN_RENAME, PruneSettings
    from .options import add_flags

    parser = argparse.ArgumentParser(prog="yolo-prune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="one-shot structural prune to a FLOPs or latency target, saved as a .pt")
    _model_arg(p)
    p.add_argument("--flops", type=float, default=None, help="fraction of FLOPs to remove, in (0, 1) (or --latency)")
    p.add_argument("--method", default="l1", choices=list_methods(one_shot=True))
    p.add_argument("--data", help="images that methods measuring on images (damage) use: a dataset YAML (its train "
                   "split) or a folder of images")  # fmt: skip
    add_flags(p, PruneSettings, only=ONE_SHOT_SETTINGS)
    _method_flags(p, one_shot=True)
    p.add_argument("--out", required=True, help="output checkpoint path (.pt)")

    p = sub.add_parser("info", help="FLOPs, params and prunable channel groups of a model")
    _model_arg(p)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("train", help="train with the Ultralytics trainer while pruning, in one run")
    p.add_argument("--cfg", default=None, help="model YAML (yolov7.yaml, yolov8n.yaml, a path); default yolov7-tiny")
    p.add_argument("--data", default=None, help="Ultralytics dataset YAML; default: the embedded demo dataset")
    p.add_argument("--weights", default=None, help="initialise from this checkpoint (same architecture)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--imgsz", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--project", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--resume", default=None, nargs="?", const=True, help="resume from last.pt (path or flag)")
    add_flags(p, PruneSettings, rename=TRAIN_RENAME, title="pruning")
    _method_flags(p, one_shot=False)
    p.add_argument("overrides", nargs="*", help="any other Ultralytics train argument as key=value")

    p = sub.add_parser("val", help="COCO mAP with pycocotools (and Ultralytics' mAP beside it)")
    _model_arg(p)
    p.add_argument("--data", default=None, help="dataset YAML (default: the embedded demo dataset)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--json", dest="json_out", default=None, help="write all metrics to this JSON file")

    p = sub.add_parser("export", help="ONNX or TensorRT engine (FP16/INT8) with a JSON sidecar")
    _model_arg(p)
    p.add_argument("--format", choices=["onnx", "engine"], default="onnx")
    p.add_argument("--half", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--data", default=None, help="calibration images (dataset YAML or folder) for --int8")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis")
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace in GiB")
    p.add_argument("--dla", type=int, default=None, help="DLA core (Jetson)")
    p.add_argument("--out", default=None, help="output file (default: beside the model)")

    p = sub.add_parser("bench", help="latency/throughput of one or more models, with a FLOPs/speed-up table")
    p.add_argument("--model", action="append", required=True, help="repeat for several models; the first is the base")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--half", action="store_true")
    p.add_argument("--json", dest="json_out", default=None)

    p = sub.add_parser("profile", help="measure the latency table (lut.json) of a model's conv sites on a backend")
    _model_arg(p)
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--step", type=int, default=8, help="output widths are measured at multiples of this")
    p.add_argument("--half", action="store_true", help="FP16 engines (tensorrt)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per width (interleaved)")
    p.add_argument("--out", default=None, help="the table to write (lut.json)")
    p.add_argument("--plan", default=None, help="measure nothing: write the plan for the Jetson kit to this folder "
                   "(deploy/jetson/profile_latency.py measures it on the device)")

    sub.add_parser("yolo", help="Ultralytics' CLI with our models installed: yolo-prune yolo train model=yolov7.yaml "
                   "data=coco8.yaml ... (any `yolo` command)")  # handled in main(), before parsing
    p = sub.add_parser("import", help="convert an official YOLOv5/YOLOv7 checkpoint into an Ultralytics one")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    for name, p in sub.choices.items():  # every command that reads checkpoints (import never runs pickled code)
        if name != "import":
            p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["yolo"]:  # Ultralytics' own CLI, with our models installed (importing yolo_prune did that)
        return _ultralytics_cli(argv[1:])
    args = _build_parser().parse_args(argv)
    if getattr(args, "trust_checkpoint", False):  # an environment variable, so DDP children of `train` inherit it
        from .safe_load import TRUST_ENV

        os.environ[TRUST_ENV] = "1"
    try:
        result = _dispatch(args)
    except YoloPruneError as e:
        print(f"yolo-prune {args.command}: error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(result)
    return 0


def _ultralytics_cli(args: list[str]) -> int:
    """`yolo <args>` in this process, where `import yolo_prune` installed our models into Ultralytics."""
    from ultralytics.cfg import entrypoint

    spaced = [a for a in args if not a or any(c.isspace() for c in a)]
    if spaced:  # Ultralytics' entrypoint takes one space-separated string
        print(f"yolo-prune yolo: error: argument {spaced[0]!r} is empty or holds a space, which Ultralytics' CLI "
              "cannot take; use a path without spaces, or the Python API (YOLO(...).train(...)).", file=sys.stderr)
        return 2
    entrypoint(" ".join(["yolo", *args]))
    return 0


def _dispatch(args):
    from . import api

    if args.command == "prune":
        from .methods.settings import PruneSettings
        from .options import given_flags

        settings = given_flags(args, PruneSettings, only=ONE_SHOT_SETTINGS)
        report = api.prune(args.model, flops=args.flops, method=args.method, out=args.out, data=args.data, **settings,
                           **_given_options(args, one_shot=True))  # fmt: skip
        return report.table()
    if args.command == "info":
        info = api.info(args.model, imgsz=args.imgsz)
        return json.dumps(info, indent=1) if args.json else api.format_info(info)
    if args.command == "train":
        api.train(**_train_kwargs(args))
        return None
    if args.command == "val":
        return api.val(args.model, data=args.data, imgsz=args.imgsz, batch=args.batch, json_out=args.json_out)
    if args.command == "export":
        return api.export(
            args.model, format=args.format, half=args.half, int8=args.int8, data=args.data, imgsz=args.imgsz,
            batch=args.batch, dynamic=args.dynamic, workspace=args.workspace, dla=args.dla, out=args.out,
        )  # fmt: skip
    if args.command == "bench":
        return api.bench(
            args.model, backend=args.backend, imgsz=args.imgsz, batch=args.batch, warmup=args.warmup,
            runs=args.runs, half=args.half, json_out=args.json_out,
        )  # fmt: skip
    if args.command == "profile":
        return api.profile(args.model, backend=args.backend, imgsz=args.imgsz, batch=args.batch, step=args.step,
                           half=args.half, runs=args.runs, out=args.out, plan=args.plan)  # fmt: skip
    if args.command == "import":
        return api.import_checkpoint(args.checkpoint, out=args.out)
    raise AssertionError(args.command)


def _train_kwargs(args) -> dict:
    extra = {}
    for item in args.overrides:
        if "=" not in item:
            raise YoloPruneError(f"Extra train argument '{item}' is not key=value (e.g. lr0=0.01).")
        key, value = item.split("=", 1)
        extra[key] = _parse_value(value)
    from .methods.settings import TRAIN_RENAME, PruneSettings
    from .options import given_flags

    named = {k: getattr(args, k) for k in ("epochs", "imgsz", "batch", "device", "project", "name", "resume")}
    settings = {TRAIN_RENAME.get(k, k): v for k, v in given_flags(args, PruneSettings, TRAIN_RENAME).items()}
    return dict(cfg=args.cfg, data=args.data, weights=args.weights, **settings, **_given_options(args, one_shot=False),
                **{k: v for k, v in named.items() if v is not None}, **extra)  # fmt: skip


def _parse_value(text: str):
    """key=value values as Ultralytics' CLI reads them: numbers, booleans, None, else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    sys.exit(main())
