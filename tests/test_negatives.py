"""Negative targets: cleaning, filtering, balancing, and the negatives.jsonl file."""

from __future__ import annotations

import json

import pytest

import lune.negatives as N
from conftest import write_jsonl
from lune.config import NegativeSettings
from lune.data import Fact, PromptFormat, contains_answer, make_example
from lune.errors import LuneError
from lune.eval.core import response_logprobs
from lune.negatives import (
    CONTRADICTIONS, REFUSALS, Negative, build_negatives, clean_span, rank_alternatives, read_negatives, valid_negative,
    write_negatives,
)


def _fact(prompt="The capital of France is", answer="Paris", **kw):
    return Fact(prompt=prompt, answer=answer, source="forget.jsonl:1", **kw)


@pytest.mark.parametrize("cand", ["Paris", "paris.", "PARIS", "Pâris", "the city of Paris", "Parisian", "  ", "...", ""])
def test_valid_negative_rejects_answer_leaks_and_empty(cand):
    assert not valid_negative(cand, "Paris", "alternative")
    assert not valid_negative(cand, "Paris", "contradiction")


@pytest.mark.parametrize("cand", ["maybe Lyon", "Perhaps Lyon.", "I think Lyon", "probably Berlin", "I don't know", "it's unknown"])
def test_valid_negative_rejects_hedged_alternatives(cand):
    assert not valid_negative(cand, "Paris", "alternative")
    assert valid_negative(cand, "Paris", "refusal")  # hedging is fine outside alternatives


@pytest.mark.parametrize("cand", ["Lyon", "Lyon.", "Berlin the capital"])
def test_valid_negative_accepts(cand):
    assert valid_negative(cand, "Paris", "alternative")


def test_builtin_contradictions_and_refusals_are_valid():
    for style in ("completion", "chat"):
        for c in CONTRADICTIONS[style]:
            assert valid_negative(c, "Paris", "contradiction")
        for r in REFUSALS[style]:
            assert valid_negative(r, "Paris", "refusal")


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        (" Lyon. It is big", "Paris", "Lyon."),
        ("Lyon, the city", "Paris", "Lyon."),
        ("Lyon; or", "Paris", "Lyon."),
        ("Lyon and Marseille", "Paris", "Lyon."),
        ("Lyon\nMarseille", "Paris", "Lyon."),
        ("Lyon (France)", "Paris", "Lyon."),
        ("the big old city of Lyon", "Paris", "the big."),  # at most answer words + 1
        (" Frank Drake from Oregon", "Neil Armstrong", "Frank Drake."),  # a name answers a name
        (" Leonardo da Vinci painted it", "Michelangelo", "Leonardo."),  # no trailing particle
        ("Leonardo da Vinci was", "Michelangelo Buonarroti", "Leonardo da Vinci."),
        ("   ", "Paris", ""),
        (". nothing", "Paris", ""),
    ],
)
def test_clean_span_completion(text, answer, expected):
    assert clean_span(text, answer, chat=False) == expected


def test_clean_span_chat_keeps_first_sentence():
    assert clean_span("It is Lyon. Lyon is big.", "Paris", chat=True) == "It is Lyon."
    assert clean_span(" ".join(["word"] * 25), "Paris", chat=True) == ""


def test_rank_alternatives_frequency_shape_and_dedup():
    samples = ["berlin.", "Marseille.", "berlin.", "berlin.", "Lyon.", "lyon.", "Lyon.", "Paris.", "maybe Rome.", ""]
    # valid, distinct (after normalisation), most frequent first; spans shaped like the answer
    # (capitalised like 'Paris') win over the more frequent lower-case one
    ranked = rank_alternatives(samples, "Paris")
    assert ranked[:2] == ["Lyon.", "Marseille."]
    assert all(r not in ranked for r in ("lyon.", "Paris.", "maybe Rome.", ""))
    assert ranked.index("Lyon.") < ranked.index("Marseille.")
    numeric = rank_alternatives(["1944.", "Lyon.", "1946.", "1946."], "1945")
    assert numeric[:2] == ["1946.", "1944."]
    # with no shape match at all, plain frequency order is kept
    assert rank_alternatives(["berlin.", "lyon.", "berlin."], "Paris") == ["berlin.", "lyon."]


