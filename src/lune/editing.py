"""The machinery shared by the memory-editing baselines ROME and MEMIT (``lune.methods.rome``/``memit``).

Both edit the MLP down-projection ``W`` (d_out x d_in) of one or a few decoder layers, treating it
as a linear associative memory: its input at the subject's last token is the *key* k that names the
subject, its output the *value* that recalls the subject's attributes. An edit writes new values
for the edited subjects' keys while disturbing other keys as little as possible, which needs the
second moment C = E[k k^T] of keys over ordinary text.

This module holds:

* the architecture adapter (Llama-style ``model.layers[i].mlp.down_proj``, a Linear whose input is
  act(gate(x)) * up(x); GPT-2-style ``transformer.h[i].mlp.c_proj``, a Conv1D with weight (in, out));
* locating a fact's subject and its last token in the tokenised (possibly chat-rendered) prompt;
* context templates (the bare prompt plus short prefixes the model writes itself, as ROME does);
* key capture (down-projection inputs at the subject's last token) and the gradient optimisation
  of a target vector ``delta`` added to the MLP output there (ROME's v*, MEMIT's z);
* second-moment statistics, computed once per (model, corpus, layer) and cached on disk;
* the LoRA-format adapter that carries the update: ``lora_B @ lora_A = U V`` with scaling 1, so the
  adapted layer computes ``W x + U V x`` and the base weights stay untouched.

Context prefixes and the "self" corpus are sampled with the global RNG forked and seeded, so an
edit is reproducible and leaves the caller's random state alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import _check, _Config, _f
from .data import Fact, PromptFormat, read_jsonl
from .errors import LuneError

log = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"  # ROME's "essence" prompt: keeps what the model says about the subject itself
PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")  # MEMIT's seeds for the context prefixes
STOP_NLL = 5e-2  # ROME stops optimising a target vector once its loss is this small
SELF_SAMPLE_LEN = 128  # new tokens per sampled "self" corpus text
STATS_MAX_LEN = 256  # longest sequence (tokens) of a file or Hub corpus forwarded for statistics


class _StopForward(Exception):
    """Raised by a hook once the last needed layer has run: the rest of the forward pass is skipped."""


class stop_after:
    """Context in which a forward pass of ``model`` ends after decoder block ``layer`` (catch ``_StopForward``)."""

    def __init__(self, arch: "Arch", model, layer: int):
        self.block = arch.block(model, layer)

    def __enter__(self):
        def fn(mod, args, out):
            raise _StopForward

        self.handle = self.block.register_forward_hook(fn)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return exc[0] is _StopForward  # swallow the early stop, re-raise anything else


# ------------------------------------------------------------------------------------- settings


@dataclass
class EditSettings(_Config):
    """Options shared by ROME and MEMIT (each method sets its own defaults; see their modules)."""

    v_steps: int = _f(20, "Adam steps at most when optimising each fact's target vector (stops early once the target NLL < 0.05).")
    v_lr: float = _f(0.5, "Adam learning rate of the target vector (ROME and MEMIT: 0.5).")
    v_weight_decay: float = _f(0.01, "Penalty weight on the target vector's relative size, v_weight_decay * (|delta| / |v0|)^2.")
    clamp_norm_factor: float = _f(4.0, "The target vector's change is clamped to this multiple of the original vector's norm.")
    kl_factor: float = _f(0.0625, "Weight of the KL to the unedited next-token distribution on the '{subject} is a' prompt (ROME: 0.0625).")
    n_prefixes: int = _f(5, "Context prefixes written by the model itself; keys and targets are averaged over them and the bare prompt.")
    prefix_len: int = _f(10, "Tokens per context prefix.")
    stats_corpus: str = _f("self", "Text for the key statistics C = E[k k^T]: 'self' (text sampled from the model), 'identity' (C = I), a .txt (paragraphs) or .jsonl ('text' field) file, or 'hf:DATASET[:CONFIG]' (a Hub dataset with a 'text' column).")
    stats_tokens: int = _f(20000, "Tokens of the statistics corpus used (cached per model, corpus and layer).")
    stats_ridge: float = _f(0.01, "Ridge added to C: C + stats_ridge * mean(diag C) * I (keeps C invertible and its small, noisily estimated directions tame).")

    def __post_init__(self) -> None:
        _check(self.v_steps >= 1, f"v_steps must be >= 1, got {self.v_steps}")
        _check(self.v_lr > 0, f"v_lr must be > 0, got {self.v_lr}")
        _check(self.v_weight_decay >= 0, f"v_weight_decay must be >= 0, got {self.v_weight_decay}")
        _check(self.clamp_norm_factor > 0, f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}")
        _check(self.kl_factor >= 0, f"kl_factor must be >= 0, got {self.kl_factor}")
        _check(self.n_prefixes >= 0, f"n_prefixes must be >= 0, got {self.n_prefixes}")
        _check(self.prefix_len >= 1, f"prefix_len must be >= 1, got {self.prefix_len}")
        _check(isinstance(self.stats_corpus, str) and self.stats_corpus.strip() != "",
               f"stats_corpus must be 'self', 'identity', a file path or 'hf:DATASET', got {self.stats_corpus!r}")
        _check(self.stats_tokens >= 1, f"stats_tokens must be >= 1, got {self.stats_tokens}")
        _check(self.stats_corpus != "hf:", "stats_corpus 'hf:' needs a dataset id, e.g. 'hf:wikitext:wikitext-103-raw-v1'")
        _check(self.stats_ridge >= 0, f"stats_ridge must be >= 0, got {self.stats_ridge}")


# ----------------------------------------------------------------------------------- architecture


@dataclass
class Arch:
    """Where the edited down-projections and decoder blocks of a model live."""

    kind: str  # "llama" or "gpt2"
    blocks_path: str  # dotted path of the ModuleList of decoder blocks
    mlp_out: str  # path of the down-projection inside a block
    n_layers: int
    d_in: int  # down-projection input size (the key size)
    d_out: int  # its output size (the hidden size)

    def block(self, model, layer: int) -> torch.nn.Module:
        return _get(_unwrap(model), self.blocks_path)[layer]

    def down_proj(self, model, layer: int) -> torch.nn.Module:
        """The down-projection of ``layer`` (the LoRA wrapper once the adapter is attached)."""
        return _get(self.block(model, layer), self.mlp_out)

    def module_name(self, layer: int) -> str:
        return f"{self.blocks_path}.{layer}.{self.mlp_out}"

    def target_regex(self, layers: list[int]) -> str:
        """A peft ``target_modules`` regex (peft full-matches it) selecting exactly these layers' down-projections."""
        alts = "|".join(str(i) for i in sorted(layers))
        return rf"{re.escape(self.blocks_path)}\.({alts})\.{re.escape(self.mlp_out)}"

    def check_layers(self, layers: list[int], what: str) -> None:
        bad = [i for i in layers if not 0 <= i < self.n_layers]
        if bad:
            raise LuneError(f"{what} {bad} out of range: the model has layers 0-{self.n_layers - 1}")


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _base_weight(module) -> torch.Tensor:
    return (module.base_layer if hasattr(module, "base_layer") else module).weight


