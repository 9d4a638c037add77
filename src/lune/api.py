"""The public Python API: unlearn, evaluate, generate, merge. The CLI only parses and prints these."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import __version__
from .anchors import anchor_prompts, context_sentences, neighbour_prompts, self_targets, swapped_prompts
from .config import UnlearnConfig
from .cost import CostMeter, matmul_peak, throughput, train_flops
from .data import Fact, PromptFormat, contains_answer, make_example, normalize, read_facts
from .errors import LuneError
from .eval.core import generate as _generate
from .eval.core import response_token_logprobs
from .eval.metrics import METRICS, score_probes, summarize
from .methods import get_method
from .models import (
    attach_lora, cache_dir, check_lora_targets, contiguous_head, count_params, disable_gradient_checkpointing,
    enable_gradient_checkpointing, load_adapter, load_model, protect_adapters, release_adapters,
)
from .negatives import answer_sites, build_negatives, clean_span, read_negatives, write_negatives
from .report import write_report
from .train import TrainResult, train

log = logging.getLogger(__name__)
DIRECTIONS = {k: ("higher" if v.higher_is_better else "lower") for k, v in METRICS.items()}


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary directory that replaces ``out`` only if the block succeeds.

    An existing ``out`` is refused unless ``overwrite``; it is kept until the new one is complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise LuneError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _as_facts(facts: str | Path | list[Fact] | None, role: str) -> list[Fact]:
    if facts is None:
        return []
    if isinstance(facts, (str, Path)):
        return read_facts(facts, role)
    if not facts:
        raise LuneError(f"{role} set is empty")
    return list(facts)


def measure(model, tok, fmt: PromptFormat, forget: list[Fact], retain: list[Fact], cfg: UnlearnConfig, before: dict | None = None, desc: str = "") -> dict:
    """Score every probe of the forget and retain facts and summarise (see ``lune.eval.metrics``)."""
    kw = dict(max_new_tokens=cfg.run.max_new_tokens, batch_size=cfg.run.eval_batch_size)
    rows_f = score_probes(model, tok, fmt, forget, desc=f"{desc} forget probes", **kw)
    rows_r = score_probes(model, tok, fmt, retain, desc=f"{desc} retain probes", **kw) if retain else []
    return {"metrics": summarize(rows_f, rows_r, before), "forget_rows": rows_f, "retain_rows": rows_r}


def unlearn(
    forget: str | Path | list[Fact],
    retain: str | Path | list[Fact] | None = None,
    out: str | Path | None = None,
    config: UnlearnConfig | None = None,
    negatives: str | Path | None = None,
    overwrite: bool = False,
    model=None,
    tokenizer=None,
) -> dict:
    """Make a model forget ``forget`` facts by training LoRA adapters on negative examples.

    Args:
        forget: forget facts (JSON Lines path or list of ``Fact``).
        retain: facts that must survive (path or list); used for the retain loss terms and GUR.
        out: run directory to write (adapter/, negatives.jsonl, config.json, report.json, report.md).
            ``None`` keeps everything in memory.
        config: the run's configuration (defaults: ``UnlearnConfig()``).
        negatives: a ``negatives.jsonl`` to use instead of building negatives.
        overwrite: replace an existing ``out``.
        model, tokenizer: an already loaded base model (otherwise ``config.run.model`` is loaded).
            It is handed back unchanged; the adapter is in ``out``.

    Returns:
        The report (``before``/``after`` metrics, ``cost``, per-fact outcomes). When lune loaded the
        model itself, the unlearned model is under the key ``"peft_model"`` (adapter methods) or
        ``"full_model"`` (``--full`` training).
    """
    cfg = config or UnlearnConfig()
    meter = CostMeter()
    forget_facts = _as_facts(forget, "forget")
    retain_facts = _as_facts(retain, "retain")
    if out is not None and Path(out).exists() and not overwrite:  # fail before any expensive work
        raise LuneError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    method = get_method(cfg.run.method, cfg.train, cfg.method)
    cfg = method.resolve(cfg)  # record the settings actually used (the method's defaults filled in)
    owns_model = model is None
    if owns_model:
        model, tokenizer = load_model(cfg.run.model, cfg.train.device, cfg.train.dtype, cfg.run.trust_remote_code)
    elif hasattr(model, "peft_config"):
        raise LuneError("the model passed to unlearn already carries an adapter; pass the base model (peft: model.unload())")
    else:
        contiguous_head(model)
    if method.kind == "loss" and not method.full:
        check_lora_targets(model, cfg.lora)  # fail before any expensive work
    fmt = PromptFormat(tokenizer, cfg.run.format)
    total_params = count_params(model)[1]
    meter.mark("load model")

    before = measure(model, tokenizer, fmt, forget_facts, retain_facts, cfg, desc="before:")
    meter.mark("before: probes")
    unknown = [forget_facts[r["fact"]].source or forget_facts[r["fact"]].prompt for r in before["forget_rows"] if r["kind"] == "prompt" and not r["answered"]]
    if unknown:
        log.warning("%d of %d forget facts are not produced by the model even before unlearning: %s", len(unknown), len(forget_facts), unknown[:5])

    # Retain targets first: their answers are what no negative may be.
    fitted = retain_facts if cfg.train.fit_retain and method.uses_retain else []
    retain_ex = [make_example(fmt, p, f.answer, f.style, fact=i) for i, f in enumerate(fitted) for p in [f.prompt] + f.paraphrases]
    own_pairs: list[tuple[str, str]] = []  # (prompt, the original model's completion) of anchors, neighbours, swaps
    anchors = anchor_prompts(cfg.train.anchors)
    if method.uses_retain or cfg.train.contexts:
        own = [(p, "prompt") for p in anchors]
        if method.uses_retain:
            own += neighbour_prompts(forget_facts, cfg.train.neighbours, cfg.train.seed)
            own += swapped_prompts(model, tokenizer, forget_facts, cfg.train.swaps, batch_size=cfg.run.eval_batch_size)
        own_ex, own_pairs = self_targets(model, tokenizer, fmt, list(dict.fromkeys(own)), forget_facts, cfg.run.eval_batch_size)
        if method.uses_retain:
            retain_ex += own_ex
    meter.mark("retain targets")
    anchor_set = set(anchors)
    contexts = context_sentences([(p, c) for p, c in own_pairs if p in anchor_set]) if cfg.train.contexts else []
    # "X": read each completion's leading span as a name (a capitalised run), like a sampled alternative.
    avoid = {normalize(f.answer) for f in fitted} | {normalize(clean_span(c, "X", False)) for _, c in own_pairs if method.uses_retain}
    negs = []
    if negatives:
        negs = read_negatives(negatives, forget_facts)
    elif method.targets == "negatives" or (method.kind == "edit" and not all(f.replacement for f in forget_facts)):
        negs = build_negatives(model, tokenizer, fmt, forget_facts, cfg.negatives, seed=cfg.train.seed, batch_size=cfg.run.eval_batch_size, avoid=avoid)
    by_fact: dict[int, list[str]] = {}
    for n in negs:
        by_fact.setdefault(n.fact, []).append(n.negative)
    sites = answer_sites(model, tokenizer, fmt, forget_facts, by_fact, cfg.train.sites, seed=cfg.train.seed,
                         batch_size=cfg.run.eval_batch_size) if cfg.train.sites and method.targets == "negatives" else []
    meter.mark("negatives")
    train_prompts = [(i, p) for i, f in enumerate(forget_facts) for p in [f.prompt] + (f.paraphrases if cfg.train.paraphrases else [])]
    check_facts = [Fact(prompt=p, answer=forget_facts[i].answer, style=forget_facts[i].style) for i, p in train_prompts]
    check_ids = [fmt.prompt_ids(f.prompt, f.style) for f in check_facts]

    torch.manual_seed(cfg.train.seed)
    protected: dict = {}
    if method.kind == "edit":
        # One new answer per fact: the user's replacement, else the first negative.
        new_targets = [f.replacement or by_fact[i][0] for i, f in enumerate(forget_facts)]
        t0 = time.perf_counter()
        tuned, info = method.edit(model, tokenizer, fmt, forget_facts, new_targets, cache_dir())
        result = TrainResult(steps=info["steps"], train_tokens=info["train_tokens"], logit_tokens=info.get("logit_tokens", 0),
                             train_s=round(time.perf_counter() - t0, 3), history=[{k: v for k, v in info.items() if k not in ("steps", "train_tokens", "trainable_params")}])
        trainable = info["trainable_params"]
        meter.mark("edit")
    else:
        answers = method.targets == "answers"
        forget_ex = []
        ctx_rng = random.Random(cfg.train.seed)
        for i, p in train_prompts:
            ys = [forget_facts[i].answer] if answers else by_fact.get(i, [])
            k = min(cfg.train.contexts, len(ys) - 1) if contexts else 0  # the last k targets, never all: the plain prompt stays
            forget_ex += [make_example(fmt, p if j < len(ys) - k else f"{ctx_rng.choice(contexts)} {p}", y, forget_facts[i].style, fact=i,
                                       stop=cfg.negatives.stop and not answers)
                          for j, y in enumerate(ys)]
        forget_ex += [make_example(fmt, site, y, "prompt", fact=i, stop=cfg.negatives.stop) for i, site, y in sites]
        if method.reference_logp:  # the original model's log p(y|x), once: no reference model during training
            for e, lp in zip(forget_ex, response_token_logprobs(model, forget_ex, tokenizer.pad_token_id, cfg.run.eval_batch_size)):
                e.ref_logp = float(lp.sum())
        needs_reference = cfg.train.kl_weight > 0 and method.uses_retain
        if method.full and owns_model and not needs_reference:  # loaded for this run only: train it in place, no copy
            tuned = model.requires_grad_(True)
        elif method.full:  # train a copy; the caller's model stays as it came and serves as the KL reference
            tuned = copy.deepcopy(model).requires_grad_(True)
            if needs_reference:
                method.ref_model = model
        else:
            tuned = attach_lora(model, cfg.lora)
            if cfg.lora.protect > 0:
                protected = protect_adapters(tuned, retain_ex, tokenizer.pad_token_id, cfg.lora.protect, cfg.run.eval_batch_size)
        trainable = count_params(tuned)[0]
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(tuned)
        meter.mark("setup")

    def suppressed() -> tuple[float, set[int]]:
        outs = _generate(tuned, tokenizer, check_ids, max_new_tokens=cfg.run.max_new_tokens, batch_size=cfg.run.eval_batch_size)
        yielded = [contains_answer(o, f.answer) for o, f in zip(outs, check_facts)]
        return 1 - sum(yielded) / len(yielded), {i for (i, _), y in zip(train_prompts, yielded) if y}

    is_adapter = hasattr(tuned, "peft_config")
    try:
        if method.kind == "loss":
            try:
                result = train(tuned, method, forget_ex, retain_ex, cfg.train, tokenizer.pad_token_id, suppressed)
            finally:  # the caller's model comes back without checkpointing, also on failure
                if cfg.train.gradient_checkpointing:
                    disable_gradient_checkpointing(tuned)
                if is_adapter:  # a protected adapter becomes plain LoRA (its projection folded into A)
                    release_adapters(tuned)
            meter.mark("train")
        after = measure(tuned, tokenizer, fmt, forget_facts, retain_facts, cfg, before=before, desc="after:")
        meter.mark("after: probes")
    except BaseException:
        if not owns_model and is_adapter:  # hand the caller's model back as it came, also on failure
            tuned.unload()
        raise

    weight = next(tuned.parameters())  # device and dtype of the run
    report = {
        "lune_version": __version__,
        "method": method.name,
        "citation": method.citation,
        "model": cfg.run.model,
        "directions": DIRECTIONS,
        "before": before["metrics"],
        "after": after["metrics"],
        "unknown_facts": unknown,
        "training": {"epochs": result.epochs, "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
                     **({"restored_epoch": result.restored_epoch} if result.restored_epoch else {}),
                     **({"protected": protected} if protected else {}),
                     **({"sites": [{"fact": i, "prompt": p, "negative": y} for i, p, y in sites]} if sites else {}),
                     "history": result.history},
        "facts": _fact_rows(forget_facts, before["forget_rows"], after["forget_rows"]),
        "retain": _fact_rows(retain_facts, before["retain_rows"], after["retain_rows"]),
        "cost": meter.block(
            train_s=result.train_s, trainable_params=trainable, total_params=total_params,
            steps=result.steps, train_tokens=result.train_tokens, negatives=len(negs),
            **throughput(train_flops(tuned, result.train_tokens, result.logit_tokens, result.reference_tokens),
                         result.train_s, matmul_peak(weight.device, weight.dtype)),
            dtype=str(weight.dtype).replace("torch.", ""),
            check_s=result.check_s,
        ),
    }
    if out is not None:
        with atomic_dir(out, overwrite) as tmp:
            if is_adapter:
                tuned.save_pretrained(tmp / "adapter")
            else:  # full training: every weight changed, so the run holds the whole model
                tuned.save_pretrained(tmp / "model", safe_serialization=True)
                tokenizer.save_pretrained(tmp / "model")
            if negs:
                write_negatives(negs, tmp / "negatives.jsonl")
            inputs = {"forget": str(forget) if isinstance(forget, (str, Path)) else None,
                      "retain": str(retain) if isinstance(retain, (str, Path)) else None,
                      "negatives": str(negatives) if negatives else None}
            inputs.update({f"{k}_sha256": _sha256(v) for k, v in list(inputs.items()) if v})
            (tmp / "config.json").write_text(json.dumps({"lune_version": __version__, "inputs": inputs, **cfg.to_dict()}, indent=2))
            write_report(report, tmp)
        report["out"] = str(out)
    if owns_model:
        report["peft_model" if is_adapter else "full_model"] = tuned
    elif is_adapter:  # hand the caller's model back as it came: remove the LoRA layers without merging them
        tuned.unload()
    return report


def _fact_rows(facts: list[Fact], before: list[dict], after: list[dict]) -> list[dict]:
    return [
        {"fact": b["fact"], "kind": b["kind"], "prompt": b["prompt"], "answer": facts[b["fact"]].answer,
         "before": b["completion"], "after": a["completion"], "answered_before": b["answered"], "answered_after": a["answered"],
         "p_before": round(math.exp(b["answer_logprob"]), 6), "p_after": round(math.exp(a["answer_logprob"]), 6)}
        for b, a in zip(before, after)
    ]


def evaluate(
    forget: str | Path | list[Fact],
    retain: str | Path | list[Fact] | None = None,
    model: str = "smollm2-135m",
    adapter: str | Path | None = None,
    config: UnlearnConfig | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Measure forget/retain metrics of a model, before (base) and after (with ``adapter``) when one is given."""
    cfg = config or UnlearnConfig()
    meter = CostMeter()
    forget_facts, retain_facts = _as_facts(forget, "forget"), _as_facts(retain, "retain")
    if out is not None and Path(out).exists() and not overwrite:
        raise LuneError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    base, tok = load_model(model, cfg.train.device, cfg.train.dtype, cfg.run.trust_remote_code)
    fmt = PromptFormat(tok, cfg.run.format)
    before = measure(base, tok, fmt, forget_facts, retain_facts, cfg, desc="base:")
    report = {"lune_version": __version__, "model": model, "adapter": str(adapter) if adapter else None,
              "directions": DIRECTIONS,
              "before": before["metrics"]}
    after = before
    if adapter is not None:
        tuned = load_adapter(base, adapter)
        after = measure(tuned, tok, fmt, forget_facts, retain_facts, cfg, before=before, desc="adapter:")
        report["after"] = after["metrics"]
    report["facts"] = _fact_rows(forget_facts, before["forget_rows"], after["forget_rows"])
    report["retain"] = _fact_rows(retain_facts, before["retain_rows"], after["retain_rows"])
    report["cost"] = meter.block()
    if out is not None:
        with atomic_dir(out, overwrite) as tmp:
            write_report(report, tmp)
    return report


