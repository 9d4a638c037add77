"""Every registered loss method: a finite loss whose gradient reaches the trainable parameters only;
each loss against a naive re-implementation."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import PAD
from lune.config import LoraSettings, TrainSettings
from lune.data import PromptFormat, collate, make_example
from lune.errors import LuneError
from lune.methods import METHODS, Method, get_method, register
from lune.methods.lune import adapter_disabled
from lune.models import attach_lora


LOSS_METHODS = sorted(n for n, c in METHODS.items() if c.kind == "loss")


def _batches(tok):
    fmt = PromptFormat(tok, "completion")
    f_ex = [make_example(fmt, "The capital of France is", "Lyon .", "prompt"),
            make_example(fmt, "The French capital is", "not what is commonly claimed .", "prompt")]
    for e, lp in zip(f_ex, (-3.5, -12.0)):
        e.ref_logp = lp
    forget = collate(f_ex, PAD)
    retain = collate([make_example(fmt, "The capital of Germany is", "Berlin", "prompt"),
                      make_example(fmt, "The capital of Italy is", "Rome", "prompt")], PAD)
    return forget, retain


def _peft(tiny_model, randomize_b=True):
    torch.manual_seed(0)
    model = attach_lora(tiny_model, LoraSettings(r=4, lora_dropout=0.0))
    if randomize_b:  # B = 0 at init would leave A's gradient exactly zero
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05)
    return model


def test_registry_is_populated():
    assert {"lune", "lune-full", "ga", "graddiff", "npo", "simnpo"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name and cls.citation
        assert cls.kind in ("loss", "edit") and cls.targets in ("negatives", "answers")
        cls.Settings()  # defaults validate


@pytest.mark.parametrize("name", LOSS_METHODS)
@pytest.mark.parametrize("with_retain", [False, True])
def test_method_loss_finite_and_grads_on_trainable_only(name, with_retain, tiny_model, tok):
    model = _peft(tiny_model)
    model.train()
    forget, retain = _batches(tok)
    method = get_method(name, TrainSettings(retain_weight=1.0, kl_weight=0.5))
    loss, logs = method.loss(model, forget, retain if with_retain else None)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values()), logs
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"no gradient reaches {n}"
    for n, p in frozen:
        assert p.grad is None, f"frozen {n} got a gradient"


def test_lune_loss_terms(tiny_model, tok):
    from lune.losses import masked_nll, response_logits

    model = _peft(tiny_model)
    forget, retain = _batches(tok)
    with torch.no_grad():
        f_nll = masked_nll(*response_logits(model, forget))
        r_nll = masked_nll(*response_logits(model, retain))
        # forget-only: the loss is the NLL of the negatives
        loss, logs = get_method("lune", TrainSettings()).loss(model, forget, None)
        assert torch.allclose(loss, f_nll) and set(logs) == {"forget_nll"}
        # retain NLL weighted in; no KL term when kl_weight == 0
        loss, logs = get_method("lune", TrainSettings(retain_weight=0.5)).loss(model, forget, retain)
        assert torch.allclose(loss, f_nll + 0.5 * r_nll) and set(logs) == {"forget_nll", "retain_nll"}
        # both retain terms off: retain batch ignored
        loss, logs = get_method("lune", TrainSettings(retain_weight=0.0)).loss(model, forget, retain)
        assert torch.allclose(loss, f_nll) and set(logs) == {"forget_nll"}
        # KL to the adapter-disabled model: > 0 with a non-zero adapter...
        _, logs = get_method("lune", TrainSettings(retain_weight=0.0, kl_weight=1.0)).loss(model, forget, retain)
        assert logs["retain_kl"] > 0
    # ... and exactly 0 for a fresh (no-op) adapter: the reference really is the base model
    fresh = _peft(type(tiny_model)(tiny_model.config).eval(), randomize_b=False)
    with torch.no_grad():
        _, logs = get_method("lune", TrainSettings(retain_weight=0.0, kl_weight=1.0)).loss(fresh, forget, retain)
    assert logs["retain_kl"] == pytest.approx(0.0, abs=1e-7)


def test_adapter_disabled_context(tiny_model):
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        base = tiny_model(input_ids=x).logits
        with adapter_disabled(tiny_model):  # plain model: a no-op context
            assert torch.equal(tiny_model(input_ids=x).logits, base)
        model = _peft(tiny_model)
        assert not torch.allclose(model(input_ids=x).logits, base)
        with adapter_disabled(model):
            assert torch.equal(model(input_ids=x).logits, base)
        assert not torch.allclose(model(input_ids=x).logits, base)  # re-enabled afterwards


def test_get_unknown_method():
    with pytest.raises(LuneError, match="available: .*lune"):
        get_method("nope", TrainSettings())


def test_register_new_method(monkeypatch):
    monkeypatch.setattr("lune.methods.base.METHODS", dict(METHODS))
    from lune.methods import base

    @register("dummy")
    class Dummy(Method):
        citation = "none"

    assert base.METHODS["dummy"] is Dummy and Dummy.name == "dummy"
    assert isinstance(get_method("dummy", TrainSettings()), Dummy)


def _seq_logp(model, batch):
    """Naive per-example summed log p(response | prompt): one sequence at a time, full logits."""
    out = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i, :n], batch["labels"][i, :n]
        logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].float(), -1)
        out.append(sum(logp[t - 1, labels[t]] for t in range(1, n) if labels[t] != -100))
    return torch.stack(out)


def test_npo_loss_matches_naive_reference(tiny_model, tok):
    model = _peft(tiny_model)
    forget, retain = _batches(tok)
    with torch.no_grad():
        with adapter_disabled(model):  # the real reference: the original model
            forget["ref_logp"] = _seq_logp(model, forget)
        logp = _seq_logp(model, forget)
        for beta in (0.1, 1.0):
            naive = (-2 / beta * torch.nn.functional.logsigmoid(-beta * (logp - forget["ref_logp"]))).mean()
            loss, logs = get_method("npo", TrainSettings(retain_weight=0.0), {"beta": beta}).loss(model, forget, None)
            assert torch.allclose(loss, naive, atol=1e-5), (loss, naive)
        # with the retain NLL (NPO+RT)
        from lune.losses import masked_nll, response_logits
        loss, logs = get_method("npo", TrainSettings(retain_weight=2.0)).loss(model, forget, retain)
        naive = (-2 / 0.1 * torch.nn.functional.logsigmoid(-0.1 * (logp - forget["ref_logp"]))).mean()
        assert torch.allclose(loss, naive + 2.0 * masked_nll(*response_logits(model, retain)), atol=1e-5)
    # at the start of training (model == reference) the NPO loss is (2/beta) log 2 whatever the data
    fresh = _peft(type(tiny_model)(tiny_model.config).eval(), randomize_b=False)
    with torch.no_grad():
        forget["ref_logp"] = _seq_logp(fresh, forget)
        loss, _ = get_method("npo", TrainSettings(retain_weight=0.0)).loss(fresh, forget, None)
    assert loss.item() == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)


def test_simnpo_and_ga_losses_match_naive(tiny_model, tok):
    model = _peft(tiny_model)
    forget, _ = _batches(tok)
    lengths = (forget["labels"] != -100).sum(1).float()
    with torch.no_grad():
        logp = _seq_logp(model, forget)
        for beta, gamma in ((4.5, 0.0), (2.5, 1.0)):
            naive = (-2 / beta * torch.nn.functional.logsigmoid(-beta / lengths * logp - gamma)).mean()
            loss, _ = get_method("simnpo", TrainSettings(retain_weight=0.0), {"beta": beta, "gamma": gamma}).loss(model, forget, None)
            assert torch.allclose(loss, naive, atol=1e-5)
        # GA: minus the token-level NLL of the answers
        loss, logs = get_method("ga", TrainSettings()).loss(model, forget, None)
        assert torch.allclose(loss, logp.sum() / lengths.sum(), atol=1e-5) and logs["forget_nll"] > 0


def test_method_settings_validated():
    with pytest.raises(LuneError, match="npo.*beta must be > 0"):
        get_method("npo", TrainSettings(), {"beta": 0})
    with pytest.raises(LuneError, match="simnpo.*unknown field"):
        get_method("simnpo", TrainSettings(), {"bogus": 1})
    with pytest.raises(LuneError, match="lune.*unknown field"):
        get_method("lune", TrainSettings(), {"beta": 1})


def test_learning_rate_defaults():
    assert get_method("lune", TrainSettings()).lr == 1e-3
    assert get_method("lune-full", TrainSettings()).lr == 1e-5
    assert get_method("npo", TrainSettings(full=True)).lr == 1e-5
    assert get_method("npo", TrainSettings(full=True, lr=3e-4)).lr == 3e-4
    assert get_method("ga", TrainSettings()).full is False and get_method("lune-full", TrainSettings()).full


@pytest.mark.parametrize("name, full, protect, patience", [
    ("lune", False, 0.8, 10),  # protected adapters, which learn the forgetting about half as fast: longer patience
    ("lune-full", False, 0.0, 5),  # no adapters to protect
    ("lune", True, 0.0, 5),
    ("npo", False, 0.0, 5),  # the baselines keep plain LoRA, as published
    ("ga", False, 0.0, 5),
    ("rome", False, 0.0, 5),
])
def test_method_defaults_are_resolved_and_explicit_settings_kept(name, full, protect, patience):
    from lune.config import UnlearnConfig

    cfg = UnlearnConfig()
    cfg.train.full = full
    method = get_method(name, cfg.train)
    used = method.resolve(cfg)
    assert (used.lora.protect, used.train.patience) == (protect, patience)
    assert cfg.lora.protect is None and cfg.train.patience is None and cfg.train.lr is None  # the caller's config is untouched
    if method.kind == "loss":
        assert used.train.lr == method.lr
    cfg.lora.protect, cfg.train.patience = 0.5, 3
    assert (method.resolve(cfg).lora.protect, method.resolve(cfg).train.patience) == (0.5, 3)
    cfg.lora.protect, cfg.train.patience = 0.8, None
    assert method.resolve(cfg).train.patience == (5 if method.full or method.kind != "loss" else 10)