def find_arch(model) -> Arch:
    """The Llama- or GPT-2-style layout of ``model``; LuneError naming the architecture otherwise."""
    base = _unwrap(model)
    name = type(base).__name__
    inner = getattr(base, "model", None)
    blocks = getattr(inner, "layers", None)
    if isinstance(blocks, torch.nn.ModuleList) and len(blocks) and isinstance(
        getattr(getattr(blocks[0], "mlp", None), "down_proj", None), torch.nn.Module
    ):
        w = _base_weight(blocks[0].mlp.down_proj)
        return Arch("llama", "model.layers", "mlp.down_proj", len(blocks), d_in=w.shape[1], d_out=w.shape[0])
    blocks = getattr(getattr(base, "transformer", None), "h", None)
    if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
        proj = getattr(getattr(blocks[0], "mlp", None), "c_proj", None)
        if proj is not None and type(proj.base_layer if hasattr(proj, "base_layer") else proj).__name__ == "Conv1D":
            w = _base_weight(proj)  # Conv1D stores (in, out)
            return Arch("gpt2", "transformer.h", "mlp.c_proj", len(blocks), d_in=w.shape[0], d_out=w.shape[1])
    raise LuneError(
        f"ROME/MEMIT edit Llama-style (model.layers[i].mlp.down_proj) and GPT-2-style (transformer.h[i].mlp.c_proj) "
        f"causal LMs; {name} is neither"
    )


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _rng_devices(dev: torch.device) -> list[int]:
    """CUDA devices whose RNG ``fork_rng`` must save and restore (none on CPU)."""
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


