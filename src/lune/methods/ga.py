"""Gradient ascent on the true answers (GA) and gradient difference (GA + retain NLL).

GA: Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", ACL 2023;
maximise the NLL of the forget facts' own answers. It is unbounded: early stopping (the answer is no
longer produced) is what keeps it from wrecking the model. GradDiff: Liu et al., "Continual Learning
and Private Unlearning", CoLLAs 2022 (as used by TOFU and open-unlearning): GA on the forget facts
plus NLL on retain examples.
"""

from __future__ import annotations

import torch

from ..losses import masked_nll, response_logits
from .base import Method, register


@register("ga")
class GradientAscent(Method):
    citation = "Jang et al. 2023, ACL, arXiv 2210.01504"
    targets = "answers"
    uses_retain = False

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets = response_logits(model, forget)
        nll = masked_nll(logits, targets)
        r_loss, r_logs = self.retain_terms(model, retain)
        return -nll + r_loss, {"forget_nll": nll.item(), **r_logs}


@register("graddiff")
class GradDiff(GradientAscent):
    citation = "Liu et al. 2022, CoLLAs, arXiv 2203.12817 (GA + retain NLL, as in TOFU)"
    uses_retain = True
