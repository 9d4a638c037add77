"""The one place that measures cost: wall time, peak memory, parameters, tokens, FLOPs and MFU.

FLOPs are an estimate from the model's shapes (the usual 2 FLOPs per multiply-add):

* forward: ``2 * N_linear * tokens + 2 * d * V * logit_tokens``, where ``N_linear`` counts the
  weights of every linear layer except the vocabulary head (LoRA A/B included) and the head is
  applied only to the positions whose logits are computed (``logit_tokens``: lune asks only for
  the response positions);
* backward: the gradient with respect to activations costs about one forward of the layers it
  passes through (``N_through``: the linear layers after the first trainable one; autograd does not
  go below the lowest adapter), and the gradient with respect to weights ``2 * N_trainable * tokens``,
  so full fine-tuning comes out at the familiar ``6 * N * tokens`` and LoRA on every layer at about
  ``4 * N * tokens``.

Attention score FLOPs (``4 * layers * T * d`` per token) are left out: at the short sequences of
fact unlearning (tens of tokens) they are under 1% of the total. MFU is achieved FLOP/s over this
machine's measured matmul peak for the dtype in use (``matmul_peak``, cached per machine).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager

import torch

log = logging.getLogger("lune")
PEAK_SHAPE = {"cpu": 2048, "cuda": 8192}  # square matmul size used to measure the peak
_PEAKS: dict[str, float] = {}  # this process's measurements, also when the cache file moves


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is the memory map's high-water mark (``VmHWM``), not ``getrusage``'s ``ru_maxrss``:
    Linux carries ``ru_maxrss`` over from the parent through fork and exec, so a run started by a
    process that holds a model (``benchmarks/paper.py``) reported the parent's size as its own peak
    whenever its own was smaller (measured: 4,129 MB for a run whose own peak before training was 1.1 GB).
    The kernel updates the high-water mark lazily, so two readings can differ by a fraction of a MB.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024 / 1024 if sys.platform == "darwin" else ru / 1024  # bytes on macOS, KiB on Linux


def linear_params(model) -> tuple[int, int, int]:
    """(weights of linear layers except the vocabulary head, trainable ones of them, hidden size x vocabulary)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = trainable = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m is not head:
            body += m.weight.numel()
            trainable += m.weight.numel() if m.weight.requires_grad else 0
    head_size = head.weight.numel() if head is not None else 0
    return body, trainable, head_size


def through_params(model) -> int:
    """Weights of the linear layers (head excluded) that the backward pass goes through: every one
    registered after the first linear layer with a trainable weight (module order is forward order
    in transformers' decoders; peft registers an adapted layer's base weight before its A and B)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    total, seen = 0, False
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m is not head:
            seen = seen or m.weight.requires_grad
            total += m.weight.numel() if seen else 0
    return total


def train_flops(model, tokens: int, logit_tokens: int, extra_forward_tokens: int = 0) -> int:
    """Estimated FLOPs of training ``model`` on ``tokens`` tokens (see the module docstring).

    ``extra_forward_tokens``: tokens that also went through a gradient-free forward pass (a
    reference model's logits for KL / NPO terms).
    """
    body, trainable, head = linear_params(model)
    fwd = 2 * body * tokens + 2 * head * logit_tokens
    bwd = 2 * through_params(model) * tokens + 2 * head * logit_tokens + 2 * trainable * tokens
    return int(fwd + bwd + 2 * body * extra_forward_tokens)


def _cache_file():
    from .models import cache_dir

    return cache_dir() / "matmul_peak.json"


def _machine_key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        # the capability matters: AVX2 and AVX-512 BF16 machines of the same name differ ~60x in bf16
        where = (f"{platform.processor() or platform.machine()}-{torch.backends.cpu.get_cpu_capability()}"
                 f"-{os.cpu_count()}cpu-{torch.get_num_threads()}threads")
    return f"{where}|{torch.__version__}|{str(dtype).replace('torch.', '')}"


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, refresh: bool = False) -> float:
    """This machine's matmul throughput in FLOP/s for ``dtype`` (square matmuls, best of 5).

    Measured once (about a second) and cached in ``$LUNE_CACHE/matmul_peak.json`` per device,
    thread count, torch version and dtype.
    """
    device = torch.device(device)
    key = _machine_key(device, dtype)
    path = _cache_file()
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key in cache and not refresh:
        return float(cache[key])
    if key in _PEAKS and not refresh:
        return _PEAKS[key]
    n = PEAK_SHAPE.get(device.type, 2048)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(6):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    peak = 2 * n**3 / best
    _PEAKS[key] = cache[key] = peak
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)
    return peak


class CostMeter:
    """Wall clock and peak memory from construction on; ``block()`` returns the report's cost block.

    Named phases (``mark`` at a phase's end, or ``with meter.phase(name)``) add ``phases_s`` (seconds
    per phase) and ``phases_peak_rss_mb`` (the process's peak RSS when the phase ended): the first
    phase whose entry reaches ``peak_rss_mb`` is where the run's peak memory was reached.
    """

    def __init__(self) -> None:
        self.t0 = self._last = time.perf_counter()
        self.phases_s: dict[str, float] = {}
        self.phases_peak: dict[str, float] = {}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def mark(self, name: str, since: float | None = None) -> None:
        """End phase ``name``: it ran from ``since`` (default: the previous mark) until now."""
        now = time.perf_counter()
        self.phases_s[name] = round(self.phases_s.get(name, 0.0) + now - (self._last if since is None else since), 3)
        self.phases_peak[name] = round(peak_rss_mb(), 1)
        self._last = now

    @contextmanager
    def phase(self, name: str):
        """Time the enclosed block as phase ``name`` (a log line as it starts)."""
        log.info("%s ...", name)
        t = time.perf_counter()
        yield
        self.mark(name, since=t)

    def block(self, **extra) -> dict:
        out = {"wall_s": round(time.perf_counter() - self.t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
        if torch.cuda.is_available():
            out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out.update(extra)
        if self.phases_s:
            out.update(phases_s=dict(self.phases_s), phases_peak_rss_mb=dict(self.phases_peak))
        return out


def throughput(flops: int, seconds: float, peak: float) -> dict:
    """The report's FLOP fields: estimated FLOPs, achieved FLOP/s and MFU against ``peak``."""
    achieved = flops / seconds if seconds > 0 else 0.0
    return {"train_flops": flops, "achieved_gflops": round(achieved / 1e9, 2), "peak_gflops": round(peak / 1e9, 2),
            "mfu": round(achieved / peak, 4) if peak else None}