def generate(prompts: list[str], model: str = "smollm2-135m", adapter: str | Path | None = None, fmt: str = "auto",
             max_new_tokens: int = 32, device: str = "auto", dtype: str = "auto") -> list[dict]:
    """Greedy completions of raw prompts by the base model and, with ``adapter``, by the unlearned one."""
    if not prompts:
        raise LuneError("no prompts given")
    base, tok = load_model(model, device, dtype)
    pf = PromptFormat(tok, fmt)
    style = "question" if fmt == "chat" else "prompt"
    ids = [pf.prompt_ids(p, style) for p in prompts]
    rows = [{"prompt": p, "base": c} for p, c in zip(prompts, _generate(base, tok, ids, max_new_tokens))]
    if adapter is not None:
        tuned = load_adapter(base, adapter)
        for row, c in zip(rows, _generate(tuned, tok, ids, max_new_tokens)):
            row["unlearned"] = c
    return rows


def merge(model: str, adapter: str | Path, out: str | Path, overwrite: bool = False, dtype: str = "auto") -> Path:
    """Fold an adapter into the base weights and save a plain safetensors model (+ tokenizer) to ``out``."""
    if Path(out).exists() and not overwrite:
        raise LuneError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    base, tok = load_model(model, "cpu", dtype)
    merged = load_adapter(base, adapter).merge_and_unload()
    with atomic_dir(out, overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return Path(out)
