"""Membership-inference attacks: exact scores on hand-made tensors, AUC conventions, the model-level run."""

from __future__ import annotations

import math
import random
import zlib

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from lune.data import Fact, PromptFormat, make_example
from lune.errors import LuneError
from lune.eval.core import response_logprobs, response_token_logprobs, vocab_logprob_moments
from lune.eval.metrics import METRICS
from lune.eval.mia import (
    ATTACKS,
    attack_auc,
    attack_scores,
    auc,
    loss_score,
    mia_auc,
    mia_figure,
    mia_scores,
    min_k_plus_plus_score,
    min_k_score,
    zlib_score,
)

LN2 = math.log(2)
MEMBERS = ["The capital of France is Paris .", "The capital of Spain is Madrid .", "The capital of Germany is Berlin ."]
NONMEMBERS = ["The capital of Japan is Osaka .", "Mona Lisa was painted by Leonardo da Vinci .", "The largest planet in our solar system is Jupiter ."]


def test_vocab_moments_by_hand():
    # p = (1/2, 1/4, 1/4): log p = (-ln2, -2ln2, -2ln2); mu = -1.5 ln2; E[(log p)^2] = 2.5 ln2^2; sigma = 0.5 ln2
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])) + 7.0  # a shift changes nothing
    mu, sigma = vocab_logprob_moments(logits)
    assert mu.tolist() == pytest.approx([-1.5 * LN2, -math.log(3)], abs=1e-6)
    assert sigma.tolist() == pytest.approx([0.5 * LN2, 0.0], abs=1e-3)  # uniform: every log p equals mu


def test_scores_by_hand():
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert loss_score(lp) == pytest.approx(3.0)
    assert len(zlib.compress(b"abc")) == 11
    assert zlib_score(lp, "abc") == pytest.approx(3.0 / 11)
    assert min_k_score(lp, 0.2) == pytest.approx(-5.0)  # floor(0.2 * 5) = 1 token
    assert min_k_score(lp, 0.4) == pytest.approx(-4.5)  # 2 tokens
    assert min_k_score(lp, 0.1) == pytest.approx(-5.0)  # floor(0.5) = 0 -> at least one token
    assert min_k_score(lp, 1.0) == pytest.approx(-3.0)
    mu, sigma = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 2.0, 0.5])
    z = [0.0, -0.5, -4.0]  # (lp - mu) / sigma
    assert min_k_plus_plus_score(lp[:3], mu, sigma, 0.5) == pytest.approx(min(z))
    assert min_k_plus_plus_score(lp[:3], mu, sigma, 1.0) == pytest.approx(sum(z) / 3)
    # a deterministic position (sigma = 0) where the token is the certain one scores 0, not NaN
    assert min_k_plus_plus_score(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0])) == 0.0


def test_attack_scores_from_logits_by_hand():
    # two positions of a 3-word vocabulary; targets are the likely then the unlikely word
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]]))
    targets = torch.tensor([[0, 1]])
    lp = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")[0]
    mu, sigma = vocab_logprob_moments(logits[0])
    s = attack_scores(torch.stack([lp, mu, sigma], -1), "xy", k=0.5)
    assert s["loss"] == pytest.approx(1.5 * LN2)  # (ln2 + 2 ln2) / 2
    assert s["zlib"] == pytest.approx(1.5 * LN2 / len(zlib.compress(b"xy")))
    assert s["min_k"] == pytest.approx(-2 * LN2)  # the one lowest of two tokens
    assert s["min_k_plus_plus"] == pytest.approx((-2 * LN2 + 1.5 * LN2) / (0.5 * LN2))  # = -1
    assert set(s) == set(ATTACKS)


def test_auc_by_hand_and_against_sklearn():
    assert auc([3.0, 4.0], [1.0, 2.0]) == 1.0  # members score higher: perfect
    assert auc([1.0, 2.0], [3.0, 4.0]) == 0.0  # reversed
    assert auc([1.0, 1.0], [1.0, 1.0]) == 0.5  # all tied
    assert auc([3.0, 1.0], [2.0, 0.0]) == 0.75  # 3 of the 4 (member, non-member) pairs ordered
    rng = random.Random(0)
    m, n = [rng.random() for _ in range(13)], [rng.random() for _ in range(9)]
    assert auc(m, n) == pytest.approx(roc_auc_score([1] * 13 + [0] * 9, m + n))
    # attack signs: members have a *lower* loss and a *higher* min-k
    assert attack_auc("loss", [1.0, 2.0], [3.0, 4.0]) == 1.0
    assert attack_auc("zlib", [1.0, 2.0], [3.0, 4.0]) == 1.0
    assert attack_auc("min_k", [-1.0, -2.0], [-3.0, -4.0]) == 1.0
    assert attack_auc("min_k_plus_plus", [-3.0, -4.0], [-1.0, -2.0]) == 0.0
    with pytest.raises(LuneError, match="members and non-members"):
        auc([], [1.0])


