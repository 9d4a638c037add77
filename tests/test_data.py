"""Fact files, answer matching, and the prompt/response tokenisation behind every loss."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import EOS, PAD, write_jsonl
from lune.data import IGNORE, PromptFormat, collate, contains_answer, make_example, normalize, read_facts
from lune.errors import LuneError


# ---------------------------------------------------------------- read_facts


def test_read_prompt_style_facts(tmp_path):
    p = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "  The capital of France is ", "answer": " Paris ", "paraphrases": ["The French capital is"], "replacement": "Lyon", "subject": "France"},
        "",  # blank lines are skipped but still counted
        {"prompt": "The capital of Spain is", "answer": "Madrid"},
    ])
    facts = read_facts(p)
    assert [f.prompt for f in facts] == ["The capital of France is", "The capital of Spain is"]
    f0, f1 = facts
    assert (f0.answer, f0.style, f0.paraphrases, f0.replacement, f0.subject) == ("Paris", "prompt", ["The French capital is"], "Lyon", "France")
    assert (f1.paraphrases, f1.replacement, f1.subject) == ([], None, None)
    assert f0.source == f"{p}:1" and f1.source == f"{p}:3"


def test_read_question_style_facts(tmp_path):
    p = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is the capital of France?", "answer": "Paris"}])
    (f,) = read_facts(p)
    assert (f.style, f.prompt, f.answer) == ("question", "What is the capital of France?", "Paris")
    assert f.to_record() == {"question": "What is the capital of France?", "answer": "Paris"}


def test_record_round_trip(tmp_path):
    recs = [{"prompt": "The capital of France is", "answer": "Paris", "paraphrases": ["The French capital is"], "replacement": "Lyon", "subject": "France"}]
    (f,) = read_facts(write_jsonl(tmp_path / "f.jsonl", recs))
    assert f.to_record() == recs[0]


def test_missing_file_names_role_and_path(tmp_path):
    with pytest.raises(LuneError, match=r"retain file not found: .*nope\.jsonl"):
        read_facts(tmp_path / "nope.jsonl", role="retain")


@pytest.mark.parametrize(
    "bad_line, detail",
    [
        ('{"prompt": "The capital of France is", "answer": ', "malformed JSON"),
        ('["The capital of France is", "Paris"]', "expected a JSON object"),
        ('{"prompt": "The capital of France is"}', "missing field 'answer'"),
        ('{"prompt": "The capital of France is", "answer": null}', "missing field 'answer'"),
        ('{"prompt": "The capital of France is", "answer": "   "}', "field 'answer' must be a non-empty string"),
        ('{"prompt": "The capital of France is", "answer": 3}', "field 'answer' must be a non-empty string"),
        ('{"answer": "Paris"}', "missing field 'prompt'"),
        ('{"prompt": "", "answer": "Paris"}', "field 'prompt' must be a non-empty string"),
        ('{"prompt": "The capital of France is", "question": "What is the capital of France?", "answer": "Paris"}', "either 'prompt' or 'question'"),
        ('{"prompt": "The capital of France is", "answer": "Paris", "paraphrases": "The French capital is"}', "'paraphrases' must be a list"),
        ('{"prompt": "The capital of France is", "answer": "Paris", "paraphrases": ["ok", ""]}', "'paraphrases' must be a list"),
        ('{"prompt": "The capital of France is", "answer": "Paris", "replacement": ""}', "field 'replacement'"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, bad_line, detail):
    good = json.dumps({"prompt": "The capital of Spain is", "answer": "Madrid"})
    p = tmp_path / "facts.jsonl"
    p.write_text(f"{good}\n\n{bad_line}\n{good}\n", encoding="utf-8")
    with pytest.raises(LuneError) as e:
        read_facts(p)
    msg = str(e.value)
    assert f"{p}:3:" in msg, msg
    assert detail in msg, msg


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "empty.jsonl"
    p.write_text(content)
    with pytest.raises(LuneError, match="contains no facts") as e:
        read_facts(p)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------- answer matching


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        ("Paris.", "Paris", True),
        ("paris", "PARIS", True),
        ("  the city of   PARIS, France", "Paris", True),
        ("Pàris!", "Paris", True),
        ("Paris", "Pâris", True),
        ("São Paulo is big", "Sao Paulo", True),
        ("Leonardo  da\nVinci painted it", "Leonardo da Vinci", True),
        ("Leonardo-da-Vinci", "Leonardo da Vinci", True),
        ("Parisian", "Paris", False),
        ("Lyon", "Paris", False),
        ("da Vinci", "Leonardo da Vinci", False),
        ("1945", "194", False),
        ("in 1945.", "1945", True),
        ("anything", "...", False),  # an answer that normalises to nothing matches nothing
        ("", "Paris", False),
    ],
)
def test_contains_answer(text, answer, expected):
    assert contains_answer(text, answer) is expected


def test_normalize():
    assert normalize("  Héllo,   WORLD!\n") == "hello world"
    assert normalize("Île-de-France") == "ile de france"
    assert normalize("...") == ""


# ---------------------------------------------------------------- tokenisation


def test_prompt_format_completion(tok):
    fmt = PromptFormat(tok, "completion")
    p = fmt.prompt_ids("The capital of France is", "prompt")
    assert tok.convert_ids_to_tokens(p) == ["The", "capital", "of", "France", "is"]
    assert tok.convert_ids_to_tokens(fmt.response_ids("Paris", "prompt")) == ["Paris"]
    assert tok.convert_ids_to_tokens(fmt.response_ids("  Paris .", "prompt")) == ["Paris", "."]
    # completion responses never get an end token
    assert EOS not in fmt.response_ids("Paris", "prompt", end=True)
    # ... unless asked to stop there (negatives with --stop)
    assert fmt.response_ids("Lyon .", "prompt", stop=True) == fmt.response_ids("Lyon .", "prompt") + [EOS]
    assert make_example(fmt, "The capital of France is", "Lyon .", "prompt", stop=True).labels[-1] == EOS
    q = fmt.prompt_ids("What is the capital of France?", "question")
    assert tok.convert_ids_to_tokens(q)[:2] == ["Question", ":"] and tok.convert_ids_to_tokens(q)[-2:] == ["Answer", ":"]


def test_prompt_format_auto_without_chat_template(tok):
    fmt = PromptFormat(tok, "auto")
    assert not fmt.has_chat and not fmt.is_chat("question") and not fmt.is_chat("prompt")
    assert fmt.prompt_text("What is it?", "question") == "Question: What is it?\nAnswer:"
    assert fmt.prompt_text("The capital of France is", "prompt") == "The capital of France is"


def test_prompt_format_chat_requires_template(tok):
    with pytest.raises(LuneError, match="no chat template"):
        PromptFormat(tok, "chat")


def test_prompt_format_chat_with_template(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %} Answer :{% endif %}"
    fmt = PromptFormat(t, "auto")
    assert fmt.is_chat("question") and not fmt.is_chat("prompt")
    assert t.convert_ids_to_tokens(fmt.prompt_ids("What is the capital of France?", "question"))[-2:] == ["Answer", ":"]
    r = fmt.response_ids("Paris", "question")
    assert r[-1] == t.eos_token_id and t.convert_ids_to_tokens(r[:-1]) == ["Paris"]
    assert EOS not in fmt.response_ids("Paris", "question", end=False)


def test_make_example_masks_exactly_the_prompt(tok):
    fmt = PromptFormat(tok, "completion")
    p = fmt.prompt_ids("The capital of France is", "prompt")
    r = fmt.response_ids("Lyon .", "prompt")
    ex = make_example(fmt, "The capital of France is", "Lyon .", "prompt", fact=3)
    assert ex.input_ids == p + r
    assert ex.labels == [IGNORE] * len(p) + r
    assert ex.fact == 3
    assert [i for i, l in enumerate(ex.labels) if l == IGNORE] == list(range(len(p)))


def test_make_example_truncates_prompt_from_the_left(tok):
    fmt = PromptFormat(tok, "completion")
    ex = make_example(fmt, "The capital of France is", "Lyon", "prompt", max_length=3)
    assert tok.convert_ids_to_tokens(ex.input_ids) == ["France", "is", "Lyon"]
    assert ex.labels[:2] == [IGNORE, IGNORE] and ex.labels[2] == tok.convert_tokens_to_ids("Lyon")


def test_make_example_rejects_empty_response(tok):
    fmt = PromptFormat(tok, "completion")
    with pytest.raises(LuneError, match="empty response"):
        make_example(fmt, "The capital of France is", "   ", "prompt")


def test_collate_right_pads(tok):
    fmt = PromptFormat(tok, "completion")
    exs = [
        make_example(fmt, "The capital of France is", "Lyon", "prompt"),
        make_example(fmt, "The capital is", "Paris .", "prompt"),
        make_example(fmt, "The capital of the French city is", "Lyon", "prompt"),
    ]
    b = collate(exs, pad_id=PAD)
    T = max(len(e.input_ids) for e in exs)
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    for k in b:
        assert b[k].shape == (3, T) and b[k].dtype == torch.long
    for i, e in enumerate(exs):
        n = len(e.input_ids)
        assert b["input_ids"][i, :n].tolist() == e.input_ids
        assert b["labels"][i, :n].tolist() == e.labels
        assert b["attention_mask"][i, :n].tolist() == [1] * n
        assert (b["input_ids"][i, n:] == PAD).all()
        assert (b["labels"][i, n:] == IGNORE).all()
        assert (b["attention_mask"][i, n:] == 0).all()
    assert (b["attention_mask"] == 0).any()  # there was padding to check
