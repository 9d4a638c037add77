"""How much of the first update each term of a loss method decides: forget term against retain term.

    python benchmarks/grad_balance.py --model ~/.cache/lune/finetuned/tofu-forget-retain-... \
        --forget /tmp/lune-paper/tofu/forget.jsonl            # -> results/grad_balance_<name>.{json,md}

For GA, NPO and SimNPO (each with the retain terms lune adds: NLL on the original model's own
completions of the anchor and neighbour prompts, as ``lune unlearn`` builds them), it computes the
gradient of the forget term and of the retain term separately, with respect to the LoRA weights
as they are at the start of training, averaged over the forget examples and the first retain
batches. It reports both norms, their cosine, and the share of LoRA weights whose combined
gradient has the sign of the forget term's: AdamW's first steps move each weight by about the
learning rate in the direction of its combined gradient's sign, so that share is how much of the
first update serves forgetting. GradDiff is GA plus the retain term.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from lune.anchors import anchor_prompts, neighbour_prompts, self_targets
from lune.config import LoraSettings, TrainSettings
from lune.data import PromptFormat, collate, make_example, read_facts
from lune.eval.core import response_token_logprobs
from lune.methods import get_method
from lune.models import attach_lora, load_model

HERE = Path(__file__).resolve().parent


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The flat gradient of ``loss`` with respect to ``params``."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])


def mean_grad(params, batches, term) -> torch.Tensor:
    total = None
    for b in batches:
        g = grads(term(b), params)
        total = g if total is None else total + g
    return total / len(batches)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="Model (as for lune unlearn).")
    ap.add_argument("--forget", required=True, help="Forget facts (JSON Lines).")
    ap.add_argument("--anchors", type=int, default=TrainSettings.anchors, help="Anchor prompts in the retain term (lune's default).")
    ap.add_argument("--neighbours", type=int, default=TrainSettings.neighbours, help="Neighbour prompts per forget prompt.")
    ap.add_argument("--batches", type=int, default=3, help="Retain batches of 16 to average over.")
    ap.add_argument("--name", default="tofu", help="Suffix of the result files.")
    ap.add_argument("--out", default=str(HERE / "results"), help="Folder for the results.")
    args = ap.parse_args()

    torch.manual_seed(0)
    model, tok = load_model(args.model)
    fmt = PromptFormat(tok, "auto")
    facts = read_facts(args.forget)
    own = [(p, "prompt") for p in anchor_prompts(args.anchors)] + neighbour_prompts(facts, args.neighbours, 0)
    retain_ex, _ = self_targets(model, tok, fmt, list(dict.fromkeys(own)), facts)
    random.Random(0).shuffle(retain_ex)
    retain = [collate(retain_ex[i * 16:(i + 1) * 16], tok.pad_token_id) for i in range(args.batches)]
    forget_ex = [make_example(fmt, f.prompt, f.answer, f.style, fact=i) for i, f in enumerate(facts)]
    for e, lp in zip(forget_ex, response_token_logprobs(model, forget_ex, tok.pad_token_id, 16)):
        e.ref_logp = float(lp.sum())
    forget = [collate(forget_ex[i:i + 16], tok.pad_token_id) for i in range(0, len(forget_ex), 16)]

    peft_model = attach_lora(model, LoraSettings())
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    rows = []
    for name in ("graddiff", "npo", "simnpo"):
        method = get_method(name, TrainSettings())
        g_f = mean_grad(params, forget, lambda b: method.loss(peft_model, b, None)[0])
        g_r = mean_grad(params, retain, lambda b: method.retain_terms(peft_model, b)[0])
        moved = (g_f != 0) | (g_r != 0)
        agree = (torch.sign(g_f + g_r) == torch.sign(g_f)) & moved
        row = {"method": {"graddiff": "graddiff (ga + retain)", "npo": "npo (+ retain)", "simnpo": "simnpo (+ retain)"}[name],
               "forget_grad_norm": g_f.norm().item(), "retain_grad_norm": g_r.norm().item(),
               "cosine": torch.nn.functional.cosine_similarity(g_f, g_r, dim=0).item(),
               "forget_decides": agree.sum().item() / max(1, moved.sum().item())}
        rows.append(row)
        print(json.dumps(row), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "forget": args.forget, "n_forget": len(forget_ex), "n_retain": len(retain_ex),
            "retain_batches": args.batches, "anchors": args.anchors, "neighbours": args.neighbours}
    (out / f"grad_balance_{args.name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    md = [f"# Forget term against retain term at the start of training ({args.name})", "",
          f"Reproduce: `python benchmarks/grad_balance.py --model MODEL --forget FORGET --name {args.name}` "
          f"({len(forget_ex)} forget examples, retain term over {args.batches} batches of 16 of {len(retain_ex)} retain examples: "
          f"{args.anchors} anchors + {args.neighbours} neighbours per prompt; LoRA defaults).", "",
          "`forget decides`: share of LoRA weights whose combined gradient has the forget term's sign "
          "(AdamW's first steps follow that sign).", "",
          "| method | forget grad norm | retain grad norm | cosine | forget decides |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['forget_grad_norm']:.4f} | {r['retain_grad_norm']:.4f} | {r['cosine']:.3f} | {r['forget_decides']:.2f} |" for r in rows]
    (out / f"grad_balance_{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
