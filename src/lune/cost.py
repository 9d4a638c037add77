"""The one place that measures cost: wall time, peak memory, parameters, tokens."""

from __future__ import annotations

import resource
import sys
import time

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024 / 1024 if sys.platform == "darwin" else ru / 1024  # bytes on macOS, KiB on Linux


class CostMeter:
    """Wall clock and peak memory from construction on; ``block()`` returns the report's cost block."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def block(self, **extra) -> dict:
        out = {"wall_s": round(time.perf_counter() - self.t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
        if torch.cuda.is_available():
            out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out.update(extra)
        return out