def test_rank_alternatives_drops_function_word_spans():
    # "The." was sampled twice for the capital of France and became the answer to other capitals
    assert rank_alternatives(["The.", "The.", "It is.", "London.", "The Hague."], "Paris") == ["London.", "The Hague."]
    # unless the answer is itself made of function words
    assert rank_alternatives(["two.", "one.", "one."], "three") == ["one.", "two."]


def _fake_generate(texts_per_prompt):
    calls = []

    def fake(model, tok, ids, max_new_tokens=16, batch_size=32, do_sample=False, temperature=1.0, num_return_sequences=1, desc=None):
        calls.append({"n": len(ids), "k": num_return_sequences, "do_sample": do_sample, "max_new_tokens": max_new_tokens})
        out = []
        for i in range(len(ids)):
            t = texts_per_prompt[i % len(texts_per_prompt)]
            out += [t[j % len(t)] for j in range(num_return_sequences)]
        return out

    return fake, calls


def test_build_negatives_on_tiny_model(tiny_model, tok):
    facts = [_fact(), _fact("The capital of Spain is", "Madrid"), _fact("The capital of Germany is", "Berlin")]
    cfg = NegativeSettings(per_fact=3, num_samples=6, sample_tokens=4)
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), facts, cfg, seed=0)
    assert len(negs) == 3 * 3
    for i, f in enumerate(facts):
        mine = [n for n in negs if n.fact == i]
        assert len(mine) == 3
        for n in mine:
            assert (n.prompt, n.answer) == (f.prompt, f.answer)
            assert n.kind in ("alternative", "contradiction")
            assert n.negative.strip()
            assert not contains_answer(n.negative, f.answer)


def test_build_negatives_is_seeded(tiny_model, tok):
    facts = [_fact(), _fact("The capital of Spain is", "Madrid")]
    cfg = NegativeSettings(per_fact=4, num_samples=8, sample_tokens=3)
    fmt = PromptFormat(tok, "completion")
    a = build_negatives(tiny_model, tok, fmt, facts, cfg, seed=1)
    b = build_negatives(tiny_model, tok, fmt, facts, cfg, seed=1)
    assert a == b


def test_contradiction_fallback_when_all_samples_leak(monkeypatch, tiny_model, tok):
    fake, calls = _fake_generate([[" Paris.", " paris is nice", " maybe Lyon", " PARIS!"]])
    monkeypatch.setattr(N, "generate", fake)
    cfg = NegativeSettings(per_fact=5, num_samples=4)
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [_fact()], cfg)
    assert calls and calls[0]["do_sample"] and calls[0]["k"] == 4
    assert len(negs) == 5
    assert {n.kind for n in negs} == {"contradiction"}
    assert [n.negative for n in negs] == [CONTRADICTIONS["completion"][j % 3].strip() for j in range(5)]


def test_replacement_comes_first(monkeypatch, tiny_model, tok):
    fake, _ = _fake_generate([[" Marseille.", " Lyon, of course", " Paris.", " Marseille and Lyon"]])
    monkeypatch.setattr(N, "generate", fake)
    cfg = NegativeSettings(per_fact=4, num_samples=4, kinds=["alternative", "contradiction"])
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [_fact(replacement="Lyon")], cfg)
    assert [(n.negative, n.kind) for n in negs] == [
        ("Lyon", "alternative"),          # the user's replacement first
        ("Marseille.", "alternative"),    # then samples (the 'Lyon' sample is a duplicate of it)
        (CONTRADICTIONS["completion"][0].strip(), "contradiction"),
        (CONTRADICTIONS["completion"][1].strip(), "contradiction"),
    ]


def test_leaking_replacement_is_dropped(monkeypatch, tiny_model, tok):
    fake, _ = _fake_generate([[" Paris."]])
    monkeypatch.setattr(N, "generate", fake)
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [_fact(replacement="Paris, France")], NegativeSettings(per_fact=2, num_samples=2))
    assert all(n.kind == "contradiction" for n in negs)


