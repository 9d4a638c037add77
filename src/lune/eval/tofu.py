"""TOFU metrics (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

Definitions checked against locuslab/open-unlearning (``src/evals/metrics/{memorization,privacy,utility}.py``
and ``configs/eval/tofu_metrics``), whose numbers the TOFU leaderboard reports:

* probability: P(a|q)^(1/|a|) = exp(mean token log-prob of the answer given the question), averaged over
  questions. On real_authors / world_facts the correct option's normalised probability is divided by the
  sum over the correct and the perturbed options (``option_prob``).
* ROUGE-L recall of the greedy answer against the reference answer (``rouge_score``, stemmer on).
* truth ratio per question: R = exp(mean_j log P(perturbed_j)^(1/|p_j|) - log P(paraphrased)^(1/|a~|)),
  i.e. the *geometric* mean over perturbed answers (open-unlearning and the original TOFU code average the
  length-normalised log-probs, then exponentiate; the paper's formula writes an arithmetic mean). On
  real_authors / world_facts the correct answer stands in for the paraphrase. Aggregates: forget
  mean(min(R, 1/R)) (1 = true and false answers equally likely); retain, real_authors, world_facts
  mean(max(0, 1 - R)). The raw per-question R are kept in ``truth_ratios``.
* forget quality: p-value of the two-sample KS test between the raw forget-set R of the unlearned model
  and of a model trained on the retain set only. Without the latter it is None, with a warning.
* model utility: harmonic mean of the 9 numbers (probability, ROUGE, truth ratio) x (retain, real_authors,
  world_facts).

Questions are rendered by ``PromptFormat`` in the "question" style (the chat template when there is one).
Answer probabilities cover the answer tokens only (no end-of-turn token), as every other lune metric.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from rouge_score import rouge_scorer
from scipy.stats import ks_2samp

from ..data import PromptFormat, make_example
from ..errors import LuneError
from .core import generate, response_token_logprobs
from .metrics import register_metric

log = logging.getLogger(__name__)

SPLITS = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
OPTION_SPLITS = ("real_authors", "world_facts")  # probability normalised over the answer options
UTILITY_KEYS = tuple(f"tofu_{p}_{m}" for p in ("retain", "ra", "wf") for m in ("prob", "rouge", "truth_ratio"))

for _split, _p in SPLITS.items():
    _forget = _split == "forget"
    register_metric(f"tofu_{_p}_prob", not _forget, f"TOFU {_split}: mean length-normalised probability of the answer"
                    + (" over the answer options." if _split in OPTION_SPLITS else "."))
    register_metric(f"tofu_{_p}_rouge", not _forget, f"TOFU {_split}: mean ROUGE-L recall of the greedy answer.")
    register_metric(f"tofu_{_p}_truth_ratio", True, f"TOFU {_split}: truth ratio, "
                    + ("mean min(R, 1/R) (1 = true and false answers equally likely)." if _forget else "mean max(0, 1 - R)."))
register_metric("tofu_forget_quality", True, "TOFU forget quality: KS-test p-value, unlearned vs retain-only model forget truth ratios.")
register_metric("tofu_model_utility", True, "TOFU model utility: harmonic mean of prob, ROUGE, truth ratio on retain, real_authors, world_facts.")


@dataclass
class TofuItem:
    """One TOFU question and the answers its truth ratio compares (a record of the TOFU ``*_perturbed`` files).

    Any object with these four attributes works in this module (e.g. ``lune.eval.datasets.QAItem``).
    """

    question: str
    answer: str
    perturbed_answers: list[str] = field(default_factory=list)  # wrong answers (real_authors/world_facts: the other options)
    paraphrased_answer: str | None = None  # None: the answer itself is the "paraphrase" (real_authors/world_facts)

    @classmethod
    def from_record(cls, rec: dict) -> TofuItem:
        pert = rec.get("perturbed_answer") or []
        return cls(rec["question"], rec["answer"], [pert] if isinstance(pert, str) else list(pert), rec.get("paraphrased_answer"))


# ---------------------------------------------------------------- formulas (pure)


def normalised_prob(mean_logprob: float) -> float:
    """P(a|q)^(1/|a|) from the mean token log-prob of the answer."""
    return math.exp(mean_logprob)


def option_prob(p_correct: float, p_wrong: list[float]) -> float:
    """Normalised probability of the correct option among the correct and the wrong options."""
    return p_correct / (p_correct + sum(p_wrong))


def truth_ratio(paraphrased_mean_lp: float, perturbed_mean_lps: list[float]) -> float:
    """R = geometric mean_j P(perturbed_j)^(1/len) / P(paraphrased)^(1/len), from mean token log-probs."""
    return math.exp(sum(perturbed_mean_lps) / len(perturbed_mean_lps) - paraphrased_mean_lp)


def truth_ratio_forget(ratios: list[float]) -> float:
    """Forget-set aggregate mean(min(R, 1/R)): 1 when perturbed and paraphrased answers are equally likely."""
    return sum(min(r, 1 / r) for r in ratios) / len(ratios)


def truth_ratio_utility(ratios: list[float]) -> float:
    """Retain / real_authors / world_facts aggregate mean(max(0, 1 - R)): high when the truth is preferred."""
    return sum(max(0.0, 1 - r) for r in ratios) / len(ratios)


_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generation: str, reference: str) -> float:
    """ROUGE-L recall: longest common subsequence / reference length, in rouge_score's tokens."""
    return _scorer.score(reference, generation)["rougeL"].recall


