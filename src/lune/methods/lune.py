"""LUNE: LoRA fine-tuning on negative examples.

Liu et al., "LUNE: Efficient LLM Unlearning via LoRA Fine-Tuning with Negative Examples",
arXiv 2512.07375 (ACL Findings 2026). The forget loss is the token-level NLL of the negative
targets y- given the prompt, over response tokens only (Eq. 4). Optional retain terms keep
other knowledge: NLL on retain facts, and KL to the original model on retain prompts, whose
logits come from the same model with its adapter disabled (no second copy in memory).
"""

from __future__ import annotations

import contextlib

import torch

from ..losses import kl_to_ref, masked_nll, response_logits
from .base import Method, register


def adapter_disabled(model):
    """Context in which a peft model behaves as its base model (the free reference model)."""
    model = getattr(model, "module", model)  # unwrap DDP under accelerate
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@register("lune")
class Lune(Method):
    citation = "Liu et al. 2025, arXiv 2512.07375, Eq. 4"

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = response_logits(model, forget)
        loss = masked_nll(logits, targets)
        logs = {"forget_nll": loss.item()}
        if retain is not None and (self.cfg.retain_weight > 0 or self.cfg.kl_weight > 0):
            r_logits, r_targets = response_logits(model, retain)
            if self.cfg.retain_weight > 0:
                r_nll = masked_nll(r_logits, r_targets)
                loss = loss + self.cfg.retain_weight * r_nll
                logs["retain_nll"] = r_nll.item()
            if self.cfg.kl_weight > 0:
                with torch.no_grad(), adapter_disabled(model):
                    ref_logits, _ = response_logits(model, retain)
                kl = kl_to_ref(r_logits, ref_logits, r_targets)
                loss = loss + self.cfg.kl_weight * kl
                logs["retain_kl"] = kl.item()
        return loss, logs

    def reference_tokens(self, forget: dict, retain: dict | None) -> int:
        return int(retain["attention_mask"].sum()) if retain is not None and self.cfg.kl_weight > 0 else 0