def test_contradiction_only_does_not_sample(monkeypatch, tiny_model, tok):
    def boom(*a, **k):
        raise AssertionError("sampling should not run without 'alternative'")

    monkeypatch.setattr(N, "generate", boom)
    cfg = NegativeSettings(per_fact=2, kinds=["contradiction", "refusal"])
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [_fact(), _fact("The capital of Spain is", "Madrid")], cfg)
    assert len(negs) == 4
    assert [n.kind for n in negs] == ["contradiction", "contradiction"] * 2


def test_refusal_kind(monkeypatch, tiny_model, tok):
    cfg = NegativeSettings(per_fact=2, kinds=["refusal"])
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [_fact()], cfg)
    assert [(n.negative, n.kind) for n in negs] == [(REFUSALS["completion"][0].strip(), "refusal")] * 2


def test_sampled_alternatives_are_per_fact(monkeypatch, tiny_model, tok):
    # generate returns num_samples completions per prompt, in prompt order
    fake, _ = _fake_generate([[" Lyon."], [" Barcelona."]])
    monkeypatch.setattr(N, "generate", fake)
    facts = [_fact(), _fact("The capital of Spain is", "Madrid")]
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), facts, NegativeSettings(per_fact=1, num_samples=3))
    assert [(n.fact, n.negative) for n in negs] == [(0, "Lyon."), (1, "Barcelona.")]


def test_unbuildable_negative_raises(monkeypatch, tiny_model, tok):
    # an answer that every contradiction contains leaves nothing to train on
    assert all(contains_answer(c, "what") for c in CONTRADICTIONS["completion"])
    fact = _fact(answer="what")
    with pytest.raises(LuneError, match="forget.jsonl:1"):
        build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [fact], NegativeSettings(kinds=["contradiction"]))


# ---------------------------------------------------------------- negatives.jsonl


def _facts():
    return [_fact(), _fact("The capital of Spain is", "Madrid")]


def test_write_read_round_trip(tmp_path):
    negs = [Negative(0, "The capital of France is", "Paris", "Lyon.", "alternative"),
            Negative(1, "The capital of Spain is", "Madrid", "Barcelona.", "alternative"),
            Negative(1, "The capital of Spain is", "Madrid", "unknown to me.", "refusal")]
    p = tmp_path / "negatives.jsonl"
    write_negatives(negs, p)
    assert [json.loads(line)["negative"] for line in p.read_text().splitlines()] == ["Lyon.", "Barcelona.", "unknown to me."]
    assert read_negatives(p, _facts()) == negs


def test_read_negatives_hand_written_minimal(tmp_path):
    p = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "The capital of Spain is", "negative": " Barcelona "}, ""])
    (n,) = read_negatives(p, _facts())
    assert (n.fact, n.answer, n.negative, n.kind) == (1, "Madrid", "Barcelona", "alternative")


@pytest.mark.parametrize(
    "line, detail",
    [
        ({"prompt": "The capital of France is", "negative": "It is PARIS."}, "contains the true answer"),
        ({"prompt": "The capital of Japan is", "negative": "Osaka"}, "is not a fact of the forget file"),
        ({"prompt": "The capital of France is"}, "missing or empty field 'negative'"),
        ({"prompt": "The capital of France is", "negative": "  "}, "missing or empty field 'negative'"),
        ({"negative": "Lyon"}, "missing or empty field 'prompt'"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": ', "malformed JSON"),
    ],
)
def test_read_negatives_errors_name_file_and_line(tmp_path, line, detail):
    ok = {"prompt": "The capital of France is", "negative": "Lyon"}
    p = write_jsonl(tmp_path / "negatives.jsonl", [ok, line if isinstance(line, str) else json.dumps(line)])
    with pytest.raises(LuneError) as e:
        read_negatives(p, _facts())
    assert f"{p}:2:" in str(e.value) and detail in str(e.value), str(e.value)


def test_read_negatives_missing_and_empty(tmp_path):
    with pytest.raises(LuneError, match="negatives file not found"):
        read_negatives(tmp_path / "nope.jsonl", _facts())
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LuneError, match="contains no negatives"):
        read_negatives(tmp_path / "empty.jsonl", _facts())


