"""Teach a model facts before unlearning them: the TOFU protocol's first step.

TOFU's authors are fictitious, so no pretrained model knows them; the benchmark fine-tunes a model
on them first (forget + retain authors), and a second model on the retain authors only (the
reference for forget quality). ``finetune`` trains every weight on (question, answer) pairs with
the loss on the answer tokens, through the same loop as every unlearning method (``lune.train``,
the ``lune-full`` loss on the true answers). ``cached_finetune`` stores the result as a safetensors
model directory under ``$LUNE_CACHE/finetuned/<key>``, keyed by the base model, the facts and the
settings, so the preparation is paid once.

    path, info = cached_finetune("smollm2-135m", facts, FinetuneSettings(epochs=8))
    info["seconds"], info["history"]  # what the preparation cost, loss per epoch
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import TrainSettings
from ..data import Fact, PromptFormat, make_example
from ..errors import LuneError


@dataclass
class FinetuneSettings:
    """Full fine-tuning on QA pairs. TOFU fine-tunes Llama-2-7B for 5 epochs at lr 1e-5 on all 4,000 QA;
    a 135M model on a few hundred pairs needs more epochs and a larger rate to learn them (measured:
    ``benchmarks/paper.py tofu`` reports the answer ROUGE the fine-tuned model reaches)."""

    epochs: int = 8
    lr: float = 1e-4
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    seed: int = 0
    format: str = "auto"


def finetune(model, tok, facts: list[Fact], cfg: FinetuneSettings) -> dict:
    """Train every weight of ``model`` in place on ``facts`` (loss on the answers); return the history."""
    from ..methods import get_method
    from ..train import train

    if not facts:
        raise LuneError("fine-tuning needs at least one fact")
    fmt = PromptFormat(tok, cfg.format)
    examples = [make_example(fmt, f.prompt, f.answer, f.style, fact=i) for i, f in enumerate(facts)]
    ts = TrainSettings(lr=cfg.lr, full=True, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, max_epochs=cfg.epochs,
                       early_stop=False, batch_size=cfg.batch_size, seed=cfg.seed, anchors=0, neighbours=0)
    model.requires_grad_(True)
    result = train(model, get_method("lune-full", ts), examples, [], ts, tok.pad_token_id)
    model.requires_grad_(False)
    model.eval()
    return {"seconds": result.train_s, "steps": result.steps, "epochs": result.epochs, "train_tokens": result.train_tokens,
            "history": result.history}


def finetune_key(base: str, facts: list[Fact], cfg: FinetuneSettings) -> str:
    blob = json.dumps({"base": base, "facts": [[f.style, f.prompt, f.answer] for f in facts], "cfg": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_finetune(base: str, facts: list[Fact], cfg: FinetuneSettings, name: str = "model", device: str = "auto",
                    dtype: str = "auto") -> tuple[Path, dict]:
    """The directory of ``base`` fine-tuned on ``facts`` (trained and saved on first use), and its preparation record."""
    from ..api import atomic_dir
    from ..models import cache_dir, load_model

    out = cache_dir() / "finetuned" / f"{name}-{finetune_key(base, facts, cfg)}"
    if (out / "config.json").is_file() and (out / "finetune.json").is_file():
        return out, {**json.loads((out / "finetune.json").read_text()), "cached": True}
    t0 = time.perf_counter()
    model, tok = load_model(base, device=device, dtype=dtype)
    info = finetune(model, tok, facts, cfg)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = {**info, "base": base, "n_facts": len(facts), "settings": asdict(cfg), "wall_s": round(time.perf_counter() - t0, 1)}
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2))
    return out, {**info, "cached": False}