# ------------------------------------------------------------------------------ subjects & prompts


@dataclass
class Row:
    """One tokenised prompt with the position of the subject's last token (and the target, if any)."""

    ids: list[int]
    lookup: int
    target: list[int] | None = None
    fact: int = -1


def fact_subject(fact: Fact) -> str:
    """The subject of a fact: its ``subject`` field if it occurs in the prompt, else the longest capitalised run."""
    from .anchors import find_subject

    subj = find_subject(fact.prompt, fact.subject)
    if not subj:
        raise LuneError(f"{fact.source or 'fact'}: cannot find the subject of {fact.prompt!r}; add a 'subject' field")
    return subj


def subject_row(tok, fmt: PromptFormat, text: str, style: str, subject: str, at: int | None = None) -> Row:
    """Tokenise ``text`` as ``fmt`` renders it and find the last token of ``subject`` (at char ``at`` of ``text``).

    The rendered prompt (plain or chat template) is tokenised with offsets, so the last token that
    overlaps the subject is found whatever the tokenizer merges; without a fast tokenizer the
    position is the length of the tokenised text up to the subject's end.
    """
    at = text.find(subject) if at is None else at
    if at < 0:
        raise LuneError(f"subject {subject!r} not in prompt {text!r}")
    rendered = fmt.prompt_text(text, style)
    ids = fmt.prompt_ids(text, style)
    base = rendered.find(text)
    if base < 0:  # a chat template that rewrote the message: fall back to the subject's last occurrence
        base, at = 0, rendered.rfind(subject)
        if at < 0:
            raise LuneError(f"cannot find subject {subject!r} in the rendered prompt {rendered!r}")
    end = base + at + len(subject)
    special = not fmt.is_chat(style)
    lookup = None
    if getattr(tok, "is_fast", False):
        enc = tok(rendered, add_special_tokens=special, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            spans = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end]
            lookup = spans[-1] if spans else None
    if lookup is None:
        lookup = len(tok(rendered[:end], add_special_tokens=special)["input_ids"]) - 1
    if not 0 <= lookup < len(ids):
        raise LuneError(f"cannot locate subject {subject!r} in the tokenised prompt {rendered!r}")
    return Row(ids=list(ids), lookup=lookup)


@torch.no_grad()
def context_prefixes(model, tok, n: int, length: int, seed: int) -> list[str]:
    """``n`` short texts the model writes itself from MEMIT's seed words (top-5 sampling, seeded)."""
    if n <= 0:
        return []
    starts = [PREFIX_STARTS[i % len(PREFIX_STARTS)] for i in range(n)]
    seqs = [tok(s, add_special_tokens=True)["input_ids"] for s in starts]
    dev = _device(model)
    T = max(map(len, seqs))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((n, T), pad, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=length, min_new_tokens=length,
                             do_sample=True, top_k=5, top_p=1.0, temperature=1.0, pad_token_id=pad)
    texts = tok.batch_decode(out, skip_special_tokens=True)
    return [" ".join(t.replace("{", " ").replace("}", " ").split()) for t in texts]


def fact_rows(tok, fmt: PromptFormat, fact: Fact, subject: str, prefixes: list[str], target: list[int] | None, index: int) -> list[Row]:
    """The fact's prompt bare and after each prefix ("{prefix}. {prompt}", as ROME's templates), subject located in each."""
    at = fact.prompt.find(subject)
    rows = [subject_row(tok, fmt, fact.prompt, fact.style, subject, at)]
    for p in prefixes:
        text = f"{p}. {fact.prompt}" if p else fact.prompt
        rows.append(subject_row(tok, fmt, text, fact.style, subject, at + len(text) - len(fact.prompt)))
    for r in rows:
        r.target, r.fact = target, index
    return rows


def kl_row(tok, fmt: PromptFormat, subject: str, index: int) -> Row:
    row = subject_row(tok, fmt, KL_TEMPLATE.format(subject), "prompt", subject, 0)
    row.fact = index
    return row


