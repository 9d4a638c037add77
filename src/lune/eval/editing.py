"""Knowledge-editing metrics of CounterFact (ROME, Meng et al. 2022), read as unlearning metrics.

Definitions checked against kmeng01/rome (``experiments/py/eval_utils_counterfact.py``,
``experiments/summarize.py``). A prompt's preference between two answers compares their
length-normalised log-probabilities, mean_t log p(answer token t | prompt, earlier answer tokens), with
the answer rendered by ``make_example`` (a completion answer gets a leading space, as ROME's
``f"{prefix} {target}"``). Per case the share over its prompts is taken, then the mean over cases.

For unlearning, ``target_true`` is the fact to forget and ``target_new`` any alternative answer:

* ``forget_efficacy`` (ROME's efficacy score ES): share of rewrite prompts where P(new) > P(true).
* ``forget_generalization`` (paraphrase score PS): the same on the paraphrased prompts.
* ``specificity`` (neighbourhood score NS): share of neighbourhood prompts (other subjects, same kind of
  fact) where the model still prefers their true answer: P(true) > P(new).
* ``*_magnitude``: the mean probability gaps, P(new) - P(true) (efficacy, generalisation) and
  P(true) - P(new) (specificity), ROME's "diff" metrics.
* ``fluency`` (ROME's generation entropy): per text the weighted bi- and tri-gram entropies in bits,
  (2/3 H2 + 4/3 H3) / 2, averaged over texts generated from the generation prompts (prompt + continuation,
  as ROME scores ``generate_fast``'s full output). Low values flag repetitive, degenerate text.

Differences from ROME: words are split by a regex (``\\w+`` runs and single punctuation marks) instead of
``nltk.word_tokenize``; generation is greedy by default (ROME samples top-5); a text with no n-grams has
entropy 0 (ROME: NaN).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from ..data import Fact, PromptFormat, make_example
from ..errors import LuneError
from .core import generate, response_token_logprobs
from .metrics import register_metric

register_metric("forget_efficacy", True, "Share of rewrite prompts where the model prefers the alternative answer to the true one (ROME ES).")
register_metric("forget_generalization", True, "Share of paraphrased prompts where the alternative answer beats the true one (ROME PS).")
register_metric("specificity", True, "Share of neighbourhood prompts where the true answer still beats the alternative (ROME NS).")
register_metric("forget_efficacy_magnitude", True, "Mean P(alternative) - P(true) on rewrite prompts (length-normalised probabilities).")
register_metric("forget_generalization_magnitude", True, "Mean P(alternative) - P(true) on paraphrased prompts.")
register_metric("specificity_magnitude", True, "Mean P(true) - P(alternative) on neighbourhood prompts.")
register_metric("fluency", True, "ROME generation entropy: weighted bi-/tri-gram entropy (bits) of generated text; low = repetitive.")

NGRAM_NS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)  # ROME's compute_n_gram_entropy defaults


@dataclass
class EditCase:
    """One CounterFact-style case: the fact to forget, an alternative answer, and the prompts to probe."""

    prompt: str
    target_true: str
    target_new: str
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    neighborhood_answer: str | None = None  # true answer of the neighbourhood prompts; None: target_true (CounterFact)
    style: str = "prompt"

    @classmethod
    def from_fact(cls, fact: Fact, neighborhood_prompts: list[str] | None = None, neighborhood_answer: str | None = None) -> EditCase:
        """A case from a lune fact with a ``replacement`` (the alternative); its paraphrases become paraphrase prompts."""
        if not fact.replacement:
            raise LuneError(f"{fact.source or fact.prompt!r}: an editing case needs the fact's 'replacement' (the alternative answer)")
        return cls(fact.prompt, fact.answer, fact.replacement, list(fact.paraphrases), list(neighborhood_prompts or []), neighborhood_answer, fact.style)


def as_edit_case(case) -> EditCase:
    """``case`` itself, or the ``EditCase`` of a one-paraphrase, one-locality case (EasyEdit's CounterFact/zsRE
    schema: attributes prompt, target_true, target_new, rephrase, locality_prompt, locality_answer, style)."""
    if isinstance(case, EditCase):
        return case
    if not getattr(case, "target_new", None):
        raise LuneError(f"{getattr(case, 'source', '') or case.prompt!r}: an editing case needs target_new (the alternative answer)")
    return EditCase(
        case.prompt, case.target_true, case.target_new,
        [case.rephrase] if case.rephrase else [],
        [case.locality_prompt] if case.locality_prompt else [],
        case.locality_answer, getattr(case, "style", "prompt"),
    )


# ---------------------------------------------------------------- formulas (pure)


def prefers(lp_a: list[float], lp_b: list[float]) -> float | None:
    """Share of prompts where answer a is more likely than answer b (mean token log-probs); None without prompts."""
    return sum(a > b for a, b in zip(lp_a, lp_b)) / len(lp_a) if lp_a else None


def prob_gap(lp_a: list[float], lp_b: list[float]) -> float | None:
    """Mean exp(lp_a) - exp(lp_b) over prompts (ROME's "diff"); None without prompts."""
    return sum(math.exp(a) - math.exp(b) for a, b in zip(lp_a, lp_b)) / len(lp_a) if lp_a else None


def mean_over_cases(values: list[float | None]) -> float | None:
    """Mean over the cases that have prompts of this kind (None if none has)."""
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def words(text: str) -> list[str]:
    """Word and punctuation tokens for n-gram counting."""
    return re.findall(r"\w+|[^\w\s]", text)


def ngram_entropy(text: str, ns: tuple[int, ...] = NGRAM_NS, weights: tuple[float, ...] = NGRAM_WEIGHTS) -> float:
    """ROME's n-gram entropy of one text: mean over n of weight_n * H(n-gram frequencies) in bits."""
    toks = words(text)
    hs = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        total = sum(counts.values())
        hs.append(w * -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return sum(hs) / len(hs)


def generation_entropy(texts: list[str]) -> float:
    """Arithmetic mean of ``ngram_entropy`` over texts (ROME's ``n_gram_entropy`` with agg='arith')."""
    if not texts:
        raise LuneError("generation entropy needs at least one text")
    return sum(ngram_entropy(t) for t in texts) / len(texts)


# ---------------------------------------------------------------- on a model


def edit_scores(model, tok, cases: list, fmt: PromptFormat | None = None, batch_size: int = 32) -> dict:
    """Efficacy, generalisation and specificity (and their magnitudes) over ``cases``, in one batched pass.

    Args:
        cases: ``EditCase``s, or cases in the one-paraphrase schema ``as_edit_case`` converts.

    Returns:
        ``forget_efficacy``, ``forget_generalization``, ``specificity`` and the three ``*_magnitude`` keys
        (None when no case has prompts of that kind), ``n_cases``, ``n_paraphrase_prompts``,
        ``n_neighborhood_prompts``.
    """
    if not cases:
        raise LuneError("editing metrics need at least one case")
    cases = [as_edit_case(c) for c in cases]
    fmt = fmt or PromptFormat(tok)
    exs, where = [], []
    for c, case in enumerate(cases):
        groups = {
            "rewrite": ([case.prompt], case.target_true),
            "paraphrase": (case.paraphrase_prompts, case.target_true),
            "neighborhood": (case.neighborhood_prompts, case.neighborhood_answer or case.target_true),
        }
        for kind, (prompts, true) in groups.items():
            for p in prompts:
                for which, answer in (("true", true), ("new", case.target_new)):
                    exs.append(make_example(fmt, p, answer, case.style, end=False))
                    where.append((c, kind, which))
    lps = response_token_logprobs(model, exs, tok.pad_token_id, batch_size=batch_size)
    got = {(c, kind, which): [] for c in range(len(cases)) for kind in ("rewrite", "paraphrase", "neighborhood") for which in ("true", "new")}
    for key, lp in zip(where, lps):
        got[key].append(float(lp.mean()))

    def per_case(kind: str, fn, a: str, b: str) -> float | None:
        return mean_over_cases([fn(got[(c, kind, a)], got[(c, kind, b)]) for c in range(len(cases))])

    return {
        "forget_efficacy": per_case("rewrite", prefers, "new", "true"),
        "forget_generalization": per_case("paraphrase", prefers, "new", "true"),
        "specificity": per_case("neighborhood", prefers, "true", "new"),
        "forget_efficacy_magnitude": per_case("rewrite", prob_gap, "new", "true"),
        "forget_generalization_magnitude": per_case("paraphrase", prob_gap, "new", "true"),
        "specificity_magnitude": per_case("neighborhood", prob_gap, "true", "new"),
        "n_cases": len(cases),
        "n_paraphrase_prompts": sum(len(c.paraphrase_prompts) for c in cases),
        "n_neighborhood_prompts": sum(len(c.neighborhood_prompts) for c in cases),
    }


def fluency(
    model,
    tok,
    prefixes: list[str],
    max_new_tokens: int = 100,
    batch_size: int = 32,
    do_sample: bool = False,
    style: str | list[str] = "prompt",
    fmt: PromptFormat | None = None,
) -> dict:
    """ROME's generation entropy of the model's continuations of ``prefixes``.

    ``style``: how the prefixes are rendered, one for all or one per prefix ("question" ones go
    through the chat template where ``fmt`` uses it, so the entropy is that of the model's answers).

    Returns:
        ``fluency`` (mean n-gram entropy of prefix + continuation) and ``generations`` (the continuations).
    """
    if not prefixes:
        raise LuneError("fluency needs at least one generation prefix")
    fmt = fmt or PromptFormat(tok)
    styles = [style] * len(prefixes) if isinstance(style, str) else style
    if len(styles) != len(prefixes):
        raise LuneError(f"fluency got {len(prefixes)} prefixes but {len(styles)} styles")
    gens = generate(model, tok, [fmt.prompt_ids(p, s) for p, s in zip(prefixes, styles)], max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample)
    return {"fluency": generation_entropy([f"{p} {g}" for p, g in zip(prefixes, gens)]), "generations": gens}
