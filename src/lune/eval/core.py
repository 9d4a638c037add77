"""The primitives under every metric: batched left-padded generation and response log-probabilities."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import Example, collate
from ..losses import response_logits, sequence_logprob


def _device(model) -> torch.device:
    return next(model.parameters()).device


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
        T = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(prompts[i])
            ids[row, T - n :] = torch.tensor(prompts[i])
            mask[row, T - n :] = 1
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