def target_ids(fmt: PromptFormat, fact: Fact, target: str) -> list[int]:
    ids = fmt.response_ids(target, fact.style, end=False)
    if not ids:
        raise LuneError(f"{fact.source or 'fact'}: the new target {target!r} tokenises to nothing")
    return ids


def _batch(rows: list[Row], pad: int, with_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask); a row with a target gets all but its last target token appended."""
    seqs = [r.ids + (r.target[:-1] if with_target and r.target else []) for r in rows]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# ------------------------------------------------------------------------------ keys and targets


@torch.no_grad()
def capture(model, tok, arch: Arch, rows: list[Row], layers: list[int], block_layer: int | None = None,
            batch_size: int = 32) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Down-projection inputs (keys) at each row's subject token for ``layers`` (row x d_in, float32),
    and the output of decoder block ``block_layer`` there (row x d_out) if asked."""
    dev = _device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    keys: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    outs: list[torch.Tensor] = []
    cur: dict[str, torch.Tensor] = {}

    def key_hook(layer):
        def fn(mod, args):
            x = args[0]
            keys[layer].append(x[cur["rows"], cur["idx"]].float())
        return fn

    def block_hook(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        outs.append(h[cur["rows"], cur["idx"]].float())

    last = max(layers + ([block_layer] if block_layer is not None else []))
    handles = [arch.down_proj(model, l).register_forward_pre_hook(key_hook(l)) for l in layers]
    if block_layer is not None:
        handles.append(arch.block(model, block_layer).register_forward_hook(block_hook))
    try:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            ids, mask = _batch(chunk, pad, with_target=False)
            cur["rows"] = torch.arange(len(chunk), device=dev)
            cur["idx"] = torch.tensor([r.lookup for r in chunk], device=dev)
            with stop_after(arch, model, last):  # later layers cannot change these activations
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {l: torch.cat(v) for l, v in keys.items()}, (torch.cat(outs) if block_layer is not None else None)


def mean_per_fact(x: torch.Tensor, rows: list[Row], n_facts: int) -> torch.Tensor:
    """Average the rows of ``x`` over each fact's context templates: (n_facts, d)."""
    idx = torch.tensor([r.fact for r in rows], device=x.device)
    out = torch.zeros(n_facts, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, idx, x)
    return out / torch.bincount(idx, minlength=n_facts).clamp_min(1).unsqueeze(1).to(x.dtype)


@dataclass
class TargetResult:
    delta: torch.Tensor  # (d_out,) added at the edited position
    init: torch.Tensor  # the vector delta's norm is measured against (v0), float32
    steps: int  # gradient steps taken
    tokens: int  # tokens forwarded during those steps
    nll: float  # mean target NLL (nats/token) over the context templates with the final delta


def optimise_target(model, tok, arch: Arch, layer: int, rows: list[Row], kl_rows: list[Row], s: EditSettings,
                    norm_at: str = "mlp") -> TargetResult:
    """Optimise ``delta`` added to the down-projection output of ``layer`` at every row's subject token.

    Loss (ROME, Meng et al. 2022, Eq. 4 with its implementation's terms): mean over the rows of the
    target's token-averaged NLL, + ``kl_factor`` * KL(p || p_init) of the next-token distribution
    at the subject's last token of the KL rows, + ``v_weight_decay`` * (|delta| / |v0|)^2. After
    each Adam step |delta| is clamped to ``clamp_norm_factor`` * |v0|, where v0 is the unedited
    vector at the bare prompt (row 0): the MLP output (``norm_at="mlp"``, ROME) or the decoder
    block's output, the residual stream (``"block"``, MEMIT). Adding delta to the MLP output at a
    position adds it to that block's output there too, so MEMIT's z = h0 + delta.
    """
    dev = _device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    all_rows = rows + kl_rows
    ids, mask = _batch(all_rows, pad, with_target=True)
    ids, mask = ids.to(dev), mask.to(dev)
    n_rw = len(rows)
    lookup = torch.tensor([r.lookup for r in all_rows], device=dev)
    ar = torch.arange(len(all_rows), device=dev)
    # Positions whose logits predict each rewriting row's target tokens.
    pos_r, pos_t, tgt = [], [], []
    for i, r in enumerate(rows):
        for j, t in enumerate(r.target):
            pos_r.append(i)
            pos_t.append(len(r.ids) - 1 + j)
            tgt.append(t)
    pos_r_t = torch.tensor(pos_r, device=dev)
    pos_t_t = torch.tensor(pos_t, device=dev)
    tgt_t = torch.tensor(tgt, device=dev)
    per_row = torch.bincount(pos_r_t, minlength=n_rw).float()
    kl_idx = torch.arange(n_rw, len(all_rows), device=dev)

    delta = torch.zeros(arch.d_out, device=dev, dtype=torch.float32, requires_grad=True)
    init: dict[str, torch.Tensor] = {}

    def edit_hook(mod, args, out):
        if "mlp" not in init:
            init["mlp"] = out[0, lookup[0]].detach().float().clone()
        add = delta.to(out.dtype).unsqueeze(0).expand(len(all_rows), -1)
        return out.index_put((ar, lookup), add, accumulate=True)

    def block_hook(mod, args, out):
        if "block" not in init:
            h = out[0] if isinstance(out, tuple) else out
            init["block"] = h[0, lookup[0]].detach().float().clone()

    handles = [arch.down_proj(model, layer).register_forward_hook(edit_hook)]
    if norm_at == "block":
        handles.append(arch.block(model, layer).register_forward_hook(block_hook))
    opt = torch.optim.Adam([delta], lr=s.v_lr)
    kl_init = None
    steps = tokens = 0
    nll_val = float("nan")
    try:
        with torch.enable_grad():
            for it in range(s.v_steps + 1):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                logp = F.log_softmax(logits[pos_r_t, pos_t_t].float(), dim=-1)
                tok_nll = -logp.gather(1, tgt_t.unsqueeze(1)).squeeze(1)
                nll = (torch.zeros(n_rw, device=dev).index_add(0, pos_r_t, tok_nll) / per_row).mean()
                loss = nll
                if kl_rows and s.kl_factor > 0:
                    kl_lp = F.log_softmax(logits[kl_idx, lookup[kl_idx]].float(), dim=-1)
                    if kl_init is None:
                        kl_init = kl_lp.detach()
                    loss = loss + s.kl_factor * F.kl_div(kl_init, kl_lp, log_target=True, reduction="batchmean")
                v0 = init[norm_at]
                v0_norm = v0.norm().clamp_min(1e-8)
                if s.v_weight_decay > 0:
                    loss = loss + s.v_weight_decay * (delta.norm() / v0_norm) ** 2
                nll_val = float(nll.detach())
                if nll_val < STOP_NLL or it == s.v_steps:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                tokens += int(mask.sum())
                with torch.no_grad():
                    max_norm = s.clamp_norm_factor * v0_norm
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
    finally:
        for h in handles:
            h.remove()
    return TargetResult(delta=delta.detach(), init=init[norm_at], steps=steps, tokens=tokens, nll=nll_val)


@torch.no_grad()
def target_nll(model, tok, rows: list[Row]) -> list[float]:
    """Token-averaged NLL of each row's target after its prompt (no hooks: the model as it is)."""
    dev = _device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = _batch(rows, pad, with_target=True)
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits.float()
    out = []
    for i, r in enumerate(rows):
        p = len(r.ids) - 1
        lp = F.log_softmax(logits[i, p : p + len(r.target)], dim=-1)
        out.append(float(-lp.gather(1, torch.tensor(r.target, device=dev).unsqueeze(1)).mean()))
    return out


# --------------------------------------------------------------------------- second moments C


def model_key(model) -> str:
    """Cache key of a model: its name plus a short hash of its config and a fingerprint of its weights."""
    base = _unwrap(model)
    cfg = base.config.to_dict()
    name = Path(str(getattr(base.config, "name_or_path", "") or "")).name or str(cfg.get("model_type", "model"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "transformers_version"}  # paths, versions
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    # Fine-tunes share a config: a few weights tell them apart (same config and name != same stats).
    params = [p for n, p in base.named_parameters() if "lora_" not in n]
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:60]}-{h.hexdigest()[:12]}"


