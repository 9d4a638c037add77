"""Membership-inference attacks (MIA) on texts: can an attacker tell forget texts from unseen ones?

Four reference-free attacks, all from one batched forward pass (``response_token_logprobs``):

* ``loss``   mean token NLL (Yeom et al. 2018).
* ``zlib``   mean token NLL / zlib-compressed length of the text in bytes (Carlini et al. 2021: log
  perplexity, i.e. the *mean* NLL, over zlib entropy; so do open-unlearning's and mimir's ``ZLIBAttack``).
* ``min_k``  mean of the k% lowest token log-probs (Min-K% Prob, Shi et al. 2024).
* ``min_k_plus_plus``  mean of the k% lowest (log p(x_t) - mu_t) / sigma_t, where mu_t, sigma_t are the
  mean and std of log p(z) under the model's own next-token distribution (Min-K%++, Zhang et al. 2024).

Every score is kept in its paper's units. ``MEMBER_SIGN`` says which way points to "member": a member
has a lower ``loss``/``zlib`` and a higher ``min_k``/``min_k_plus_plus``.

AUC convention: ``auc`` is the ROC AUC of separating members (label 1, the forget texts) from non-members
(label 0) with membership scores ``MEMBER_SIGN[attack] * score``; 1.0 = the attack recognises every
member, 0.5 = chance, 0.0 = members look *less* familiar than unseen text. This is the same number as
open-unlearning's ``mia_*`` AUC (forget = 0, holdout = 1, loss-like score), written the other way round.

The report figure ``mia`` = 100 * |2 * AUC_loss - 1| (distance of the LOSS attack from chance, 0..100,
lower is better, as the LUNE paper reports MIA). The distance rather than the raw AUC, because an
over-unlearned model whose forget texts are *less* likely than unseen text (AUC well below 0.5) gives
its members away just as surely (the "Streisand effect"); the raw AUC would reward that.
"""

from __future__ import annotations

import zlib

import torch
from sklearn.metrics import roc_auc_score

from ..data import IGNORE, Example, Fact, PromptFormat, make_example
from ..errors import LuneError
from .core import response_token_logprobs
from .metrics import register_metric

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
MEMBER_SIGN = {"loss": -1.0, "zlib": -1.0, "min_k": 1.0, "min_k_plus_plus": 1.0}
SIGMA_MIN = 1e-3  # as open-unlearning's variance clamp of 1e-6: a (near-)deterministic position gives 0, not inf

register_metric("mia_loss", False, "ROC AUC of the LOSS membership attack, forget vs non-member texts (1 = members recognised, 0.5 = chance).")
register_metric("mia_zlib", False, "ROC AUC of the zlib membership attack (mean NLL / zlib bytes; Carlini et al. 2021).")
register_metric("mia_min_k", False, "ROC AUC of the Min-K% Prob membership attack (Shi et al. 2024).")
register_metric("mia_min_k_plus_plus", False, "ROC AUC of the Min-K%++ membership attack (Zhang et al. 2024).")
register_metric("mia", False, "100 * |2 * AUC_loss - 1|: how far the LOSS attack is from chance (0 = forget texts look unseen).")


# ---------------------------------------------------------------- per-text scores (pure)


def _k_lowest_mean(x: torch.Tensor, k: float) -> float:
    if x.numel() == 0:
        raise LuneError("cannot score a text with no scored tokens")
    n = max(1, int(x.numel() * k))  # as Shi et al. and open-unlearning: floor, at least one token
    return float(x.float().sort().values[:n].mean())


def loss_score(logprobs: torch.Tensor) -> float:
    """Mean token negative log-likelihood of one text (n,) -> float."""
    return float(-logprobs.float().mean())


def zlib_score(logprobs: torch.Tensor, text: str) -> float:
    """Mean token NLL divided by the zlib-compressed length of ``text`` in bytes (Carlini et al. 2021)."""
    return loss_score(logprobs) / len(zlib.compress(text.encode("utf-8")))


def min_k_score(logprobs: torch.Tensor, k: float = 0.2) -> float:
    """Mean of the ``max(1, floor(k * n))`` lowest token log-probs (Min-K% Prob)."""
    return _k_lowest_mean(logprobs, k)


def min_k_plus_plus_score(logprobs: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, k: float = 0.2) -> float:
    """Mean of the k% lowest (log p(x_t) - mu_t) / sigma_t (Min-K%++, Zhang et al. 2024)."""
    return _k_lowest_mean((logprobs.float() - mu.float()) / sigma.float().clamp_min(SIGMA_MIN), k)


