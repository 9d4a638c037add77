"""Anchors and subject-swapped neighbours: retain targets built from the model's own completions."""

from __future__ import annotations

import pytest

from lune.anchors import anchor_prompts, entity_pool, find_subject, neighbour_prompts, self_targets
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
    assert len(ex) == 1 and kept == [" Berlin ."]  # Italy's completion states the forget answer; Spain's is empty
    assert tok.decode([t for t in ex[0].labels if t != IGNORE]) == "Berlin ."