def _hf_spec(corpus: str) -> tuple[str, str | None]:
    spec = corpus[3:]
    name, _, config = spec.partition(":")
    return name, (config or None)


def corpus_key(corpus: str, tokens: int, seed: int) -> str:
    if corpus == "self":
        return f"self-s{seed}-len{SELF_SAMPLE_LEN}-t{tokens}"
    if corpus.startswith("hf:"):
        return f"hf-{re.sub(r'[^A-Za-z0-9._-]+', '_', corpus[3:])[:80]}-t{tokens}"
    p = corpus_path(corpus)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    return f"file-{re.sub(r'[^A-Za-z0-9._-]+', '_', p.stem)[:40]}-{digest}-t{tokens}"


def corpus_path(corpus: str) -> Path:
    p = Path(corpus).expanduser()
    if not p.is_file():
        raise LuneError(f"stats corpus file not found: {p} (use 'self', 'identity', a .txt/.jsonl file or 'hf:DATASET')")
    return p


def read_corpus_file(corpus: str) -> list[str]:
    """Paragraphs of a .txt file (separated by blank lines) or the 'text' fields of a .jsonl file."""
    p = corpus_path(corpus)
    texts: list[str] = []
    if p.suffix == ".jsonl":
        for where, rec in read_jsonl(p, "stats corpus", "text"):
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise LuneError(f"stats corpus {where}: expected an object with a 'text' string")
            if rec["text"].strip():
                texts.append(rec["text"].strip())
    else:
        texts = [t.strip() for t in re.split(r"\n\s*\n", p.read_text(encoding="utf-8")) if t.strip()]
    if not texts:
        raise LuneError(f"stats corpus {p} contains no text")
    return texts


