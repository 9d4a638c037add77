"""The pure tensor functions behind every loss and metric."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import PAD
from lune.data import IGNORE, PromptFormat, collate, make_example
from lune.losses import kl_to_ref, masked_nll, response_logits, sequence_logprob, token_logprobs


def _targets():
    # row 0: prompt, prompt, response x2, padding; row 1: prompt, response x4
    return torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 5, 6, 7, 8]])


def test_masked_nll_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    t = _targets()
    on = t != IGNORE
    expected = F.cross_entropy(logits[on], t[on])  # mean over the 6 response tokens
    assert torch.allclose(masked_nll(logits, t), expected, atol=1e-6)


def test_masked_nll_ignores_prompt_and_padding_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    t = _targets()
    changed = logits.clone()
    changed[t == IGNORE] = torch.randn_like(changed[t == IGNORE]) * 100
    assert torch.equal(masked_nll(logits, t), masked_nll(changed, t))
    changed[0, 2, 0] += 5.0  # a response position does count
    assert not torch.equal(masked_nll(logits, t), masked_nll(changed, t))


def test_masked_nll_per_token_not_per_sequence():
    # a 1-token and a 3-token response: token-level averaging weights the longer one 3x
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 1] = 10.0  # row 0's single target is very likely
    t = torch.tensor([[1, IGNORE, IGNORE], [2, 2, 2]])
    lp0 = F.log_softmax(logits[0, 0], -1)[1]
    lp1 = F.log_softmax(logits[1, 0], -1)[2]
    assert torch.allclose(masked_nll(logits, t), -(lp0 + 3 * lp1) / 4)


def test_masked_nll_all_ignored_is_zero_not_nan():
    out = masked_nll(torch.randn(1, 3, 4), torch.full((1, 3), IGNORE))
    assert out.item() == 0.0


def test_sequence_logprob_is_sum_of_token_logprobs():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 11)
    t = _targets()
    lsm = F.log_softmax(logits, -1)
    expected = torch.stack([sum(lsm[b, i, t[b, i]] for i in range(5) if t[b, i] != IGNORE) for b in range(2)])
    assert torch.allclose(sequence_logprob(logits, t), expected, atol=1e-5)
    lp, mask = token_logprobs(logits, t)
    assert torch.equal(mask, t != IGNORE) and (lp[~mask] == 0).all()


def test_token_logprobs_float32_from_half_logits():
    logits = torch.randn(1, 3, 7).to(torch.bfloat16)
    lp, _ = token_logprobs(logits, torch.tensor([[1, 2, IGNORE]]))
    assert lp.dtype == torch.float32


def test_kl_to_ref():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 11)
    t = _targets()
    assert kl_to_ref(logits, logits.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    other = logits + torch.randn_like(logits)
    kl = kl_to_ref(logits, other, t)
    assert kl.item() > 0
    # direction: KL(p_ref || p_model), averaged over response tokens
    on = t != IGNORE
    p_ref = F.softmax(other[on], -1)
    expected = (p_ref * (F.log_softmax(other[on], -1) - F.log_softmax(logits[on], -1))).sum(-1).mean()
    assert torch.allclose(kl, expected, atol=1e-5)
    # differences at prompt/padding positions do not count
    shifted = other.clone()
    shifted[~on] = logits[~on]
    assert torch.allclose(kl_to_ref(logits, shifted, t), kl, atol=1e-6)


def _batch(tok):
    fmt = PromptFormat(tok, "completion")
    exs = [
        make_example(fmt, "The capital of France is", "Lyon .", "prompt"),
        make_example(fmt, "The biggest planet in our solar system is", "Jupiter", "prompt"),
        make_example(fmt, "The capital of the French city that serves as a capital is", "Paris Lyon Berlin", "prompt"),
    ]
    return collate(exs, PAD), exs


def test_response_logits_are_the_full_logits_at_each_rows_response(tiny_model, tok):
    batch, exs = _batch(tok)
    with torch.no_grad():
        logits, targets = response_logits(tiny_model, batch)
        full = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    spans = [[t for t in e.labels if t != IGNORE] for e in exs]
    L = max(len(sp) for sp in spans)
    assert logits.shape == (3, L, full.shape[-1])  # the head ran on B x the longest response only
    assert L < batch["input_ids"].shape[1] // 2
    for b, (e, sp) in enumerate(zip(exs, spans)):
        first = next(i for i, t in enumerate(e.labels) if t != IGNORE)
        n = len(sp)
        assert torch.allclose(logits[b, :n], full[b, first - 1 : first - 1 + n], atol=1e-5, rtol=0)
        assert targets[b, :n].tolist() == sp
        assert (targets[b, n:] == IGNORE).all()  # padding after the row's response


def test_response_logits_through_the_models_own_forward_agree(tiny_model, tok, monkeypatch):
    """Models whose forward transforms the head's output take the logits_to_keep path: same contract."""
    batch, _ = _batch(tok)
    with torch.no_grad():
        fast = response_logits(tiny_model, batch)
        monkeypatch.setattr(tiny_model.config, "final_logit_softcapping", 30.0, raising=False)
        own = response_logits(tiny_model, batch)
    assert torch.equal(fast[1], own[1])
    assert torch.allclose(fast[0], own[0], atol=1e-5, rtol=0)


def test_response_logits_loss_equals_naive_shifted_loss(tiny_model, tok):
    batch, _ = _batch(tok)
    with torch.no_grad():
        fast = masked_nll(*response_logits(tiny_model, batch))
        full = tiny_model(**batch).logits  # transformers shifts labels itself
        naive = F.cross_entropy(full[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE)
    assert torch.allclose(fast, naive, atol=1e-5)


def test_response_logits_gradient_flows(tiny_model, tok):
    batch, _ = _batch(tok)
    w = tiny_model.lm_head.weight
    w.requires_grad_(True)
    masked_nll(*response_logits(tiny_model, batch)).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
