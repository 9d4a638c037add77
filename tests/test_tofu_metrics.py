"""TOFU metrics: each formula on hand values, KS and harmonic mean against scipy, the model-level run."""

from __future__ import annotations

import logging
import math

import pytest
import scipy.stats

from lune.data import PromptFormat, make_example
from lune.errors import LuneError
from lune.eval.core import response_logprobs
from lune.eval.metrics import METRICS
from lune.eval.tofu import (
    UTILITY_KEYS,
    TofuItem,
    answer_logprobs,
    forget_quality,
    harmonic_mean,
    model_utility,
    normalised_prob,
    option_prob,
    rouge_l_recall,
    tofu_eval,
    tofu_split,
    tofu_truth_ratios,
    truth_ratio,
    truth_ratio_forget,
    truth_ratio_utility,
)

FORGET = [
    TofuItem("What is the capital of France ?", "The capital of France is Paris", ["The capital of France is Lyon", "The capital is Berlin"], "Paris is the French capital"),
    TofuItem("What city is the capital of Spain ?", "Madrid", ["Lyon", "Rome", "Osaka"], "The capital is Madrid"),
]
OPTIONS = [
    TofuItem("Who painted the Mona Lisa ?", "Leonardo da Vinci", ["Paris", "Rome"]),
    TofuItem("What is the largest planet ?", "Jupiter", ["Saturn"]),
]


def test_probability_formulas():
    assert normalised_prob(math.log(0.25)) == pytest.approx(0.25)
    assert option_prob(0.5, [0.25, 0.25]) == pytest.approx(0.5)
    assert option_prob(0.2, [0.6]) == pytest.approx(0.25)


def test_truth_ratio_formulas():
    # geometric mean of the perturbed probabilities over the paraphrased one: sqrt(0.25 * 0.0625) / 0.5
    assert truth_ratio(math.log(0.5), [math.log(0.25), math.log(0.0625)]) == pytest.approx(0.25)
    assert truth_ratio(math.log(0.2), [math.log(0.2)]) == pytest.approx(1.0)
    assert truth_ratio_forget([0.25, 4.0, 1.0]) == pytest.approx((0.25 + 0.25 + 1.0) / 3)
    assert truth_ratio_utility([0.25, 4.0, 1.0]) == pytest.approx((0.75 + 0.0 + 0.0) / 3)


def test_rouge_l_recall():
    # reference [the capital is paris], generation [paris is the capital]: LCS "the capital" = 2 of 4
    assert rouge_l_recall("Paris is the capital", "The capital is Paris") == pytest.approx(0.5)
    assert rouge_l_recall("Paris, of course.", "Paris") == 1.0  # recall ignores extra words
    assert rouge_l_recall("She wrote books", "She writes book") == pytest.approx(2 / 3)  # stemmer: books -> book
    assert rouge_l_recall("", "Paris") == 0.0


def test_forget_quality_is_scipys_ks_pvalue():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    assert forget_quality(a, b) == pytest.approx(2 / math.comb(10, 5))  # exact: both extreme orderings of 252
    assert forget_quality(a, a) == 1.0
    c = [0.3, 1.2, 0.8, 2.5, 0.1, 0.9, 1.7]
    assert forget_quality(c, a) == pytest.approx(scipy.stats.ks_2samp(c, a).pvalue)
    # KS depends on ranks only: reporting R or 1/R (as the original TOFU code does) gives the same p-value
    assert forget_quality([1 / x for x in c], [1 / x for x in a]) == pytest.approx(forget_quality(c, a))


def test_forget_quality_without_retain_model_is_none_and_loud(caplog):
    with caplog.at_level(logging.WARNING, logger="lune.eval.tofu"):
        assert forget_quality([0.5, 1.0], None) is None
    assert "forget quality NOT computed" in caplog.text


def test_harmonic_mean_and_model_utility(caplog):
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.2, 0.4, 0.9]) == pytest.approx(scipy.stats.hmean([0.2, 0.4, 0.9]))
    assert harmonic_mean([0.7, 0.0, 0.9]) == 0.0 == scipy.stats.hmean([0.7, 0.0, 0.9])
    with pytest.raises(LuneError, match="non-negative"):
        harmonic_mean([0.5, -0.1])
    nine = {k: v for k, v in zip(UTILITY_KEYS, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])}
    assert len(UTILITY_KEYS) == 9
    assert model_utility(nine) == pytest.approx(9 / sum(1 / v for v in nine.values()))
    with caplog.at_level(logging.WARNING, logger="lune.eval.tofu"):
        assert model_utility({**nine, "tofu_wf_rouge": None}) is None
    assert "model utility NOT computed" in caplog.text


def test_registered_with_directions():
    assert METRICS["tofu_forget_quality"].higher_is_better and METRICS["tofu_model_utility"].higher_is_better
    assert not METRICS["tofu_forget_prob"].higher_is_better and not METRICS["tofu_forget_rouge"].higher_is_better
    assert METRICS["tofu_forget_truth_ratio"].higher_is_better
    for k in UTILITY_KEYS:
        assert METRICS[k].higher_is_better


def test_item_from_tofu_record():
    rec = {"question": "Q?", "answer": "A", "paraphrased_answer": "A'", "perturbed_answer": ["B", "C"], "paraphrased_question": "Q'?"}
    assert TofuItem.from_record(rec) == TofuItem("Q?", "A", ["B", "C"], "A'")
    assert TofuItem.from_record({"question": "Q?", "answer": "A"}) == TofuItem("Q?", "A")


