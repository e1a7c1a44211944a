"""Latency statistics: run a step after warm-up, then summarise the per-run times."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure(steps: list[Callable[[], float | None]], warmup: int, runs: int) -> list[list[float]]:
    """Per step, the times in ms of `runs` calls after `warmup` untimed ones; the timed calls are interleaved.

    Interleaving (step 1, step 2, ..., step 1, step 2, ...) spreads any change in machine load evenly over the models
    being compared, which matters on a shared CPU. A step returns its own duration in ms when it times itself (CUDA
    events), or None to be timed here with `time.perf_counter` (it must then return only when its work is done).
    """
    for step in steps:
        for _ in range(warmup):
            step()
    times = [[] for _ in steps]
    for _ in range(runs):
        for step, out in zip(steps, times):
            start = time.perf_counter()
            own = step()
            out.append(own if own is not None else (time.perf_counter() - start) * 1e3)
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
