"""Pure tensor functions shared by every method and metric.

``response_logits`` is the one forward pass behind every loss and every log-probability: it
asks the model for logits only from the first response position on (the vocabulary projection
is a large share of a small model's FLOPs and memory, and prompt positions carry no loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE


def response_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that predict the response tokens, and those tokens.

    Args:
        model: a causal LM (optionally peft-wrapped).
        batch: ``input_ids``, ``attention_mask``, ``labels`` (B, T); labels are IGNORE off-response.

    Returns:
        (logits (B, T', V), targets (B, T')) aligned so that ``logits[:, t]`` predicts ``targets[:, t]``.
    """
    labels = batch["labels"]
    T = labels.shape[1]
    on = labels != IGNORE
    first = int(on.float().argmax(dim=1)[on.any(dim=1)].min()) if on.any() else T - 1
    start = max(first - 1, 0)  # logits at position t predict token t + 1
    # (lune.models.contiguous_head keeps the sliced hidden states from slowing the head down)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=T - start)
    # (B, T - start, V); the slice also covers models that accept logits_to_keep but return all T positions
    logits = out.logits[:, -(T - start):]
    return logits[:, :-1], labels[:, start + 1:]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(target) (B, T') in float32, and the response mask (B, T')."""
    mask = targets != IGNORE
    lp = -F.cross_entropy(logits.float().transpose(1, 2), targets.clamp_min(0), reduction="none")
    return lp * mask, mask


def masked_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-level negative log-likelihood averaged over response tokens (LUNE paper, Eq. 4)."""
    lp, mask = token_logprobs(logits, targets)
    return -lp.sum() / mask.sum().clamp_min(1)


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of response-token log-probabilities per sequence (B,)."""
    lp, _ = token_logprobs(logits, targets)
    return lp.sum(dim=1)


def kl_to_ref(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_model) per response token, averaged over response tokens."""
    mask = targets != IGNORE
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_ref = F.log_softmax(ref_logits.float(), dim=-1)
    kl = F.kl_div(logp, logp_ref, log_target=True, reduction="none").sum(-1)  # (B, T')
    return (kl * mask).sum() / mask.sum().clamp_min(1)
