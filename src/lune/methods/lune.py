"""LUNE: LoRA fine-tuning on negative examples, and its full fine-tuning variant.

Liu et al., "LUNE: Efficient LLM Unlearning via LoRA Fine-Tuning with Negative Examples",
arXiv 2512.07375 (ACL Findings 2026). The forget loss is the token-level NLL of the negative
targets y- given the prompt, over response tokens only (Eq. 4). Optional retain terms keep
other knowledge: NLL on retain facts, and KL to the original model on retain prompts, whose
logits come from the same model with its adapter disabled (no second copy in memory).
"""

from __future__ import annotations

import torch

from ..losses import masked_nll, response_logits
from .base import Method, adapter_disabled, register

__all__ = ["Lune", "LuneFull", "adapter_disabled"]


@register("lune")
class Lune(Method):
    citation = "Liu et al. 2025, arXiv 2512.07375, Eq. 4"
    protect = 0.8  # protected adapters (README, "Defaults"): the baselines keep plain LoRA, as published

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = response_logits(model, forget)
        loss = masked_nll(logits, targets)
        r_loss, r_logs = self.retain_terms(model, retain)
        return loss + r_loss, {"forget_nll": loss.item(), **r_logs}


@register("lune-full")
class LuneFull(Lune):
    """The same negatives and loss with every weight trainable: the paper's full fine-tuning comparison."""

    citation = "Liu et al. 2025, arXiv 2512.07375 (full fine-tuning comparison)"
    always_full = True