def _hub_texts(corpus: str):
    name, config = _hf_spec(corpus)
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split="train", streaming=True)
        for rec in ds:
            text = rec.get("text") if isinstance(rec, dict) else None
            if isinstance(text, str) and text.strip():
                yield text.strip()
    except LuneError:
        raise
    except Exception as e:  # datasets raises many types for a missing dataset, config or network
        raise LuneError(f"cannot read stats corpus {corpus!r} from the Hub: {e}") from e


def tokenise_texts(tok, texts, tokens: int) -> list[list[int]]:
    """Token sequences (at most STATS_MAX_LEN each) from ``texts`` until ``tokens`` tokens are collected."""
    seqs: list[list[int]] = []
    total = 0
    for text in texts:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        for s in range(0, len(ids), STATS_MAX_LEN):
            chunk = ids[s : s + STATS_MAX_LEN][: tokens - total]
            if len(chunk) >= 2:
                seqs.append(chunk)
                total += len(chunk)
            if total >= tokens:
                return seqs
    return seqs


@torch.no_grad()
def sample_self_corpus(model, tok, tokens: int, seed: int, batch_size: int | None = None) -> list[list[int]]:
    """Text the model writes itself from the built-in anchor prompts (seeded; temperature 1, nucleus 0.95).

    The model's own distribution stands in for its pretraining text (ROME uses Wikipedia). Batched,
    left-padded generation with the KV cache; each text is its prompt plus up to SELF_SAMPLE_LEN
    tokens, cut at the end-of-sequence token.
    """
    from .anchors import anchor_prompts

    dev = _device(model)
    batch_size = batch_size or (64 if dev.type == "cuda" else 32)
    prompts = anchor_prompts()
    rng = random.Random(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    seqs: list[list[int]] = []
    total = 0
    bar = tqdm(total=tokens, desc="sampling statistics text", unit="tok", leave=False)
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(seed)
        order: list[str] = []
        while total < tokens:
            if len(order) < batch_size:
                more = list(prompts)
                rng.shuffle(more)
                order += more
            # the last batch only as large as the tokens still wanted (each row brings up to SELF_SAMPLE_LEN new tokens)
            rows = min(batch_size, max(1, math.ceil((tokens - total) / SELF_SAMPLE_LEN)))
            batch, order = order[:rows], order[rows:]
            enc = [tok(p, add_special_tokens=True)["input_ids"] for p in batch]
            T = max(map(len, enc))
            ids = torch.full((len(enc), T), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), T), dtype=torch.long)
            for i, e in enumerate(enc):
                ids[i, T - len(e):] = torch.tensor(e)
                mask[i, T - len(e):] = 1
            out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=SELF_SAMPLE_LEN,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=0.95, pad_token_id=pad)
            for i, e in enumerate(enc):
                gen = out[i, T:].tolist()
                if eos is not None and eos in gen:
                    gen = gen[: gen.index(eos) + 1]
                seq = (e + gen)[: tokens - total]
                if len(seq) >= 2:
                    seqs.append(seq)
                    total += len(seq)
                    bar.update(len(seq))
                if total >= tokens:
                    break
    bar.close()
    return seqs