def forget_quality(unlearned_truth_ratios: list[float], retain_truth_ratios: list[float] | None) -> float | None:
    """p-value of the two-sample KS test between the raw forget-set truth ratios of two models.

    Returns None, with a warning, when the retain-only model's truth ratios are missing.
    """
    if retain_truth_ratios is None:
        log.warning(
            "TOFU forget quality NOT computed: it needs the forget-set truth ratios of a model trained on the retain "
            "set only (pass retain_model or retain_truth_ratios); reporting None"
        )
        return None
    if not unlearned_truth_ratios or not retain_truth_ratios:
        raise LuneError("forget quality needs truth ratios of both models on at least one forget question")
    return float(ks_2samp(unlearned_truth_ratios, retain_truth_ratios).pvalue)


def harmonic_mean(values: list[float]) -> float:
    """n / sum(1/x); 0 as soon as one value is 0 (the limit, and scipy.stats.hmean's result)."""
    if not values or any(v < 0 for v in values):
        raise LuneError(f"harmonic mean needs non-negative values, got {values}")
    return 0.0 if any(v == 0 for v in values) else len(values) / sum(1 / v for v in values)


def model_utility(metrics: dict) -> float | None:
    """Harmonic mean of the 9 ``UTILITY_KEYS`` in ``metrics``; None, with a warning, when any is missing."""
    missing = [k for k in UTILITY_KEYS if metrics.get(k) is None]
    if missing:
        log.warning("TOFU model utility NOT computed: missing %s (needs retain, real_authors and world_facts); reporting None", missing)
        return None
    return harmonic_mean([metrics[k] for k in UTILITY_KEYS])


# ---------------------------------------------------------------- on a model


def answer_logprobs(model, tok, items: list[TofuItem], fmt: PromptFormat | None = None, batch_size: int = 32) -> list[dict]:
    """Mean token log-probs of every answer of every item given its question, in one batched pass.

    Returns, per item, ``answer`` (float), ``paraphrased`` (float or None) and ``perturbed`` (list of floats).
    """
    fmt = fmt or PromptFormat(tok)
    flat, where = [], []
    for i, it in enumerate(items):
        answers = [("answer", it.answer)] + ([("paraphrased", it.paraphrased_answer)] if it.paraphrased_answer else [])
        for kind, a in answers + [("perturbed", p) for p in it.perturbed_answers]:
            flat.append(make_example(fmt, it.question, a, "question", end=False))
            where.append((i, kind))
    lps = response_token_logprobs(model, flat, tok.pad_token_id, batch_size=batch_size)
    out = [{"answer": 0.0, "paraphrased": None, "perturbed": []} for _ in items]
    for (i, kind), lp in zip(where, lps):
        if kind == "perturbed":
            out[i]["perturbed"].append(float(lp.mean()))
        else:
            out[i][kind] = float(lp.mean())
    return out


def _truth_ratios(lps: list[dict]) -> list[float | None]:
    return [
        truth_ratio(d["paraphrased"] if d["paraphrased"] is not None else d["answer"], d["perturbed"]) if d["perturbed"] else None
        for d in lps
    ]


def tofu_truth_ratios(model, tok, items: list[TofuItem], fmt: PromptFormat | None = None, batch_size: int = 32) -> list[float | None]:
    """Raw truth ratio R per item (None for items without perturbed answers); no generation.

    Run it once on a retain-only model's forget set and keep the list: it is the reference for ``forget_quality``.
    """
    return _truth_ratios(answer_logprobs(model, tok, items, fmt, batch_size))


