"""Anchors and subject-swapped neighbours: retain targets built from the model's own completions."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import VOCAB
from lune.anchors import anchor_prompts, entity_pool, find_subject, neighbour_prompts, self_targets, swapped_prompts
from lune.data import IGNORE, Fact, PromptFormat


@pytest.mark.parametrize(
    "prompt, subject, expected",
    [
        ("The capital of France is", None, "France"),
        ("The Mona Lisa was painted by", None, "Mona Lisa"),
        ("Harry Potter was written by J.K.", None, "Harry Potter"),
        ("The first man to walk on the moon was", None, None),
        ("BBC One, by", "BBC One", "BBC One"),
        ("The Declaration of Independence was signed in", None, "Declaration of Independence"),
        ("Vinson Massif is located in", "Everest", "Vinson Massif"),  # a given subject absent from the prompt is ignored
    ],
)
def test_find_subject(prompt, subject, expected):
    assert find_subject(prompt, subject) == expected


def test_anchor_prompts_are_loaded_without_comments():
    prompts = anchor_prompts()
    assert len(prompts) > 100 and not any(p.startswith("#") for p in prompts)
    assert anchor_prompts(5) == prompts[:5]
    assert "France" not in entity_pool() and "Poland" in entity_pool()


def test_neighbours_swap_the_subject_and_are_seeded():
    facts = [Fact(prompt="The capital of France is", answer="Paris", paraphrases=["The French capital is"]),
             Fact(prompt="The first man to walk on the moon was", answer="Neil Armstrong")]
    a = neighbour_prompts(facts, per_prompt=4, seed=3)
    assert a == neighbour_prompts(facts, per_prompt=4, seed=3)
    assert len(a) == 8  # 4 per prompt with a subject; none for the subject-less prompt
    assert all("France" not in p and "French" not in p for p, _ in a)
    assert sum(p.startswith("The capital of ") and p.endswith(" is") for p, _ in a) == 4
    assert all(style == "prompt" for _, style in a)
    assert neighbour_prompts(facts, per_prompt=0) == []


def test_self_targets_keep_the_models_completion_and_drop_forget_answers(monkeypatch, tiny_model, tok):
    import lune.anchors as A

    outs = {"The capital of Germany is": " Berlin .", "The capital of Italy is": " Paris .", "The capital of Spain is": " "}
    monkeypatch.setattr(A, "generate", lambda model, tok, ids, **kw: [outs[tok.decode(i)] for i in ids])
    fmt = PromptFormat(tok, "completion")
    prompts = [(p, "prompt") for p in outs]
    ex, kept = self_targets(tiny_model, tok, fmt, prompts, [Fact(prompt="The capital of France is", answer="Paris")])
    assert len(ex) == 1 and kept == [("The capital of Germany is", " Berlin .")]  # Italy's completion states the forget answer; Spain's is empty
    assert tok.decode([t for t in ex[0].labels if t != IGNORE]) == "Berlin ."


def test_next_token_logits_do_not_depend_on_left_padding(tiny_model, tok):
    from lune.eval.core import next_token_logits

    prompts = [tok("The capital of France is")["input_ids"], tok("The")["input_ids"], tok("Mona Lisa was painted by")["input_ids"]]
    batched = next_token_logits(tiny_model, tok, prompts, batch_size=3)
    for ids, row in zip(prompts, batched):
        alone = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-4)


def _fake_logits(tok, table):
    """next_token_logits stand-in: for a prefix text in ``table``, put the given probabilities on the given words."""

    def fake(model, tok_, prompts, batch_size=32):
        rows = []
        for ids in prompts:
            row = torch.full((len(VOCAB),), -1e4)
            for word, p in table.get(tok.decode(ids), {}).items():
                row[VOCAB.index(word)] = math.log(p)
            rows.append(row)
        return rows

    return fake


def test_swapped_prompts_replace_one_content_word_with_the_models_likely_words(monkeypatch, tiny_model, tok):
    import lune.anchors as A

    table = {
        "The capital of": {"Spain": 0.4, "the": 0.3, "France": 0.1, "Germany": 0.15, "Italy": 0.005},  # the: lowercase; Italy: too rare
        "The": {"Mona": 0.9},  # the second word is never swapped
        "The capital": {"city": 0.5, "of": 0.4},
    }
    monkeypatch.setattr(A, "next_token_logits", _fake_logits(tok, table))
    facts = [Fact(prompt="The capital of France is", answer="Paris")]
    out = swapped_prompts(tiny_model, tok, facts, per_prompt=8)
    assert [p for p, _ in out] == ["The capital of Spain is", "The capital of Germany is"]
    assert swapped_prompts(tiny_model, tok, facts, per_prompt=1) == [("The capital of Spain is", "prompt")]
    assert swapped_prompts(tiny_model, tok, facts, per_prompt=0) == []


def test_swapped_prompts_take_positions_round_robin_and_keep_the_style(monkeypatch, tiny_model, tok):
    import lune.anchors as A

    table = {
        "The Mona": {"Lisa": 0.9},
        "The Mona Lisa was": {"painted": 0.9},
        "The Mona Lisa was painted": {"by": 0.9},
        "What is the largest": {"city": 0.6, "solar": 0.3},
        "What is the largest planet in our solar": {"system": 0.9},
        "What is the largest planet in our": {"city": 0.5, "solar": 0.4},
        "What is the": {"biggest": 0.7, "capital": 0.2},
    }
    monkeypatch.setattr(A, "next_token_logits", _fake_logits(tok, table))
    facts = [Fact(prompt="What is the largest planet in our solar system ?", answer="Jupiter", style="question")]
    out = swapped_prompts(tiny_model, tok, facts, per_prompt=3)
    # rank 1 at every position first (largest->biggest, planet->city, solar->city), then rank 2
    assert [p for p, _ in out] == [
        "What is the biggest planet in our solar system ?",
        "What is the largest city in our solar system ?",
        "What is the largest planet in our city system ?",
    ]
    assert all(style == "question" for _, style in out)
