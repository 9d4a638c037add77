"""Check lune.memory's memory model against measurement on the default model, and predict 7B.

For each regime one subprocess loads the default model, takes three training steps on a random batch
(``--batch`` sequences of ``--seq`` tokens, the last ``--response`` of them the response) and reports:
the bytes of the tensors autograd saved (``saved_tensors_hooks``, each storage once, parameters
excluded), the bytes of weights, trainable parameters, gradients and AdamW states (from the tensors
themselves), and its peak RSS above the RSS it had after importing torch and transformers (the
runtime, which the model leaves out). The prediction for Mistral-7B uses ``MistralConfig()``
(transformers' defaults are Mistral-7B-v0.1's shape) in bfloat16.

    python benchmarks/memory_model.py          # -> results/memory_model.{json,md}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# regime name -> (lune.memory regime, LoraSettings overrides)
REGIMES = {
    "lora (lune default: FFN, lower half)": ("lora", {}),
    "lora, FFN, upper half": ("lora", {"layers": "upper"}),
    "lora, paper targets, every layer": ("lora", {"layers": "all", "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
    "full": ("full", {}),
    "lora (lune default) + gradient checkpointing": ("lora", {"checkpointing": True}),
}


def worker(regime: str, lora_kw: dict, dtype: str, batch: int, seq: int, response: int) -> dict:
    import torch

    from lune.models import enable_gradient_checkpointing

    from lune.config import LoraSettings
    from lune.cost import peak_rss_mb
    from lune.losses import masked_nll, response_logits
    from lune.models import attach_lora, load_model

    import transformers  # noqa: F401  (part of the runtime baseline)

    runtime_mb = peak_rss_mb()
    model, _ = load_model("smollm2-135m", dtype=dtype)
    loaded_mb = peak_rss_mb()
    ckpt = lora_kw.pop("checkpointing", False)
    if regime == "full":
        model.requires_grad_(True)
        m = model
    else:
        m = attach_lora(model, LoraSettings(**lora_kw))
    if ckpt:
        enable_gradient_checkpointing(m)
    m.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20000, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq - response] = -100
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    param_ptrs = {p.untyped_storage().data_ptr() for p in m.parameters()}
    saved: dict = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            saved[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    for step in range(3):
        if step == 0:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = masked_nll(*response_logits(m, b))
        else:
            loss = masked_nll(*response_logits(m, b))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    base = [p for p in m.parameters() if not p.requires_grad]
    return {
        "runtime_mb": runtime_mb, "after_load_mb": loaded_mb, "peak_rss_mb": peak_rss_mb(),
        "measured_bytes": {
            "weights": nbytes(base) if regime != "full" else nbytes(params),
            "trainable": nbytes(params),
            "optimizer": sum(nbytes(v for v in st.values() if torch.is_tensor(v) and v.dim() > 0) for st in opt.state.values()),
            "saved_for_backward": sum(saved.values()),
        },
        "trainable_params": sum(p.numel() for p in params),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=24)
    ap.add_argument("--response", type=int, default=8)
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", nargs=3, metavar=("REGIME", "LORA_JSON", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], json.loads(args.worker[1]), args.worker[2], args.batch, args.seq, args.response)))
        return 0

    from transformers import AutoConfig, MistralConfig

    from lune.config import LoraSettings
    from lune.memory import estimate
    from lune.models import resolve_model

    small = AutoConfig.from_pretrained(resolve_model("smollm2-135m"))
    shape = dict(batch=args.batch, seq=args.seq, logit_tokens=args.response)
    rows = []
    for dtype in args.dtypes:
        for name, (regime, kw) in REGIMES.items():
            proc = subprocess.run([sys.executable, __file__, "--worker", regime, json.dumps(kw), dtype, "--batch", str(args.batch),
                                   "--seq", str(args.seq), "--response", str(args.response)], capture_output=True, text=True, check=True)
            meas = json.loads(proc.stdout.strip().splitlines()[-1])
            lkw = {k: v for k, v in kw.items() if k != "checkpointing"}
            est = estimate(small, regime, dtype=dtype, lora=LoraSettings(**lkw), checkpointing=kw.get("checkpointing", False), **shape)
            p = est.parts
            predicted_saved = p["activations"] + p["logits"] // 2  # the saved log-softmax; its gradient is not saved
            rows.append({"regime": name, "dtype": dtype, "trainable_params": meas["trainable_params"], "predicted": est.to_dict(),
                         "predicted_saved_bytes": predicted_saved, **meas,
                         "peak_above_runtime_mb": round(meas["peak_rss_mb"] - meas["runtime_mb"], 1),
                         "load_above_runtime_mb": round(meas["after_load_mb"] - meas["runtime_mb"], 1)})
            print(json.dumps(rows[-1]), flush=True)

    mistral = MistralConfig()  # Mistral-7B-v0.1's shape
    big = []
    for seq in (24, 128):
        for name, regime, kw in [("lora (lune default)", "lora", {}),
                                 ("lora (lune default) + gradient checkpointing", "lora", {"checkpointing": True}),
                                 ("lora, paper targets, every layer", "lora", REGIMES["lora, paper targets, every layer"][1]),
                                 ("full, AdamW in bf16", "full", {}),
                                 ("full + gradient checkpointing", "full", {"checkpointing": True}),
                                 ("rome (1 layer)", "edit", {"edit_layers": 1, "edit_first_layer": round(0.17 * 32)}),
                                 ("memit (5 layers)", "edit", {"edit_layers": 5, "edit_first_layer": round(0.1 * 32)})]:
            ckpt = {"checkpointing": kw.pop("checkpointing")} if "checkpointing" in kw else {}
            lora = LoraSettings(**kw) if regime == "lora" else None
            extra = {**(kw if regime == "edit" else {}), **ckpt}
            est = estimate(mistral, regime, dtype="bfloat16", lora=lora, batch=args.batch, seq=seq,
                           logit_tokens=min(args.response, seq), **extra)
            big.append({**est.to_dict(), "regime": name, "seq": seq})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"batch": args.batch, "seq": args.seq, "response": args.response, "measured_135m": rows, "predicted_7b": big}
    (out / "memory_model.json").write_text(json.dumps(result, indent=2))
    write_table(result, out / "memory_model.md")
    return 0


def write_table(result: dict, path: Path) -> None:
    mb = lambda x: f"{x / 2**20:,.0f}"  # noqa: E731
    gb = lambda x: f"{x / 2**30:,.1f}"  # noqa: E731
    md = ["# Memory model: predicted vs measured (default model), and what it predicts for 7B", "",
          f"One training step, batch {result['batch']} x {result['seq']} tokens, {result['response']} response tokens. "
          "Model: `lune/memory.py`. Reproduce: `python benchmarks/memory_model.py`.", "",
          "## SmolLM2-135M: each part predicted / measured (MB)", "",
          "| regime | dtype | trainable params | weights | trainable + grads + AdamW | saved for backward | predicted total | peak RSS above runtime | of it: loading the model |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in result["measured_135m"]:
        p, m = r["predicted"]["parts_bytes"], r["measured_bytes"]
        states_pred = p.get("adapters", 0) + p["gradients"] + p["optimizer"]
        states_meas = (m["trainable"] if r["predicted"]["regime"] == "lora" else 0) + m["trainable"] + m["optimizer"]
        md.append(f"| {r['regime']} | {r['dtype']} | {r['trainable_params']:,} | {mb(p['weights'])} / {mb(m['weights'])} | "
                  f"{mb(states_pred)} / {mb(states_meas)} | {mb(r['predicted_saved_bytes'])} / {mb(m['saved_for_backward'])} | "
                  f"{mb(r['predicted']['total_bytes'])} | {r['peak_above_runtime_mb']:,.0f} | {r['load_above_runtime_mb']:,.0f} |")
    md += ["", "Measured gradients are taken equal to the trainable parameters' bytes (same shapes and dtype). "
           "Peak RSS above runtime also holds the allocator's slack and the forward pass's transient tensors, "
           "which the model leaves out. With gradient checkpointing the measured saved bytes are the forward pass's "
           "(each layer's input); the prediction adds the one layer recomputed at a time in the backward pass.", "",
           "## Mistral-7B shape (MistralConfig()), bfloat16: predicted GB", "",
           "| regime | seq | trainable params | weights | adapters | gradients | optimizer | activations | logits | statistics | total |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["predicted_7b"]:
        p = r["parts_bytes"]
        cells = [gb(p[k]) if k in p else "–" for k in ("weights", "adapters", "gradients", "optimizer", "activations", "logits", "statistics")]
        md.append(f"| {r['regime']} | {r['seq']} | {r['trainable_params']:,} | " + " | ".join(cells) + f" | {gb(r['total_bytes'])} |")
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
