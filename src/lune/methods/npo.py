"""Negative Preference Optimization (NPO).

Zhang et al., "Negative Preference Optimization: From Catastrophic Collapse to Effective
Unlearning", COLM 2024, arXiv 2404.05868, Eq. 3:

    L = (2 / beta) * E[ log(1 + (pi_theta(y|x) / pi_ref(y|x)) ** beta) ]
      = (2 / beta) * E[ softplus(beta * (log pi_theta(y|x) - log pi_ref(y|x))) ]

over the forget facts' true answers y, plus the retain terms (NPO+RT in the paper; set
``--retain-weight 0`` for plain NPO). log pi_ref(y|x) is the original model's and never changes, so
it is computed once before training (``reference_logp``): no reference model is held or run
during training, LoRA or full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import _check, _Config, _f
from ..losses import response_logits, sequence_logprob
from .base import Method, register


@dataclass
class NPOSettings(_Config):
    beta: float = _f(0.1, "Inverse temperature beta of the NPO loss (the paper's and open-unlearning's 0.1).")

    def __post_init__(self) -> None:
        _check(self.beta > 0, f"beta must be > 0, got {self.beta}")


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """(2/beta) * mean softplus(beta * (logp - ref_logp)); logp, ref_logp: (B,) summed response log-probs."""
    return 2.0 / beta * F.softplus(beta * (logp - ref_logp)).mean()


@register("npo")
class NPO(Method):
    citation = "Zhang et al. 2024, COLM, arXiv 2404.05868, Eq. 3"
    Settings = NPOSettings
    targets = "answers"
    reference_logp = True

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = response_logits(model, forget)
        logp = sequence_logprob(logits, targets)
        loss = npo_loss(logp, forget["ref_logp"].to(logp), self.settings.beta)
        r_loss, r_logs = self.retain_terms(model, retain)
        return loss + r_loss, {"npo": loss.item(), "forget_logp": logp.mean().item(), **r_logs}
