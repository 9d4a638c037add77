"""Pure tensor functions shared by every method and metric.

``response_logits`` is the one forward pass behind every loss and every log-probability: it
computes vocabulary logits only at the positions that predict response tokens (the vocabulary
projection is a large share of a small model's FLOPs and memory, and prompt and padding positions
carry no loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE


# Config attributes of models whose forward does more to the head's output than the head itself.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _backbone_and_head(model):
    """(decoder stack, vocabulary head) of a causal LM, or None when its forward must be used as is."""
    m = getattr(model, "module", model)  # DDP under accelerate
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    cfg = getattr(m, "config", None)
    if cfg is None or any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS):
        return None
    backbone = getattr(m, getattr(m, "base_model_prefix", ""), None)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if backbone is None or head is None or backbone is m:
        return None
    return backbone, head


def response_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that predict the response tokens, and those tokens, aligned per row.

    Row b's response starts at its own position ``first_b``; ``logits[b, j]`` predicts
    ``targets[b, j] = labels[b, first_b + j]`` for ``j`` < the row's response length, and
    ``targets`` is IGNORE after it. The vocabulary head runs on exactly those positions (B x the
    longest response), not on prompt or padding positions: on the default model the head is a fifth
    of a token's forward FLOPs, and right-padded rows with prompts of different lengths would
    otherwise need logits from the shortest prompt on. Models whose forward transforms the head's
    output (logit soft-capping or scaling) go through their own forward with ``logits_to_keep``.

    Args:
        model: a causal LM (optionally peft-wrapped).
        batch: ``input_ids``, ``attention_mask``, ``labels`` (B, T); labels are IGNORE off-response.

    Returns:
        (logits (B, L, V), targets (B, L)), L = the longest response in the batch.
    """
    labels = batch["labels"]
    T = labels.shape[1]
    on = labels != IGNORE
    on[:, 0] = False  # nothing predicts the first token
    has = on.any(dim=1)
    first = torch.where(has, on.float().argmax(dim=1), torch.ones_like(has, dtype=torch.long))
    last = torch.where(has, T - 1 - on.flip(1).float().argmax(dim=1), first - 1)
    span = last - first + 1  # response length per row (0 for rows without one)
    L = max(int(span.max()), 1)
    j = torch.arange(L, device=labels.device)
    pos = (first - 1).unsqueeze(1) + j  # (B, L): positions whose logits predict the response tokens
    valid = j < span.unsqueeze(1)
    pos = torch.where(valid, pos, (first - 1).unsqueeze(1)).clamp(0, T - 2)
    targets = torch.where(valid, labels.gather(1, pos + 1), torch.full_like(pos, IGNORE))
    parts = _backbone_and_head(model)
    if parts is not None:
        backbone, head = parts
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, L, d), contiguous
        return head(hidden), targets
    start = int(pos.min())
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=T - start)
    logits = out.logits[:, -(T - start):]  # also covers models that accept logits_to_keep but return all T positions
    return logits.gather(1, (pos - start).unsqueeze(-1).expand(-1, -1, logits.shape[-1])), targets


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