def tofu_split(
    model, tok, items: list[TofuItem], split: str, max_new_tokens: int = 200, batch_size: int = 32, fmt: PromptFormat | None = None
) -> dict:
    """Probability, ROUGE-L recall and truth ratio of one TOFU split.

    Args:
        split: 'forget', 'retain', 'real_authors' or 'world_facts' (sets the probability and truth-ratio forms).

    Returns:
        ``tofu_<p>_prob``, ``tofu_<p>_rouge``, ``tofu_<p>_truth_ratio`` (p = forget, retain, ra, wf; the truth
        ratio is None when no item has perturbed answers), ``n``, ``truth_ratios`` (raw R per item) and
        ``rows`` (per item: generation, prob, rouge, truth_ratio).
    """
    if split not in SPLITS:
        raise LuneError(f"unknown TOFU split {split!r}; allowed: {', '.join(SPLITS)}")
    if not items:
        raise LuneError(f"TOFU split {split!r} has no questions")
    fmt = fmt or PromptFormat(tok)
    lps = answer_logprobs(model, tok, items, fmt, batch_size)
    if split in OPTION_SPLITS:
        bare = [i for i, d in enumerate(lps) if not d["perturbed"]]
        if bare:
            raise LuneError(f"TOFU {split}: item {bare[0]} has no perturbed answers (the other options are needed)")
        probs = [option_prob(normalised_prob(d["answer"]), [normalised_prob(x) for x in d["perturbed"]]) for d in lps]
    else:
        probs = [normalised_prob(d["answer"]) for d in lps]
    gens = generate(model, tok, [fmt.prompt_ids(it.question, "question") for it in items], max_new_tokens=max_new_tokens, batch_size=batch_size)
    gens = [g.strip() for g in gens]
    rouges = [rouge_l_recall(g, it.answer) for g, it in zip(gens, items)]
    trs = _truth_ratios(lps)
    known = [r for r in trs if r is not None]
    agg = truth_ratio_forget if split == "forget" else truth_ratio_utility
    p = SPLITS[split]
    return {
        f"tofu_{p}_prob": sum(probs) / len(probs),
        f"tofu_{p}_rouge": sum(rouges) / len(rouges),
        f"tofu_{p}_truth_ratio": agg(known) if known else None,
        "n": len(items),
        "truth_ratios": trs,
        "rows": [{"generation": g, "prob": pr, "rouge": r, "truth_ratio": t} for g, pr, r, t in zip(gens, probs, rouges, trs)],
    }


def tofu_eval(
    model,
    tok,
    forget: list[TofuItem],
    retain: list[TofuItem] | None = None,
    real_authors: list[TofuItem] | None = None,
    world_facts: list[TofuItem] | None = None,
    retain_model=None,
    retain_truth_ratios: list[float] | None = None,
    max_new_tokens: int = 200,
    batch_size: int = 32,
    fmt: PromptFormat | None = None,
) -> dict:
    """Every TOFU metric of ``model``: the per-split metrics, ``tofu_forget_quality`` and ``tofu_model_utility``.

    Forget quality compares against ``retain_truth_ratios`` (raw forget-set R of a retain-only model), or
    computes them with ``retain_model``; with neither it is None (and a warning is logged). Model utility
    is None unless retain, real_authors and world_facts are all given.

    Returns:
        the metric keys (``tofu_*``), plus ``splits`` {split: ``tofu_split`` output}.
    """
    if not forget:
        raise LuneError("TOFU evaluation needs forget questions")
    splits = {"forget": forget, "retain": retain, "real_authors": real_authors, "world_facts": world_facts}
    per = {s: tofu_split(model, tok, items, s, max_new_tokens, batch_size, fmt) for s, items in splits.items() if items}
    out: dict = {k: v for d in per.values() for k, v in d.items() if k.startswith("tofu_")}
    if retain_truth_ratios is None and retain_model is not None:
        retain_truth_ratios = tofu_truth_ratios(retain_model, tok, forget, fmt, batch_size)
    mine = [r for r in per["forget"]["truth_ratios"] if r is not None]
    ref = None if retain_truth_ratios is None else [r for r in retain_truth_ratios if r is not None]
    out["tofu_forget_quality"] = forget_quality(mine, ref)
    out["tofu_model_utility"] = model_utility(out)
    out["splits"] = per
    return out
