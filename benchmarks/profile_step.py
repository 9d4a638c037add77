"""Time and profile one LoRA training step of the default model (the figures behind lune.models.contiguous_head).

    python benchmarks/profile_step.py --dtype float32     # fwd/bwd seconds per step, then the top ops of one step
    python benchmarks/profile_step.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from lune.config import LoraSettings
from lune.losses import masked_nll, response_logits
from lune.models import attach_lora, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24, help="Sequence length (the last 8 are the response).")
    args = ap.parse_args()
    model, _ = load_model("smollm2-135m", dtype=args.dtype)
    pm = attach_lora(model, LoraSettings())
    pm.train()
    ids = torch.randint(100, 20000, (args.batch, args.tokens))
    labels = ids.clone()
    labels[:, : args.tokens - 8] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3)

    def step():
        t0 = time.perf_counter()
        loss = masked_nll(*response_logits(pm, batch))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(4):  # the first steps warm up the kernels
        print("fwd {:.3f} s  bwd {:.3f} s  opt {:.3f} s".format(*step()))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