def test_mia_figure():
    assert mia_figure(0.5) == 0.0
    assert mia_figure(1.0) == 100.0
    assert mia_figure(0.0) == 100.0  # forget texts *less* likely than unseen text also give them away
    assert mia_figure(0.75) == pytest.approx(50.0)


def test_registered_with_directions():
    for name in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia"):
        assert name in METRICS and METRICS[name].higher_is_better is False


def test_scores_match_a_plain_forward_and_ignore_batching(tiny_model, tok):
    texts = MEMBERS + NONMEMBERS
    batched = mia_scores(tiny_model, tok, texts, batch_size=8)
    single = mia_scores(tiny_model, tok, texts, batch_size=1)
    in_pairs = mia_scores(tiny_model, tok, texts, batch_size=2)
    assert len(batched) == len(texts)
    for a, b, c in zip(batched, single, in_pairs):
        assert set(a) == set(ATTACKS)
        for key in ATTACKS:
            assert a[key] == pytest.approx(b[key], abs=1e-5)
            assert a[key] == pytest.approx(c[key], abs=1e-5)
    # the LOSS score is the mean NLL of tokens 2.. of the unpadded text
    for text, s in zip(texts, batched):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits
        nll = F.cross_entropy(logits[0, :-1], ids[0, 1:])
        assert s["loss"] == pytest.approx(float(nll), abs=1e-5)
        assert s["zlib"] == pytest.approx(float(nll) / len(zlib.compress(text.encode())), abs=1e-6)


def test_token_stats_agree_with_response_logprobs(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    exs = [make_example(fmt, "The capital of France is", a, "prompt", end=False) for a in ("Paris", "Lyon Marseille")]
    sums = response_logprobs(tiny_model, exs, tok.pad_token_id)
    plain = response_token_logprobs(tiny_model, exs, tok.pad_token_id)
    stats = response_token_logprobs(tiny_model, exs, tok.pad_token_id, moments=True)
    assert [t.shape for t in plain] == [(1,), (2,)] and [t.shape for t in stats] == [(1, 3), (2, 3)]
    for s, p, st in zip(sums, plain, stats):
        assert float(p.sum()) == pytest.approx(s, abs=1e-5)
        assert torch.allclose(st[:, 0], p)
        assert (st[:, 2] > 0).all()


def test_memorised_texts_are_recognised(memorised_model, tok):
    out = mia_auc(memorised_model, tok, MEMBERS, NONMEMBERS)
    assert out["n_members"] == 3 and out["n_nonmembers"] == 3
    assert len(out["scores"]["members"]) == 3 and len(out["scores"]["nonmembers"]) == 3
    for a in ATTACKS:
        assert out[f"mia_{a}"] == 1.0
    assert out["mia"] == 100.0


def test_facts_are_scored_on_their_answer(tiny_model, tok):
    fmt = PromptFormat(tok, "completion")
    fact = Fact(prompt="The capital of France is", answer="Paris Lyon")
    (s,) = mia_scores(tiny_model, tok, [fact], fmt=fmt)
    (lp,) = response_logprobs(tiny_model, [make_example(fmt, fact.prompt, fact.answer, "prompt", end=False)], tok.pad_token_id)
    assert s["loss"] == pytest.approx(-lp / 2, abs=1e-5)
    assert s["zlib"] == pytest.approx(-lp / 2 / len(zlib.compress(b"Paris Lyon")), abs=1e-6)


def test_bad_input_fails_clearly(tiny_model, tok):
    with pytest.raises(LuneError, match="at least 2 are needed"):
        mia_scores(tiny_model, tok, ["Paris"])
    with pytest.raises(LuneError, match="k must be in"):
        mia_scores(tiny_model, tok, MEMBERS, k=0.0)
    with pytest.raises(LuneError, match="members and non-members"):
        mia_auc(tiny_model, tok, MEMBERS, [])
