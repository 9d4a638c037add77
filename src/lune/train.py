"""The one training loop: every method is a loss plugged into it.

Written against ``accelerate`` so the same loop runs on one CPU, one GPU, or under
``accelerate launch`` (DDP, DeepSpeed, FSDP) without change.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .config import PATIENCE, TrainSettings
from .data import IGNORE, Example, collate
from .methods import Method


@dataclass
class TrainResult:
    steps: int = 0
    epochs: int = 0
    train_tokens: int = 0
    logit_tokens: int = 0  # positions whose vocabulary logits were computed (response tokens)
    reference_tokens: int = 0  # tokens that also went through a gradient-free reference forward
    train_s: float = 0.0
    check_s: float = 0.0  # of train_s: the early-stopping checks (greedy generation)
    stopped_early: bool = False
    stop_reason: str = "max_epochs"  # "suppressed" (every trained prompt), "plateau" (patience ran out) or "max_epochs"
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    restored_epoch: int | None = None  # the epoch whose adapter weights the run ended with, when not the last (restore_best)


GROUP = 8  # batches per length-sorted group


def _batches(examples: list[Example], size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffled batches of examples of similar length (less padding), in shuffled order.

    The examples are shuffled, cut into groups of ``GROUP`` batches, each group sorted by length
    and cut into batches; then the batch order is shuffled (transformers' ``group_by_length`` idea).
    """
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for g in range(0, len(order), size * GROUP):
        group = sorted(order[g : g + size * GROUP], key=lambda i: len(examples[i].input_ids))
        out += [[examples[i] for i in group[s : s + size]] for s in range(0, len(group), size)]
    rng.shuffle(out)
    return out


def train(
    model,
    method: Method,
    forget: list[Example],
    retain: list[Example],
    cfg: TrainSettings,
    pad_id: int,
    suppressed: Callable[[], tuple[float, set[int]]] | None = None,
) -> TrainResult:
    """Optimise the model's trainable parameters on ``method``'s loss.

    Args:
        model: model whose trainable parameters are updated (LoRA adapters for 'lune').
        method: the loss (see ``lune.methods``).
        forget: forget examples (negative targets for 'lune').
        retain: retain examples, paired one batch per forget batch (cycled); may be empty.
        cfg: optimisation settings.
        pad_id: padding token id.
        suppressed: early-stopping probe, called after each epoch from ``cfg.min_epochs`` on;
            returns the share of trained forget prompts that no longer yield their answer and the
            facts (``Example.fact``) that some trained prompt still yields. Training stops when the
            share reaches 1.0, or when it has not improved for ``cfg.patience`` checks; with
            ``cfg.focus`` later epochs train only the facts still yielded. With ``cfg.restore_best``
            and adapters (not ``method.full``), a run whose last check is below its best ends with
            the weights of the latest epoch that reached the best share.
    """
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    accelerator = Accelerator(cpu=device.type == "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(forget) / cfg.batch_size)
    total = steps_per_epoch * cfg.max_epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    res = TrainResult()
    retain_batches: list[list[Example]] = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.max_epochs), desc=f"unlearning ({method.name})", unit="epoch")
    active = forget
    best, since = -1.0, 0  # best suppressed share so far, checks since it last improved
    keep = cfg.restore_best and not method.full  # adapter weights are small; a full copy of the model is not
    best_state: list[torch.Tensor] = []  # copies of ``params`` at the latest epoch with the best share
    best_epoch = 0
    patience = PATIENCE if cfg.patience is None else cfg.patience  # None: as the API resolves it without protection
    for epoch in bar:
        model.train()
        losses = []
        for fb in _batches(active, cfg.batch_size, rng):
            if retain and not retain_batches:
                retain_batches = _batches(retain, cfg.retain_batch_size, rng)
            f = {k: v.to(accelerator.device) for k, v in collate(fb, pad_id).items()}
            r = {k: v.to(accelerator.device) for k, v in collate(retain_batches.pop(), pad_id).items()} if retain else None
            loss, logs = method.loss(model, f, r)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            res.steps += 1
            res.train_tokens += int(f["attention_mask"].sum()) + (int(r["attention_mask"].sum()) if r else 0)
            res.logit_tokens += int((f["labels"] != IGNORE).sum()) + (int((r["labels"] != IGNORE).sum()) if r else 0)
            res.reference_tokens += method.reference_tokens(f, r)
            losses.append(logs)
        res.epochs = epoch + 1
        entry = {"epoch": res.epochs, **{k: sum(d[k] for d in losses) / len(losses) for k in losses[0]}}
        if suppressed is not None and cfg.early_stop and res.epochs >= cfg.min_epochs:
            tc = time.perf_counter()
            entry["suppressed"], still = suppressed()
            res.check_s += time.perf_counter() - tc
            if cfg.focus:  # a suppressed fact rests; one that relapses comes back
                active = [e for e in forget if e.fact in still] or forget
                entry["active_facts"] = len({e.fact for e in active})
        res.history.append(entry)
        bar.set_postfix({k: round(v, 3) for k, v in entry.items() if k != "epoch"})
        if "suppressed" in entry:
            if entry["suppressed"] > best + 1e-9:
                best, since = entry["suppressed"], 0
            elif best > 0:  # a plateau only once something is suppressed: a slow start is not a plateau
                since += 1
            if keep and entry["suppressed"] >= best - 1e-9:  # the latest epoch at the best share
                best_state = [p.detach().clone() for p in params]
                best_epoch = res.epochs
        if entry.get("suppressed", 0.0) >= 1.0 or (patience and since >= patience):
            res.stopped_early = res.epochs < cfg.max_epochs
            res.stop_reason = "suppressed" if entry["suppressed"] >= 1.0 else "plateau"
            break
    bar.close()
    if best_state and res.history[-1].get("suppressed", best) < best - 1e-9:
        with torch.no_grad():
            for p, b in zip(params, best_state):
                p.copy_(b)
        res.restored_epoch = best_epoch
    model.eval()
    res.train_s = round(time.perf_counter() - t0, 3)
    res.check_s = round(res.check_s, 3)
    return res
