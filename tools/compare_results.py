#!/usr/bin/env python3
"""Turn several results files into the papers' table: FLOPs cut, mAP, latency and speed-up against a base model.

    python tools/compare_results.py results/base_*.json results/slim_*.json [--base base] [--json table.json]

Reads any mix of:
- the Jetson kit's `detect.py` results (mAP, latency over the images) and `benchmark.py` results (latency);
- `yolo-prune val --json` (pycocotools mAP), `yolo-prune bench --json` (one row per model, host latency);
- export sidecars (`*.onnx.json`, `*.engine.json`: GFLOPs, precision).
Files are merged per model: the model file's stem (`slim.pt`, `slim.onnx`, `slim.engine` are all `slim`), so name
exported files after their checkpoint. Latency is taken from, in order of preference, the kit's benchmark, the kit's
detect run, then `yolo-prune bench`; mAP from the kit's detect run, then `yolo-prune val`. The first model is the
base unless --base names another. Prints a Markdown table.
"""

import argparse
import json
import os
import sys

LATENCY_SOURCES = ("jetson-bench", "jetson-detect", "yolo-prune bench")
MAP_SOURCES = ("jetson-detect", "yolo-prune val")


def model_key(name: str) -> str:
    return os.path.splitext(os.path.basename(str(name)))[0]


def entries(path: str, data: dict):
    """(model key, facts) pairs found in one results file."""
    kind = data.get("kind")
    if kind in ("jetson-detect", "jetson-bench"):
        facts = {"gflops": data.get("gflops"), "precision": data.get("precision"), "device": data.get("runtime"),
                 "latency": (kind, data["latency_ms"]["median_ms"])}  # fmt: skip
        if "coco" in data:
            facts["map"] = (kind, data["coco"]["AP50-95"], data["coco"]["AP50"])
        yield model_key(data["model"]), facts
    elif "pycocotools" in data:  # yolo-prune val
        yield model_key(data["model"]), {"map": ("yolo-prune val", data["mAP50-95"], data["mAP50"])}
    elif "models" in data and "backend" in data:  # yolo-prune bench
        for row in data["models"]:
            yield model_key(row["model"]), {"gflops": row.get("gflops"), "device": data.get("device"),
                                            "latency": ("yolo-prune bench", row["latency"]["median_ms"])}  # fmt: skip
    elif "format" in data and "gflops" in data:  # export sidecar: <name>.onnx.json / <name>.engine.json
        stem = os.path.basename(path)[: -len(".json")]
        yield model_key(stem), {"gflops": data["gflops"], "precision": data.get("precision")}
    else:
        raise ValueError("%s is not a results file this tool knows" % path)


def merge(paths):
    """{model key: merged facts}, in the order models first appear."""
    table = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for key, facts in entries(path, data):
            row = table.setdefault(key, {})
            for name, value in facts.items():
                if value is None:
                    continue
                if name in ("latency", "map") and name in row:
                    order = LATENCY_SOURCES if name == "latency" else MAP_SOURCES
                    if order.index(value[0]) >= order.index(row[name][0]):
                        continue  # keep the preferred source
                row[name] = value
    return table


def build_table(table: dict, base: str = None) -> list:
    """Rows with FLOPs cut and speed-up against `base` (default: the first model)."""
    if not table:
        raise ValueError("no results")
    base = base or next(iter(table))
    if base not in table:
        raise ValueError("base model %r is not among %s" % (base, sorted(table)))
    g0 = table[base].get("gflops")
    lat0 = table[base].get("latency", (None, None))[1]
    rows = []
    for key, row in table.items():
        g, lat = row.get("gflops"), row.get("latency", (None, None))[1]
        rows.append({
            "model": key,
            "precision": row.get("precision"),
            "gflops": g,
            "flops_cut": 1 - g / g0 if g is not None and g0 else None,
            "map50_95": row["map"][1] if "map" in row else None,
            "map50": row["map"][2] if "map" in row else None,
            "map_from": row["map"][0] if "map" in row else None,
            "latency_ms": lat,
            "latency_from": row["latency"][0] if "latency" in row else None,
            "speedup": lat0 / lat if lat and lat0 else None,
            "device": row.get("device"),
        })  # fmt: skip
    return rows


def markdown(rows: list) -> str:
    def cell(v, fmt):
        return "-" if v is None else fmt % v

    lines = ["| model | precision | GFLOPs | FLOPs cut | mAP50-95 | mAP50 | latency (ms) | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["model"], r["precision"] or "-", cell(r["gflops"], "%.2f"),
            cell(r["flops_cut"] and 100 * r["flops_cut"], "%.1f%%"), cell(r["map50_95"], "%.4f"),
            cell(r["map50"], "%.4f"), cell(r["latency_ms"], "%.2f"), cell(r["speedup"], "%.2fx")))  # fmt: skip
    sources = sorted({r[k] for r in rows for k in ("latency_from", "map_from") if r[k]})
    devices = sorted({r["device"] for r in rows if r["device"]})
    lines.append("")
    lines.append("Sources: %s. Devices: %s." % (", ".join(sources) or "-", "; ".join(devices) or "-"))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results JSON files")
    p.add_argument("--base", default=None, help="model (file stem) to compare against; default the first")
    p.add_argument("--json", default=None, help="also write the table rows as JSON")
    args = p.parse_args(argv)
    try:
        rows = build_table(merge(args.results), args.base)
    except (OSError, ValueError, KeyError) as e:
        print("compare_results: error: %s" % e, file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.json:  # temp file + rename: never a half-written table
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
