"""Generation and scoring primitives, the metrics over them, and the markdown report."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import PAD
from lune.data import Fact, PromptFormat, make_example
from lune.eval.core import generate, response_logprobs
from lune.eval.metrics import METRICS, probes, repeats, score_probes, summarize
from lune.report import markdown

PROMPTS = ["The capital of France is", "Paris", "The biggest planet in our solar system is", "What is the capital"]


def test_generate_batching_does_not_change_greedy_output(tiny_model, tok):
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    batched = generate(tiny_model, tok, ids, max_new_tokens=5, batch_size=8)
    one_by_one = [generate(tiny_model, tok, [i], max_new_tokens=5)[0] for i in ids]
    in_pairs = generate(tiny_model, tok, ids, max_new_tokens=5, batch_size=2)
    assert batched == one_by_one == in_pairs
    assert len(set(batched)) > 1  # the outputs actually differ per prompt


def test_generate_matches_manual_greedy(tiny_model, tok):
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        x, new = torch.tensor([ids]), []
        with torch.no_grad():
            for _ in range(4):
                nxt = int(tiny_model(input_ids=x).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        assert generate(tiny_model, tok, [ids], max_new_tokens=4)[0] == tok.decode(new, skip_special_tokens=True)


def test_generate_groups_samples_per_prompt_in_input_order(tiny_model, tok):
    # prompts deliberately not sorted by length; near-zero temperature makes sampling greedy
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    greedy = generate(tiny_model, tok, ids, max_new_tokens=3)
    out = generate(tiny_model, tok, ids, max_new_tokens=3, do_sample=True, temperature=1e-4, num_return_sequences=3, batch_size=8)
    assert out == [g for g in greedy for _ in range(3)]
    assert len(set(greedy)) > 1


def test_generate_restores_training_mode(tiny_model, tok):
    tiny_model.train()
    generate(tiny_model, tok, [tok("The capital")["input_ids"]], max_new_tokens=2)
    assert tiny_model.training


def test_response_logprobs(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    exs = [make_example(fmt, "The capital of France is", "Paris", "prompt", end=False),
           make_example(fmt, "The biggest planet in our solar system is", "Jupiter Saturn", "prompt", end=False),
           make_example(fmt, "What", "Rome .", "prompt", end=False)]
    got = response_logprobs(tiny_model, exs, PAD, batch_size=2)
    for e, lp in zip(exs, got):
        x = torch.tensor([e.input_ids])
        with torch.no_grad():
            logp = F.log_softmax(tiny_model(input_ids=x).logits[0].float(), -1)
        expected = sum(float(logp[t - 1, e.input_ids[t]]) for t in range(len(e.labels)) if e.labels[t] != -100)
        assert lp == pytest.approx(expected, abs=1e-4)


def test_probes():
    facts = [Fact("p0", "a0", paraphrases=["q0", "r0"]), Fact("p1", "a1")]
    assert probes(facts) == [(0, "prompt", "p0"), (0, "paraphrase", "q0"), (0, "paraphrase", "r0"), (1, "prompt", "p1")]
    assert probes(facts, paraphrases=False) == [(0, "prompt", "p0"), (1, "prompt", "p1")]


def test_score_probes(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    ids = tok("The capital of France is")["input_ids"]
    said = generate(tiny_model, tok, [ids], max_new_tokens=4)[0]
    first_word = said.split()[0]
    facts = [Fact("The capital of France is", first_word, paraphrases=["The French capital is"]), Fact("The capital of France is", "Osaka")]
    rows = score_probes(tiny_model, tok, fmt, facts, max_new_tokens=4)
    assert [(r["fact"], r["kind"]) for r in rows] == [(0, "prompt"), (0, "paraphrase"), (1, "prompt")]
    assert rows[0]["completion"] == said and rows[0]["answered"] is True
    assert rows[2]["answered"] is ("Osaka" in said.split())
    assert all(r["answer_logprob"] < 0 for r in rows)


def _row(fact, kind, answered, lp=-1.0, completion=" Paris."):
    return {"fact": fact, "kind": kind, "answered": answered, "answer_logprob": lp, "completion": completion}


def test_summarize():
    before_f = [_row(0, "prompt", True), _row(0, "paraphrase", True), _row(1, "prompt", False), _row(1, "paraphrase", True)]
    before_r = [_row(0, "prompt", True), _row(1, "prompt", True)]
    b = summarize(before_f, before_r)
    assert b["usr"] == 0.5 and b["apr"] == 0.0 and b["retain_acc"] == 1.0
    assert b["forget_prob"] == pytest.approx(math.exp(-1.0))
    assert "gur" not in b and "usr_known" not in b
    after_f = [_row(0, "prompt", False, -5), _row(0, "paraphrase", True), _row(1, "prompt", False), _row(1, "paraphrase", False)]
    after_r = [_row(0, "prompt", True), _row(1, "prompt", False)]
    a = summarize(after_f, after_r, before={"forget_rows": before_f, "retain_rows": before_r})
    assert a["usr"] == 1.0 and a["apr"] == 0.5 and a["retain_acc"] == 0.5 and a["gur"] == 0.5
    assert a["usr_known"] == 1.0 and a["n_known_prompts"] == 1  # fact 1 was unknown before
    assert a["apr_known"] == 0.5 and a["n_known_paraphrases"] == 2
    assert a["forget_prob"] == pytest.approx((math.exp(-5) + math.exp(-1)) / 2)
    # no retain probes: retain metrics and gur are None rather than an error
    c = summarize(after_f, [], before={"forget_rows": before_f, "retain_rows": []})
    assert c["retain_acc"] is None and c["gur"] is None


def test_repeats_flags_looping_completions():
    assert repeats(" Krieg. Krieg. Krieg.") and repeats(" BronwijKS.\nBronwijKS") and repeats(" is in Lyon, is in Lyon")
    assert not repeats(" Paris.\n\nThe city of Paris is the capital")  # said again later is not a loop
    assert not repeats(" 1990, 1990") and not repeats(" Yiddish")  # numbers do not count
    rows = [_row(0, "prompt", False, completion=" Brest. Brest. Brest."), _row(0, "paraphrase", False, completion=" Lyon, a city. Lyon"),
            _row(1, "prompt", False, completion=" Lyon."), _row(1, "paraphrase", False, completion=" Nice, nice, NICE")]
    assert summarize(rows, [])["repeats"] == 0.5  # over prompts and paraphrases alike


def test_every_metric_has_a_direction():
    for k in ("usr", "apr", "retain_acc", "gur", "forget_prob", "retain_prob", "usr_known", "apr_known", "repeats"):
        assert k in METRICS
    assert METRICS["forget_prob"].higher_is_better is False and METRICS["usr"].higher_is_better is True


def test_markdown_report():
    rep = {
        "method": "lune", "model": "tiny", "directions": {k: "higher" for k in METRICS},
        "before": {"usr": 0.0, "n_forget_prompts": 1, "n_forget_paraphrases": 0, "n_retain_probes": 0},
        "after": {"usr": 1.0, "gur": None},
        "unknown_facts": ["f.jsonl:2"],
        "cost": {"wall_s": 1.5, "steps": 3},
        "facts": [{"prompt": "a|b", "answer": "Paris", "before": "Paris\n.", "after": "Lyon"}],
    }
    md = markdown(rep)
    assert md.startswith("# lune report: lune on tiny\n")
    assert "| usr | higher | 0.000 | 1.000 |" in md
    assert "| gur |" not in md  # None before and after: row omitted
    assert "f.jsonl:2" in md and "## Cost" in md and "| 1.500 | 3 |" in md
    assert "| a\\|b | Paris | Paris . | Lyon |" in md
    eval_only = markdown({"model": "tiny", "directions": {}, "before": {"usr": 0.5}})
    assert "# lune report: eval on tiny" in eval_only and "| usr |  | 0.500 |" in eval_only


def test_token_batches_respect_rows_and_token_budget():
    from lune.eval.core import token_batches

    lengths = [10, 500, 20, 300, 30, 600]
    batches = token_batches(lengths, batch_size=2, max_tokens=700)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) <= 2 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 700) for b in batches)
    assert batches[0] == [0, 2]  # shortest first
    assert token_batches([900], batch_size=4, max_tokens=100) == [[0]]  # a text longer than the budget still gets a batch
