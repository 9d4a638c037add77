"""Measure this machine's matmul throughput per dtype (the peak that MFU figures are relative to).

    python benchmarks/matmul_peak.py            # prints GFLOP/s for fp32 and bf16 at 2048^3 and the default model's shapes
"""

import time

import torch

SHAPES = [(2048, 2048, 2048), (256, 576, 1536), (256, 576, 49152)]  # square; an FFN projection; the vocabulary head


def gflops(m: int, k: int, n: int, dtype: torch.dtype, reps: int = 5) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    a @ b.T  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        a @ b.T
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    for dtype in (torch.float32, torch.bfloat16):
        print(dtype, "  ".join(f"{m}x{k}x{n}: {gflops(m, k, n, dtype):.0f} GFLOP/s" for m, k, n in SHAPES))
