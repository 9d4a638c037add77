"""Fine-tuning first (the TOFU protocol): a tiny model learns facts it did not know, and the result is cached."""

from __future__ import annotations

import torch

from conftest import greedy, save_model_dir
from lune.data import Fact, contains_answer
from lune.eval.finetune import FinetuneSettings, cached_finetune, finetune, finetune_key
from lune.models import load_model

FACTS = [Fact("The capital of Japan is", "Osaka"), Fact("The capital of Italy is", "Milan")]
FAST = FinetuneSettings(epochs=60, lr=1e-2, batch_size=2)


def test_finetune_teaches_the_facts(tiny_model, tok):
    assert not any(contains_answer(greedy(tiny_model, tok, f.prompt), f.answer) for f in FACTS)
    info = finetune(tiny_model, tok, FACTS, FAST)
    assert all(contains_answer(greedy(tiny_model, tok, f.prompt), f.answer) for f in FACTS)
    assert info["epochs"] == 60 and info["steps"] == 60 and info["history"][-1]["forget_nll"] < info["history"][0]["forget_nll"]
    assert not any(p.requires_grad for p in tiny_model.parameters())  # frozen again, like a loaded model


def test_cached_finetune_trains_once(tmp_path, monkeypatch, tiny_model, tok):
    monkeypatch.setenv("LUNE_CACHE", str(tmp_path / "cache"))
    base = str(save_model_dir(tiny_model, tok, tmp_path / "base"))
    path, info = cached_finetune(base, FACTS, FAST, name="t")
    assert not info["cached"] and (path / "finetune.json").is_file()
    again, info2 = cached_finetune(base, FACTS, FAST, name="t")
    assert again == path and info2["cached"] and info2["seconds"] == info["seconds"]
    model, tok2 = load_model(str(path))
    assert all(contains_answer(greedy(model, tok2, f.prompt), f.answer) for f in FACTS)
    # another fact set or setting is another model
    assert finetune_key(base, FACTS[:1], FAST) != finetune_key(base, FACTS, FAST)
    assert finetune_key(base, FACTS, FinetuneSettings(epochs=3)) != finetune_key(base, FACTS, FAST)
    assert not torch.equal(next(model.parameters()), next(load_model(base)[0].parameters()))