@torch.no_grad()
def compute_second_moments(model, arch: Arch, seqs: list[list[int]], layers: list[int], pad: int,
                           batch_size: int = 16) -> dict[int, tuple[torch.Tensor, int]]:
    """Sum of k k^T (float64, on CPU) and the token count per layer over every non-padding token of ``seqs``."""
    dev = _device(model)
    sums = {l: torch.zeros(arch.d_in, arch.d_in, dtype=torch.float64, device=dev if dev.type == "cuda" else "cpu") for l in layers}
    count = 0
    cur: dict[str, torch.Tensor] = {}

    def hook(layer):
        def fn(mod, args):
            k = args[0][cur["mask"]].to(sums[layer].device, torch.float64)
            sums[layer].addmm_(k.T, k)
        return fn

    handles = [arch.down_proj(model, l).register_forward_pre_hook(hook(l)) for l in layers]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    try:
        for s in tqdm(range(0, len(order), batch_size), desc="key statistics", leave=False):
            chunk = [seqs[i] for i in order[s : s + batch_size]]
            rows = [Row(ids=c, lookup=0) for c in chunk]
            ids, mask = _batch(rows, pad, with_target=False)
            cur["mask"] = mask.bool().to(dev)
            with stop_after(arch, model, max(layers)):  # the layers above are not needed
                model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {l: (sums[l].cpu(), count) for l in layers}


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Stats:
    """Second moments C (d_in x d_in, float32, CPU) per layer, or None for 'identity'."""

    mom2: dict[int, torch.Tensor] | None
    source: str
    tokens: int  # tokens C was estimated from (0 for identity)
    seconds: float  # time spent computing them now (0 when all came from the cache)
    cached: bool

    def regularised(self, layer: int, ridge: float, keys: torch.Tensor) -> torch.Tensor:
        """C + ridge * mean(diag C) * I in float64. For 'identity', c * I with c = mean |k|^2 / d_in over
        ``keys`` (n x d_in), so that the prior has the keys' own scale (MEMIT's weight then means the same)."""
        d = keys.shape[1]
        if self.mom2 is None:
            c = float((keys.double() ** 2).sum(1).mean() / d) or 1.0
            return torch.eye(d, dtype=torch.float64) * c
        C = self.mom2[layer].double()
        return C + ridge * float(C.diagonal().mean()) * torch.eye(d, dtype=torch.float64)


def second_moments(model, tok, arch: Arch, layers: list[int], corpus: str, tokens: int, cache_dir: Path | None,
                   seed: int = 0) -> Stats:
    """C = E[k k^T] of the down-projection inputs at ``layers``, from the cache or computed (and cached) now.

    Cached as ``cache_dir/stats/<model key>/<corpus key>/layer<L>.pt`` (written atomically); the
    sampled "self" text is cached next to them (``samples.pt``), so further layers cost one forward pass.
    """
    if corpus == "identity":
        return Stats(mom2=None, source="identity", tokens=0, seconds=0.0, cached=True)
    if corpus != "self" and not corpus.startswith("hf:"):
        corpus_path(corpus)  # a missing file fails here, naming it
    if cache_dir is None:
        from .models import cache_dir as default_cache

        cache_dir = default_cache()
    root = Path(cache_dir) / "stats" / model_key(model) / corpus_key(corpus, tokens, seed)
    out: dict[int, torch.Tensor] = {}
    counts: list[int] = []
    missing = []
    for l in layers:
        f = root / f"layer{l}.pt"
        if f.is_file():
            try:
                d = torch.load(f, map_location="cpu", weights_only=True)
                out[l] = d["mom2"]
                counts.append(int(d["count"]))
                continue
            except Exception as e:  # a corrupt cache file is recomputed, not fatal
                log.warning("ignoring unreadable statistics cache %s: %s", f, e)
        missing.append(l)
    seconds = 0.0
    if missing:
        t0 = time.perf_counter()
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        if corpus == "self":
            samples = root / "samples.pt"
            seqs = None
            if samples.is_file():
                try:
                    seqs = torch.load(samples, weights_only=True)
                except Exception:
                    seqs = None
            if seqs is None:
                seqs = sample_self_corpus(model, tok, tokens, seed)
                _atomic_save(seqs, samples)
        elif corpus.startswith("hf:"):
            seqs = tokenise_texts(tok, _hub_texts(corpus), tokens)
        else:
            seqs = tokenise_texts(tok, read_corpus_file(corpus), tokens)
        if not seqs:
            raise LuneError(f"stats corpus {corpus!r} gave no usable text")
        sums = compute_second_moments(model, arch, seqs, missing, pad)
        for l, (S, n) in sums.items():
            C = (S / max(n, 1)).float()
            _atomic_save({"mom2": C, "count": n, "corpus": corpus, "layer": l}, root / f"layer{l}.pt")
            out[l] = C
            counts.append(n)
        seconds = time.perf_counter() - t0
        log.info("key statistics for layers %s from %s: %d tokens in %.1fs", missing, corpus, counts[-1], seconds)
    return Stats(mom2=out, source=f"{corpus} ({min(counts)} tokens, {root})", tokens=min(counts), seconds=seconds,
                 cached=not missing)


