"""SimNPO: NPO without a reference model, on the length-normalised log-likelihood.

Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", arXiv 2410.07163, Eq. 4:

    L = (2 / beta) * E[ softplus(beta * log pi_theta(y|x) / |y| + gamma) ]

(= -(2/beta) log sigmoid(-(beta/|y|) log pi_theta(y|x) - gamma)) over the forget facts' true
answers, plus the retain terms. Defaults as in open-unlearning's SimNPO config: beta 4.5, gamma 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import _check, _Config, _f
from ..data import IGNORE
from ..losses import response_logits, sequence_logprob
from .base import Method, register


@dataclass
class SimNPOSettings(_Config):
    beta: float = _f(4.5, "Inverse temperature beta (open-unlearning's default 4.5).")
    gamma: float = _f(0.0, "Reward margin gamma >= 0 (open-unlearning's delta; default 0).")

    def __post_init__(self) -> None:
        _check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        _check(self.gamma >= 0, f"gamma must be >= 0, got {self.gamma}")


def simnpo_loss(logp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """(2/beta) * mean softplus(beta * logp / |y| + gamma); logp (B,) summed, lengths (B,) response tokens."""
    return 2.0 / beta * F.softplus(beta * logp / lengths.clamp_min(1) + gamma).mean()


@register("simnpo")
class SimNPO(Method):
    citation = "Fan et al. 2024, arXiv 2410.07163, Eq. 4"
    Settings = SimNPOSettings
    targets = "answers"

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = response_logits(model, forget)
        logp = sequence_logprob(logits, targets)
        loss = simnpo_loss(logp, (targets != IGNORE).sum(1), self.settings.beta, self.settings.gamma)
        r_loss, r_logs = self.retain_terms(model, retain)
        return loss + r_loss, {"simnpo": loss.item(), "forget_logp": logp.mean().item(), **r_logs}
