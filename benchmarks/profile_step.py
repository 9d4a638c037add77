"""Time and profile one training step of the default model: LoRA (lune) or every weight (lune-full).

    python benchmarks/profile_step.py --dtype float32               # LoRA: seconds per step, MFU, then the top ops
    python benchmarks/profile_step.py --full                        # every weight trains (lune-full)
    python benchmarks/profile_step.py --gradient-checkpointing      # recompute activations in the backward pass
    python benchmarks/profile_step.py --dropout 0                   # LoRA without dropout (no masks, no input copies)
    python benchmarks/profile_step.py --no-profile --json           # one JSON line (benchmarks/step_cost.py)

Each configuration should run in its own process: peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lune.config import LoraSettings
from lune.cost import matmul_peak, peak_rss_mb, train_flops
from lune.losses import masked_nll, response_logits
from lune.models import attach_lora, enable_gradient_checkpointing, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24, help="Sequence length (the last 8 are the response).")
    ap.add_argument("--layers", default="lower", help="LoRA layers (lune's default: lower).")
    ap.add_argument("--full", action="store_true", help="Train every weight instead of LoRA adapters.")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--dropout", type=float, default=LoraSettings().lora_dropout, help="LoRA dropout (default: lune's).")
    ap.add_argument("--steps", type=int, default=6, help="Timed steps (after 2 warm-up steps).")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model, _ = load_model("smollm2-135m", dtype=args.dtype)
    if args.full:
        pm = model.requires_grad_(True)
    else:
        pm = attach_lora(model, LoraSettings(layers=args.layers, lora_dropout=args.dropout))
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(pm)
    pm.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20000, (args.batch, args.tokens), generator=g)
    labels = ids.clone()
    labels[:, : args.tokens - 8] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-5)

    def step():
        t0 = time.perf_counter()
        loss = masked_nll(*response_logits(pm, batch))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(2):  # the first steps warm up the kernels
        step()
    times = [step() for _ in range(args.steps)]
    total = statistics.median(sum(t) for t in times)
    flops = train_flops(pm, args.batch * args.tokens, args.batch * 8)
    w = next(pm.parameters())
    peak = matmul_peak(w.device, w.dtype)
    res = {"full": args.full, "dtype": args.dtype, "layers": None if args.full else args.layers,
           "dropout": None if args.full else args.dropout,
           "gradient_checkpointing": args.gradient_checkpointing, "batch": args.batch, "tokens": args.tokens,
           "step_s": round(total, 3), "fwd_s": round(statistics.median(t[0] for t in times), 3),
           "bwd_s": round(statistics.median(t[1] for t in times), 3), "opt_s": round(statistics.median(t[2] for t in times), 3),
           "step_gflop": round(flops / 1e9, 1), "mfu": round(flops / total / peak, 3), "peak_rss_mb": round(peak_rss_mb())}
    print(json.dumps(res) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    if not args.no_profile:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