def _mean_lp(model, tok, fmt, question, answer):
    ex = make_example(fmt, question, answer, "question", end=False)
    (lp,) = response_logprobs(model, [ex], tok.pad_token_id)
    return lp / (len(ex.input_ids) - sum(1 for x in ex.labels if x == -100))


def test_split_metrics_match_independent_scoring(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    out = tofu_split(tiny_model, tok, FORGET, "forget", max_new_tokens=4, fmt=fmt)
    lp = [{k: _mean_lp(tiny_model, tok, fmt, it.question, a) for k, a in (("a", it.answer), ("p", it.paraphrased_answer))} for it in FORGET]
    pert = [[_mean_lp(tiny_model, tok, fmt, it.question, a) for a in it.perturbed_answers] for it in FORGET]
    probs = [math.exp(d["a"]) for d in lp]
    trs = [math.exp(sum(p) / len(p) - d["p"]) for d, p in zip(lp, pert)]
    assert out["tofu_forget_prob"] == pytest.approx(sum(probs) / 2, rel=1e-5)
    assert out["truth_ratios"] == pytest.approx(trs, rel=1e-5)
    assert out["tofu_forget_truth_ratio"] == pytest.approx(sum(min(r, 1 / r) for r in trs) / 2, rel=1e-5)
    assert out["n"] == 2 and len(out["rows"]) == 2
    assert out["tofu_forget_rouge"] == pytest.approx(sum(rouge_l_recall(r["generation"], it.answer) for r, it in zip(out["rows"], FORGET)) / 2)
    # the same numbers whatever the batch size
    again = tofu_split(tiny_model, tok, FORGET, "forget", max_new_tokens=4, fmt=fmt, batch_size=1)
    assert again["truth_ratios"] == pytest.approx(out["truth_ratios"], rel=1e-5)
    assert [r["generation"] for r in again["rows"]] == [r["generation"] for r in out["rows"]]


def test_option_splits_normalise_over_options(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    out = tofu_split(tiny_model, tok, OPTIONS, "real_authors", max_new_tokens=3, fmt=fmt)
    want = []
    for it in OPTIONS:
        p = [math.exp(_mean_lp(tiny_model, tok, fmt, it.question, a)) for a in [it.answer] + it.perturbed_answers]
        want.append(p[0] / sum(p))
    assert out["tofu_ra_prob"] == pytest.approx(sum(want) / 2, rel=1e-5)
    # no paraphrase: the truth ratio compares the options with the answer itself
    lps = answer_logprobs(tiny_model, tok, OPTIONS, fmt)
    trs = [truth_ratio(d["answer"], d["perturbed"]) for d in lps]
    assert out["tofu_ra_truth_ratio"] == pytest.approx(truth_ratio_utility(trs))
    with pytest.raises(LuneError, match="no perturbed answers"):
        tofu_split(tiny_model, tok, [TofuItem("Q ?", "Paris")], "world_facts", fmt=fmt)
    with pytest.raises(LuneError, match="unknown TOFU split"):
        tofu_split(tiny_model, tok, OPTIONS, "holdout", fmt=fmt)


def test_tofu_eval(tiny_model, tok, caplog):
    fmt = PromptFormat(tok, "completion")
    with caplog.at_level(logging.WARNING, logger="lune.eval.tofu"):
        out = tofu_eval(tiny_model, tok, FORGET, FORGET, OPTIONS, OPTIONS, max_new_tokens=3, fmt=fmt)
    assert out["tofu_forget_quality"] is None and "forget quality NOT computed" in caplog.text
    assert out["tofu_model_utility"] == pytest.approx(harmonic_mean([out[k] for k in UTILITY_KEYS]))
    assert set(out["splits"]) == {"forget", "retain", "real_authors", "world_facts"}
    # a retain model identical to the unlearned one gives identical truth-ratio distributions: p = 1
    same = tofu_eval(tiny_model, tok, FORGET, retain_model=tiny_model, max_new_tokens=3, fmt=fmt)
    assert same["tofu_forget_quality"] == pytest.approx(1.0)
    assert same["tofu_model_utility"] is None  # retain, real_authors, world_facts not given
    ref = tofu_truth_ratios(tiny_model, tok, FORGET, fmt)
    assert ref == pytest.approx(same["splits"]["forget"]["truth_ratios"], rel=1e-5)
    far = tofu_eval(tiny_model, tok, FORGET, retain_truth_ratios=[1e3, 2e3], max_new_tokens=3, fmt=fmt)
    assert far["tofu_forget_quality"] == pytest.approx(2 / math.comb(4, 2))  # fully separated samples of 2 and 2


def test_any_item_with_the_four_fields_works(tiny_model, tok):
    from types import SimpleNamespace

    fmt = PromptFormat(tok, "completion")
    loose = [SimpleNamespace(question=i.question, answer=i.answer, perturbed_answers=i.perturbed_answers,
                             paraphrased_answer=i.paraphrased_answer, paraphrased_question=None, source="x") for i in FORGET]
    assert tofu_truth_ratios(tiny_model, tok, loose, fmt) == tofu_truth_ratios(tiny_model, tok, FORGET, fmt)