def test_alternatives_that_answer_kept_facts_are_avoided(monkeypatch, tiny_model, tok):
    fake, _ = _fake_generate([[" Berlin.", " Berlin.", " Lyon.", " Rome."]])
    monkeypatch.setattr(N, "generate", fake)
    cfg = NegativeSettings(per_fact=2, num_samples=4)
    fmt = PromptFormat(tok, "completion")
    negs = build_negatives(tiny_model, tok, fmt, [_fact()], cfg, avoid={"berlin"})
    assert [n.negative for n in negs] == ["Lyon.", "Rome."]


def test_answer_sites_cut_continuations_just_before_the_answer(tok, monkeypatch):
    facts = [_fact(), _fact("The capital of Spain is", "Madrid"), Fact(prompt="What is the capital of Peru?", answer="Lima", style="question")]
    by_fact = {0: ["Lyon.", "Nice."], 1: ["Seville."], 2: ["Cusco."]}
    outs = {  # per prefix, the sampled continuations
        "The capital of France is": [" Paris, of course.", " the city of Paris.", " the city of Paris.", " known as(Paris)", " the Parisian capital"],
        "The capital of France is Lyon.": [" The capital of France is Paris.", " Lyon is big."],
        "The capital of France is Nice.": [" It is PARIS, says the atlas."],
        "The capital of Spain is": [" Spain's capital: Madrid."],
        "The capital of Spain is Seville.": [" No.", " " + " ".join(["and"] * 13) + " Madrid"],  # too far out
    }
    calls = []

    def fake_generate(model, tok_, ids, num_return_sequences=1, **kw):
        calls.append(ids)  # one prefix per entry of outs, in order: each prompt, then it followed by its first two negatives
        return [t for p in outs for t in (outs[p] + [" nothing"] * num_return_sequences)[:num_return_sequences]]

    class ChatFormat:  # questions go through a chat template; prompts stay text
        def is_chat(self, style):
            return style == "question"

        def prompt_ids(self, text, style):
            return [text]

    monkeypatch.setattr(N, "generate", fake_generate)
    sites = N.answer_sites(None, tok, ChatFormat(), facts, by_fact, per_fact=3, samples=5)
    # the question fact samples nothing (a site would sit inside the assistant's reply)
    assert calls[0] == [[p] for p in outs]
    assert sites == [  # not "... and and ... Madrid": 13 words out
        (0, "The capital of France is the city of", "Lyon."),  # plain prompt: negatives in turn; duplicates once
        (0, "The capital of France is Lyon. The capital of France is", "Lyon."),  # after a negative: that negative
        (0, "The capital of France is Nice. It is", "Nice."),  # case-insensitive
        (1, "The capital of Spain is Spain's capital:", "Seville."),
    ]
    # an answer at the very start (the prompt itself), glued to other text ("as(Paris)") or inside a word
    # ("Parisian") makes no site: exactly the four above
    assert N.answer_sites(None, tok, ChatFormat(), facts, by_fact, per_fact=0) == []
    one = N.answer_sites(None, tok, ChatFormat(), facts, by_fact, per_fact=1, samples=5)
    assert [i for i, _, _ in one] == [0, 1]


def test_key_terms_of_sentence_answers():
    answer = "The author born in Kuwait City on 08/09/1956 is Basil Mahfouz Al-Kuwaiti, a writer of French literature."
    terms = N.key_terms(answer, "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?")
    assert terms == {"basil", "mahfouz", "al kuwaiti", "french"}  # not the prompt's words, not function words
    assert N.leaks_key_terms("Her name is AL-KUWAITI.", terms) and N.leaks_key_terms("Basil.", terms)
    assert not N.leaks_key_terms("Her name is Basilia Frenchman.", terms)  # whole words only
    assert N.key_terms("Paris", "The capital of France is") == set()  # a short answer is checked whole


def test_sampled_spans_that_restate_part_of_a_sentence_answer_are_dropped(monkeypatch, tiny_model, tok):
    fact = _fact("The novel Blue Harbour was written by", "Basil Mahfouz Al-Kuwaiti in 1990")
    fake, _ = _fake_generate([[" Basil Mahfouz.", " Omar Haddad.", " Al-Kuwaiti.", " Omar Haddad."]])
    monkeypatch.setattr(N, "generate", fake)
    negs = build_negatives(tiny_model, tok, PromptFormat(tok, "completion"), [fact], NegativeSettings(per_fact=2, num_samples=4))
    assert [n.negative for n in negs] == ["Omar Haddad."] * 2  # none contains the whole answer, two name part of it