# ------------------------------------------------------------------------------------ the adapter


def attach_edit_adapter(model, arch: Arch, layers: list[int], r: int):
    """Wrap ``model`` in a peft LoRA model over exactly these layers' down-projections, with A = B = 0.

    ``lora_alpha = r`` (scaling 1) and no dropout, so filling ``lora_B`` with U (d_out x r) and
    ``lora_A`` with V (r x d_in) makes each adapted layer compute W x + U V x. The adapter's
    weights are frozen (the edit is closed-form, nothing trains them further).
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=arch.target_regex(layers), fan_in_fan_out=arch.kind == "gpt2",
    )
    peft_model = get_peft_model(model, cfg)
    for l in layers:
        m = arch.down_proj(peft_model, l)
        with torch.no_grad():
            m.lora_A["default"].weight.zero_()
            m.lora_B["default"].weight.zero_()
    peft_model.requires_grad_(False)
    peft_model.eval()
    return peft_model


@torch.no_grad()
def set_update(peft_model, arch: Arch, layer: int, U: torch.Tensor, V: torch.Tensor, cols: slice | None = None) -> None:
    """Write U (d_out x k) and V (k x d_in) into the adapter of ``layer`` (columns ``cols`` of its rank).

    Each rank-one pair is balanced (|u_j| = |v_j|, same product) so neither factor under- or
    overflows in low precision.
    """
    U, V = U.double(), V.double()
    scale = (U.norm(dim=0) / V.norm(dim=1).clamp_min(1e-30)).clamp_min(1e-30).sqrt()
    U, V = U / scale, V * scale.unsqueeze(1)
    m = arch.down_proj(peft_model, layer)
    A, B = m.lora_A["default"].weight, m.lora_B["default"].weight
    cols = cols if cols is not None else slice(0, A.shape[0])
    A[cols] = V.to(A.device, A.dtype)
    B[:, cols] = U.to(B.device, B.dtype)


def adapter_params(peft_model, arch: Arch, layers: list[int]) -> int:
    n = 0
    for l in layers:
        m = arch.down_proj(peft_model, l)
        n += m.lora_A["default"].weight.numel() + m.lora_B["default"].weight.numel()
    return n


def prepare_facts(model, tok, fmt: PromptFormat, facts: list[Fact], targets: list[str], s: EditSettings, seed: int):
    """Subjects, target ids, context prefixes and located rows (bare prompt first) for every fact."""
    if len(facts) != len(targets):
        raise LuneError(f"{len(facts)} facts but {len(targets)} targets")
    if not facts:
        raise LuneError("no facts to edit")
    subjects = [fact_subject(f) for f in facts]
    tgts = [target_ids(fmt, f, t) for f, t in zip(facts, targets)]
    prefixes = context_prefixes(model, tok, s.n_prefixes, s.prefix_len, seed)
    rows = [fact_rows(tok, fmt, f, subj, prefixes, t, i) for i, (f, subj, t) in enumerate(zip(facts, subjects, tgts))]
    kls = [kl_row(tok, fmt, subj, i) for i, subj in enumerate(subjects)]
    return subjects, tgts, prefixes, rows, kls


def round_layer(frac: float, n_layers: int) -> int:
    return min(n_layers - 1, max(0, int(math.floor(frac * n_layers + 0.5))))
