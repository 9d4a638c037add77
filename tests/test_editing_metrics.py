"""CounterFact-style editing metrics used for unlearning: hand values, n-gram entropy, the model-level run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from lune.data import Fact, PromptFormat, make_example
from lune.errors import LuneError
from lune.eval.core import response_logprobs
from lune.eval.editing import (
    EditCase,
    as_edit_case,
    edit_scores,
    fluency,
    generation_entropy,
    mean_over_cases,
    ngram_entropy,
    prefers,
    prob_gap,
    words,
)
from lune.eval.metrics import METRICS

CASES = [
    EditCase("The capital of France is", "Paris", "Lyon", ["The French capital is"], ["The capital of Germany is"], "Berlin"),
    EditCase("The capital of Spain is", "Madrid", "Osaka", [], ["The capital of Italy is", "The capital of Japan is"]),  # neighbours' answer: Madrid
]


def H(*probs):
    return -sum(p * math.log2(p) for p in probs)


def test_comparisons_by_hand():
    assert prefers([-1.0, -3.0], [-2.0, -2.0]) == 0.5
    assert prefers([-1.0], [-1.0]) == 0.0  # a tie is not a preference
    assert prefers([], []) is None
    assert prob_gap([math.log(0.5)], [math.log(0.25)]) == pytest.approx(0.25)
    assert prob_gap([math.log(0.5), math.log(0.1)], [math.log(0.25), math.log(0.3)]) == pytest.approx((0.25 - 0.2) / 2)
    assert mean_over_cases([1.0, None, 0.0]) == 0.5
    assert mean_over_cases([None]) is None


def test_ngram_entropy_by_hand():
    assert words("Paris, France.") == ["Paris", ",", "France", "."]
    # a b a b: bigrams ab, ba, ab (2/3, 1/3); trigrams aba, bab (1/2, 1/2)
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * H(2 / 3, 1 / 3) + 4 / 3 * H(0.5, 0.5)) / 2)
    # a b c d: three distinct bigrams, two distinct trigrams
    assert ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("the the the the the") == 0.0  # degenerate repetition
    assert ngram_entropy("one") == 0.0  # no n-grams at all
    assert generation_entropy(["a b c d", "a a a a"]) == pytest.approx((2 / 3 * math.log2(3) + 4 / 3) / 4)


def test_registered_with_directions():
    for name in ("forget_efficacy", "forget_generalization", "specificity", "fluency",
                 "forget_efficacy_magnitude", "forget_generalization_magnitude", "specificity_magnitude"):
        assert METRICS[name].higher_is_better


def _mean_lp(model, tok, fmt, prompt, answer):
    ex = make_example(fmt, prompt, answer, "prompt", end=False)
    (lp,) = response_logprobs(model, [ex], tok.pad_token_id)
    return lp / sum(1 for x in ex.labels if x != -100)


def test_scores_match_independent_scoring(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    out = edit_scores(tiny_model, tok, CASES, fmt=fmt)
    lp = lambda p, a: _mean_lp(tiny_model, tok, fmt, p, a)  # noqa: E731
    eff = [float(lp(c.prompt, c.target_new) > lp(c.prompt, c.target_true)) for c in CASES]
    assert out["forget_efficacy"] == sum(eff) / 2
    gen = float(lp("The French capital is", "Lyon") > lp("The French capital is", "Paris"))
    assert out["forget_generalization"] == gen  # only the first case has a paraphrase
    spec = [
        float(lp("The capital of Germany is", "Berlin") > lp("The capital of Germany is", "Lyon")),
        (float(lp("The capital of Italy is", "Madrid") > lp("The capital of Italy is", "Osaka"))
         + float(lp("The capital of Japan is", "Madrid") > lp("The capital of Japan is", "Osaka"))) / 2,
    ]
    assert out["specificity"] == sum(spec) / 2  # per case first, then over cases
    mag = [math.exp(lp(c.prompt, c.target_new)) - math.exp(lp(c.prompt, c.target_true)) for c in CASES]
    assert out["forget_efficacy_magnitude"] == pytest.approx(sum(mag) / 2, abs=1e-6)
    assert (out["n_cases"], out["n_paraphrase_prompts"], out["n_neighborhood_prompts"]) == (2, 1, 3)
    one_by_one = edit_scores(tiny_model, tok, CASES, fmt=fmt, batch_size=1)
    assert one_by_one["forget_efficacy_magnitude"] == pytest.approx(out["forget_efficacy_magnitude"], abs=1e-6)


def test_memorised_model_keeps_its_facts(memorised_model, tok):
    out = edit_scores(memorised_model, tok, CASES[:1], fmt=PromptFormat(tok, "completion"))
    assert out["forget_efficacy"] == 0.0 and out["forget_generalization"] == 0.0  # still prefers Paris
    assert out["specificity"] == 1.0  # and Berlin over Lyon for Germany
    assert out["forget_efficacy_magnitude"] < -0.5 and out["specificity_magnitude"] > 0.5


def test_missing_prompt_kinds_give_none(tiny_model, tok):
    out = edit_scores(tiny_model, tok, [EditCase("The capital of France is", "Paris", "Lyon")])
    assert out["forget_efficacy"] in (0.0, 1.0)
    assert out["forget_generalization"] is None and out["specificity"] is None and out["specificity_magnitude"] is None
    with pytest.raises(LuneError, match="at least one case"):
        edit_scores(tiny_model, tok, [])


def test_case_from_fact():
    f = Fact(prompt="The capital of France is", answer="Paris", paraphrases=["The French capital is"], replacement="Lyon")
    c = EditCase.from_fact(f, ["The capital of Germany is"], "Berlin")
    assert c == CASES[0]
    with pytest.raises(LuneError, match="replacement"):
        EditCase.from_fact(Fact(prompt="The capital of Spain is", answer="Madrid"))


def test_fluency(tiny_model, tok):
    prefixes = ["The capital of France is", "Mona Lisa was painted by"]
    out = fluency(tiny_model, tok, prefixes, max_new_tokens=6)
    assert len(out["generations"]) == 2
    assert out["fluency"] == pytest.approx(generation_entropy([f"{p} {g}" for p, g in zip(prefixes, out["generations"])]))
    assert out["fluency"] > 0
    with pytest.raises(LuneError, match="at least one"):
        fluency(tiny_model, tok, [])


def test_fluency_renders_each_prefix_in_its_own_style(tiny_model, tok):
    seen = []

    class Recording(PromptFormat):
        def prompt_ids(self, text, style):
            seen.append((text, style))
            return super().prompt_ids(text, style)

    prefixes = ["The capital of France is", "Who painted the Mona Lisa?"]
    fluency(tiny_model, tok, prefixes, max_new_tokens=4, style=["prompt", "question"], fmt=Recording(tok))
    assert seen == [("The capital of France is", "prompt"), ("Who painted the Mona Lisa?", "question")]
    with pytest.raises(LuneError, match="2 prefixes but 1 styles"):
        fluency(tiny_model, tok, prefixes, style=["prompt"])


@dataclass
class OneLocalityCase:  # the EasyEdit CounterFact/zsRE schema: one rephrase, one locality prompt with its own answer
    prompt: str
    target_true: str
    target_new: str | None
    rephrase: str | None
    locality_prompt: str | None
    locality_answer: str | None
    style: str = "prompt"


def test_one_locality_schema_is_accepted(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    easy = OneLocalityCase("The capital of France is", "Paris", "Lyon", "The French capital is", "The capital of Germany is", "Berlin")
    assert as_edit_case(easy) == CASES[0]
    assert edit_scores(tiny_model, tok, [easy], fmt=fmt) == edit_scores(tiny_model, tok, CASES[:1], fmt=fmt)
    with pytest.raises(LuneError, match="needs target_new"):
        as_edit_case(OneLocalityCase("The capital of France is", "Paris", None, None, None, None))
