"""The primitives under every metric: batched left-padded generation and response log-probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import Example, collate
from ..losses import response_logits, sequence_logprob, token_logprobs


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every sequence right-aligned (left padding), as generation needs."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, T - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[row, T - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model,
    tok,
    prompts: list[list[int]],
    max_new_tokens: int = 16,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    desc: str | None = None,
) -> list[str]:
    """Complete tokenised prompts; returns the decoded continuations (num_return_sequences per prompt, in order).

    Prompts are sorted by length and left-padded so that similar lengths share a batch.
    """
    was_training = model.training
    model.eval()
    dev = _device(model)
    pad = tok.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[str]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        idx = order[s : s + batch_size]
        ids, mask = _left_pad([prompts[i] for i in idx], pad)
        T = ids.shape[1]
        kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        gen = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            pad_token_id=pad,
            **kw,
        )
        texts = tok.batch_decode(gen[:, T:], skip_special_tokens=True)
        for row, i in enumerate(idx):
            out[i] = texts[row * num_return_sequences : (row + 1) * num_return_sequences]
    model.train(was_training)
    return [t for group in out for t in group]


@torch.no_grad()
def next_token_logits(model, tok, prompts: list[list[int]], batch_size: int = 32) -> list[torch.Tensor]:
    """The model's next-token logits after each tokenised prompt (left-padded batches)."""
    was_training = model.training
    model.eval()
    dev = _device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[torch.Tensor] = [None] * len(prompts)  # type: ignore[list-item]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = _left_pad([prompts[i] for i in idx], tok.pad_token_id)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), logits_to_keep=1).logits[:, -1].float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row]
    model.train(was_training)
    return out


@torch.no_grad()
def response_logprobs(model, examples: list[Example], pad_id: int, batch_size: int = 32) -> list[float]:
    """log p(response | prompt), summed over response tokens, for each example."""
    was_training = model.training
    model.eval()
    dev = _device(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = [0.0] * len(examples)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = {k: v.to(dev) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        lp = sequence_logprob(*response_logits(model, batch))
        for row, i in enumerate(idx):
            out[i] = float(lp[row])
    model.train(was_training)
    return out


def vocab_logprob_moments(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of log p(z) for z drawn from the model's own next-token distribution.

    mu = sum_z p(z) log p(z),  sigma = sqrt(sum_z p(z) log p(z)^2 - mu^2)  (Min-K%++, Zhang et al. 2024).

    Args:
        logits: (..., V) next-token logits.

    Returns:
        (mu, sigma), each (...) in float32.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * logp.square()).sum(-1) - mu.square()
    return mu, var.clamp_min(0).sqrt()  # the clamp only removes float rounding below zero


def token_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped by length (shortest first): at most ``batch_size`` per batch and at most
    ``max_tokens`` padded tokens (rows x longest), but never fewer than one row."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        b = batches[-1] if batches else None
        if b is None or len(b) >= batch_size or (len(b) + 1) * lengths[i] > max_tokens:
            batches.append([i])
        else:
            b.append(i)
    return batches


@torch.no_grad()
def response_token_logprobs(
    model, examples: list[Example], pad_id: int, batch_size: int = 32, moments: bool = False, max_tokens: int = 4096
) -> list[torch.Tensor]:
    """Per-token log p(response token | everything before it), one float32 CPU tensor per example.

    Without ``moments`` each tensor is (n,), n = the example's response tokens. With ``moments`` it is
    (n, 3): columns log p(x_t), mu_t, sigma_t (``vocab_logprob_moments`` of the distribution that
    predicts x_t), all from the same forward pass. Batches hold at most ``max_tokens`` padded tokens:
    the logits of long texts are (tokens x vocabulary); at 32 texts of 512 tokens and the default
    model's 49k vocabulary they took 6.4 GB of RSS on the RWKU MIA texts.
    """
    was_training = model.training
    model.eval()
    dev = _device(model)
    out: list[torch.Tensor] = [None] * len(examples)  # type: ignore[list-item]
    for idx in token_batches([len(e.input_ids) for e in examples], batch_size, max_tokens):
        batch = {k: v.to(dev) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        logits, targets = response_logits(model, batch)  # (B, T', V), (B, T')
        lp, mask = token_logprobs(logits, targets)
        for row, i in enumerate(idx):
            on = mask[row]
            if moments:
                # one row at a time: a full (B, T', V) float32 log-softmax would not fit for large vocabularies
                mu, sigma = vocab_logprob_moments(logits[row][on])
                out[i] = torch.stack([lp[row][on], mu, sigma], dim=-1).cpu()
            else:
                out[i] = lp[row][on].cpu()
    model.train(was_training)
    return out