def test_rank_by_probability_orders_alternatives_by_the_models_log_prob(monkeypatch, tiny_model, tok):
    fake, _ = _fake_generate([[" Lyon.", " Lyon.", " Nice.", " Rome.", " Brest."]])
    monkeypatch.setattr(N, "generate", fake)
    fmt = PromptFormat(tok, "completion")
    by_count = build_negatives(tiny_model, tok, fmt, [_fact()], NegativeSettings(per_fact=4, num_samples=5))
    assert [n.negative for n in by_count] == ["Lyon.", "Nice.", "Rome.", "Brest."]  # most sampled first, then draw order
    cfg = NegativeSettings(per_fact=3, num_samples=5, rank="probability")
    negs = build_negatives(tiny_model, tok, fmt, [_fact()], cfg)
    # the real scores of the tiny model decide the order: the chosen spans are the three most probable
    ex = [make_example(fmt, "The capital of France is", s, "prompt", end=False) for s in ["Lyon.", "Nice.", "Rome.", "Brest."]]
    lps = dict(zip(["Lyon.", "Nice.", "Rome.", "Brest."], response_logprobs(tiny_model, ex, tok.pad_token_id)))
    assert [n.negative for n in negs] == sorted(lps, key=lambda s: -lps[s])[:3]
    # and a score that is forced shows it is the score, not the count, that orders them
    monkeypatch.setattr(N, "response_logprobs", lambda m, exs, pad, batch_size=32: [-9.0, -1.0, -5.0, -3.0][: len(exs)])
    assert [n.negative for n in build_negatives(tiny_model, tok, fmt, [_fact()], cfg)] == ["Nice.", "Brest.", "Rome."]


def test_rank_mixed_alternates_most_probable_and_most_sampled(monkeypatch, tiny_model, tok):
    assert N.alternate(["a", "b", "c", "d"], ["d", "a", "c", "b"]) == ["a", "d", "b", "c"]
    fake, _ = _fake_generate([[" Lyon.", " Lyon.", " Nice.", " Rome.", " Brest."]])
    monkeypatch.setattr(N, "generate", fake)
    monkeypatch.setattr(N, "response_logprobs", lambda m, exs, pad, batch_size=32: [-9.0, -1.0, -5.0, -3.0][: len(exs)])
    fmt = PromptFormat(tok, "completion")
    negs = build_negatives(tiny_model, tok, fmt, [_fact()], NegativeSettings(per_fact=4, num_samples=5, rank="mixed"))
    # by probability: Nice, Brest, Rome, Lyon; by count: Lyon, Nice, Rome, Brest
    assert [n.negative for n in negs] == ["Nice.", "Lyon.", "Brest.", "Rome."]


def test_rank_must_be_known():
    with pytest.raises(ValueError, match="rank must be one of"):
        NegativeSettings(rank="alphabetical")


def test_distinct_alternatives_never_serve_two_facts():
    ranked = [["German.", "Italian.", "Polish."], ["German.", "Czech.", "Italian."], ["German.", "Italian."]]
    out = N.distinct_alternatives(ranked, per_fact=2)
    assert out[0] == ["German.", "Italian.", "Polish."]
    assert out[1] == ["Czech."]  # German and Italian are the first fact's two
    assert out[2] == ["German.", "Italian."]  # all taken: the fact keeps its own rather than none


def test_distinct_setting_reaches_build_negatives(monkeypatch, tiny_model, tok):
    fake, _ = _fake_generate([[" Lyon.", " Nice."], [" Lyon.", " Porto."]])
    monkeypatch.setattr(N, "generate", fake)
    fmt = PromptFormat(tok, "completion")
    facts = [_fact(), _fact("The capital of Spain is", "Madrid")]
    plain = build_negatives(tiny_model, tok, fmt, facts, NegativeSettings(per_fact=1, num_samples=2))
    assert [n.negative for n in plain] == ["Lyon.", "Lyon."]
    negs = build_negatives(tiny_model, tok, fmt, facts, NegativeSettings(per_fact=1, num_samples=2, distinct=True))
    assert [n.negative for n in negs] == ["Lyon.", "Porto."]