def attack_scores(stats: torch.Tensor, text: str, k: float = 0.2) -> dict[str, float]:
    """All four scores of one text from its (n, 3) [log p, mu, sigma] token statistics."""
    lp, mu, sigma = stats.unbind(-1)
    return {
        "loss": loss_score(lp),
        "zlib": zlib_score(lp, text),
        "min_k": min_k_score(lp, k),
        "min_k_plus_plus": min_k_plus_plus_score(lp, mu, sigma, k),
    }


def auc(member_scores: list[float], nonmember_scores: list[float]) -> float:
    """ROC AUC of membership scores (higher = more member-like): P(member > non-member), ties count 1/2."""
    if not member_scores or not nonmember_scores:
        raise LuneError(f"MIA AUC needs members and non-members, got {len(member_scores)} and {len(nonmember_scores)}")
    labels = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return float(roc_auc_score(labels, list(member_scores) + list(nonmember_scores)))


def attack_auc(attack: str, member_scores: list[float], nonmember_scores: list[float]) -> float:
    """AUC of one attack from its per-text scores in paper units (signs applied with ``MEMBER_SIGN``)."""
    s = MEMBER_SIGN[attack]
    return auc([s * x for x in member_scores], [s * x for x in nonmember_scores])


def mia_figure(auc_loss: float) -> float:
    """The report's MIA figure: 100 * |2 * AUC - 1| (0 = chance, 100 = perfect separation either way)."""
    return 100.0 * abs(2.0 * auc_loss - 1.0)


# ---------------------------------------------------------------- on a model


def _example(tok, fmt: PromptFormat | None, item: str | Fact, max_length: int) -> tuple[Example, str]:
    """A text is scored on all its tokens after the first; a Fact on its answer given its prompt."""
    if isinstance(item, Fact):
        return make_example(fmt or PromptFormat(tok), item.prompt, item.answer, item.style, end=False, max_length=max_length), item.answer
    ids = tok(item, add_special_tokens=True)["input_ids"][:max_length]
    if len(ids) < 2:
        raise LuneError(f"MIA text {item[:60]!r} has {len(ids)} token(s); at least 2 are needed (the first is never scored)")
    return Example(input_ids=ids, labels=[IGNORE] + ids[1:]), item


def mia_scores(
    model, tok, texts: list[str | Fact], k: float = 0.2, batch_size: int = 32, max_length: int = 512, fmt: PromptFormat | None = None
) -> list[dict[str, float]]:
    """Per-text attack scores (keys ``ATTACKS``, paper units) for each text, in input order.

    A plain string is tokenised as is (with the tokenizer's BOS if it adds one; the first token is
    never scored) and cut to ``max_length`` tokens; a ``Fact`` is scored on its answer given its
    rendered prompt, as every other lune metric scores a fact. zlib compresses the scored text.
    """
    if not 0 < k <= 1:
        raise LuneError(f"MIA k must be in (0, 1], got {k}")
    pairs = [_example(tok, fmt, t, max_length) for t in texts]
    stats = response_token_logprobs(model, [e for e, _ in pairs], tok.pad_token_id, batch_size=batch_size, moments=True)
    return [attack_scores(s, text, k) for s, (_, text) in zip(stats, pairs)]


def mia_auc(
    model,
    tok,
    members: list[str | Fact],
    nonmembers: list[str | Fact],
    k: float = 0.2,
    batch_size: int = 32,
    max_length: int = 512,
    fmt: PromptFormat | None = None,
) -> dict:
    """ROC AUC of each attack at separating ``members`` (forget texts) from ``nonmembers`` (never trained on).

    Returns:
        ``mia_loss``, ``mia_zlib``, ``mia_min_k``, ``mia_min_k_plus_plus`` (AUCs, 1 = members recognised,
        0.5 = chance), ``mia`` (100 * |2 * AUC_loss - 1|), ``n_members``, ``n_nonmembers``, and
        ``scores`` {"members": [...], "nonmembers": [...]} (per-text scores from ``mia_scores``).
    """
    if not members or not nonmembers:
        raise LuneError(f"MIA AUC needs members and non-members, got {len(members)} and {len(nonmembers)}")
    scores = mia_scores(model, tok, list(members) + list(nonmembers), k=k, batch_size=batch_size, max_length=max_length, fmt=fmt)
    mem, non = scores[: len(members)], scores[len(members) :]
    out: dict = {f"mia_{a}": attack_auc(a, [s[a] for s in mem], [s[a] for s in non]) for a in ATTACKS}
    out["mia"] = mia_figure(out["mia_loss"])
    out.update(n_members=len(mem), n_nonmembers=len(non), scores={"members": mem, "nonmembers": non})
    return out
