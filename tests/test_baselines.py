"""Every registered method through lune.unlearn on a tiny memorised model: the same run directory
and report, trainable weights change and frozen ones do not, and the forget metric moves."""

from __future__ import annotations

import json

import pytest
import torch

import lune
from conftest import FORGET_RECORDS, RETAIN_RECORDS, base_state
from lune.methods import METHODS
from lune.models import load_adapter
from test_unlearn import COST_KEYS, facts, logits, small_config

LOSS_METHODS = sorted(n for n, c in METHODS.items() if c.kind == "loss")
FULL_VARIANTS = ["ga", "graddiff", "npo", "simnpo"]


def _config(name: str, full: bool = False, **train):
    cfg = small_config(method=name)
    cfg.train.full = full
    cfg.train.lr = 1e-3 if (full or METHODS[name].always_full) else 1e-2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.mark.parametrize("name,full", [(n, False) for n in LOSS_METHODS] + [(n, True) for n in FULL_VARIANTS])
def test_every_loss_method_unlearns(name, full, memorised_model, tok):
    state = base_state(memorised_model)
    report = lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), config=_config(name, full),
                          model=memorised_model, tokenizer=tok)
    b, a = report["before"], report["after"]
    assert report["method"] == name and report["citation"]
    assert a["forget_prob"] < 0.5 * b["forget_prob"], (name, b["forget_prob"], a["forget_prob"])
    assert a["usr"] > b["usr"]
    assert COST_KEYS - {"negatives"} <= set(report["cost"])
    # the caller's model is handed back exactly as it came
    assert all(torch.equal(v, base_state(memorised_model)[k]) for k, v in state.items())
    assert "peft_model" not in report and "full_model" not in report  # the caller's model in: only the report out
    trainable, total = report["cost"]["trainable_params"], report["cost"]["total_params"]
    if full or METHODS[name].always_full:
        assert trainable == total
    else:
        assert 0 < trainable < total


@pytest.mark.parametrize("name,full", [("lune", False), ("npo", False), ("lune-full", False), ("graddiff", True)])
def test_run_directory_per_method(name, full, fact_files, model_dir, tmp_path, memorised_model):
    cfg = _config(name, full, anchors=4)
    cfg.run.model = str(model_dir)
    out = tmp_path / "run"
    report = lune.unlearn(fact_files[0], fact_files[1], out=out, config=cfg)
    is_full = full or METHODS[name].always_full
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "report.json", "report.md"} <= files
    assert ("model" in files) == is_full and ("adapter" in files) == (not is_full)
    assert ("negatives.jsonl" in files) == (METHODS[name].targets == "negatives")
    conf = json.loads((out / "config.json").read_text())
    assert conf["run"]["method"] == name and conf["train"]["full"] == full and conf["train"]["lr"] == cfg.train.lr
    saved = json.loads((out / "report.json").read_text())
    assert saved["after"]["forget_prob"] < saved["before"]["forget_prob"]
    tuned = report["full_model" if is_full else "peft_model"]
    if is_full:  # the saved full model reproduces the trained one and differs from the base
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(out / "model").eval()
        assert torch.allclose(logits(reloaded), logits(tuned), atol=1e-5)
        assert not torch.allclose(logits(reloaded), logits(memorised_model), atol=1e-3)
    else:  # the adapter reloads onto the untouched base
        assert torch.allclose(logits(load_adapter(memorised_model, out)), logits(tuned), atol=1e-5)


def test_answer_methods_train_on_the_answers(memorised_model, tok, monkeypatch):
    seen = {}

    def fake_train(model, method, forget, retain, cfg, pad_id, suppressed=None):
        seen["forget"], seen["retain"] = forget, retain
        from lune.train import TrainResult

        return TrainResult()

    monkeypatch.setattr(lune.api, "train", fake_train)
    cfg = _config("npo", anchors=3)
    lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), config=cfg, model=memorised_model, tokenizer=tok)
    answers = [tok.decode([t for t in e.labels if t != -100]).strip() for e in seen["forget"]]
    assert answers == ["Paris", "Paris", "Madrid"]  # prompt, paraphrase, prompt: the true answers, once each
    # reference log-probs computed once, from the original model, and negative (log-probs)
    assert all(e.ref_logp is not None and e.ref_logp < 0 for e in seen["forget"])
    assert [e.fact for e in seen["retain"][:2]] == [0, 1]  # the retain facts (fit_retain), then any anchors
    # plain GA has no retain term: no retain examples are built at all
    lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), config=_config("ga", anchors=3), model=memorised_model, tokenizer=tok)
    assert seen["retain"] == [] and all(e.ref_logp is None for e in seen["forget"])


def test_full_training_with_kl_uses_the_callers_model_as_reference(memorised_model, tok):
    state = base_state(memorised_model)
    report = lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"),
                          config=_config("graddiff", True, kl_weight=1.0), model=memorised_model, tokenizer=tok)
    assert "retain_kl" in report["training"]["history"][0]
    assert report["cost"]["train_flops"] > 0
    assert all(torch.equal(v, base_state(memorised_model)[k]) for k, v in state.items())


@pytest.mark.parametrize("name", ["rome", "memit"])
def test_edit_methods_through_unlearn(name, fact_files, model_dir, tmp_path, memorised_model):
    """ROME/MEMIT write the same run directory and report; the edit is an adapter on the untouched base."""
    cfg = small_config(method=name)
    cfg.run.model = str(model_dir)
    cfg.method = {"stats_corpus": "identity", "n_prefixes": 1, "prefix_len": 2, "v_steps": 5}
    out = tmp_path / "run"
    report = lune.unlearn(fact_files[0], fact_files[1], out=out, config=cfg)
    assert {p.name for p in out.iterdir()} == {"adapter", "negatives.jsonl", "config.json", "report.json", "report.md"}
    saved = json.loads((out / "report.json").read_text())
    assert saved["method"] == name and saved["cost"]["steps"] > 0 and saved["cost"]["trainable_params"] > 0
    hist = saved["training"]["history"][0]
    assert hist["rank"] == 2 and hist["subjects"] == ["France", "Spain"]
    conf = json.loads((out / "config.json").read_text())
    assert conf["method"]["stats_corpus"] == "identity"
    tuned = report["peft_model"]
    assert torch.allclose(logits(load_adapter(memorised_model, out)), logits(tuned), atol=1e-5)
    # the edit targets are the negatives (the replacement first): Lyon for France
    negs = [json.loads(line) for line in (out / "negatives.jsonl").read_text().splitlines()]
    assert negs[0]["negative"] == "Lyon"


def test_edit_method_needs_a_subject(memorised_model, tok):
    from lune.errors import LuneError

    cfg = small_config(method="rome")
    cfg.method = {"stats_corpus": "identity"}
    with pytest.raises(LuneError, match="subject"):
        lune.unlearn(facts([{"prompt": "the capital of a city is", "answer": "Paris"}]), config=cfg, model=memorised_model, tokenizer=tok)
    assert not hasattr(memorised_model, "peft_config")
