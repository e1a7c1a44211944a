"""Latency statistics: run each step after warm-up, interleaved, and summarise its two timings.

Every runner times itself and returns (compute_ms, end_to_end_ms): compute is the model alone on data already in
place (on a GPU: CUDA events around the enqueue/forward only); end-to-end adds the host-to-device copy of the input
and the device-to-host copy of the output. The two are kept apart because the copies are a fixed cost of the input and
output size that shrinks every measured speed-up between a base and a slimmer model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COLUMNS = ("compute", "end_to_end")


def measure(steps: list[Callable[[], tuple[float, float]]], warmup: int, runs: int) -> list[dict[str, list[float]]]:
    """Per step, {"compute": [ms...], "end_to_end": [ms...]} of `runs` calls after `warmup` untimed ones.

    The timed calls are interleaved (step 1, step 2, ..., step 1, step 2, ...), which spreads any change in machine
    load evenly over the models being compared, which matters on a shared CPU.
    """
    for step in steps:
        for _ in range(warmup):
            step()
    times = [{c: [] for c in COLUMNS} for _ in steps]
    for _ in range(runs):
        for step, out in zip(steps, times):
            for column, ms in zip(COLUMNS, step()):
                out[column].append(float(ms))
    return times


def summarize(times_ms, batch: int = 1) -> dict:
    """Median, p90, p99, mean, min, max, std of the run times (ms), and throughput in images/s (batch / mean)."""
    t = np.asarray(times_ms, dtype=float)
    if t.size == 0:
        raise ValueError("no timings to summarise")
    mean = float(t.mean())
    return {
        "runs": int(t.size),
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": mean,
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "std_ms": float(t.std()),
        "throughput_ips": batch * 1e3 / mean,
    }


def summarize_columns(times: dict[str, list[float]], batch: int) -> dict:
    """{"latency": compute summary, "end_to_end": end-to-end summary} for one model run at `batch`."""
    return {"latency": summarize(times["compute"], batch), "end_to_end": summarize(times["end_to_end"], batch)}
