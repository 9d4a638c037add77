"""Protected adapters (--protect): LoRA that cannot read what the retain examples use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.parametrize as P
from safetensors.torch import load_file

import lune
from conftest import FORGET_RECORDS, RETAIN_RECORDS
from lune.config import LoraSettings, PAPER_TARGETS
from lune.data import PromptFormat, collate, make_example
from lune.models import _lora_layers, attach_lora, protect_adapters, release_adapters
from test_unlearn import facts, small_config


def _examples(tok, pairs):
    fmt = PromptFormat(tok, "completion")
    return [make_example(fmt, p, a, "prompt") for p, a in pairs]


def _logits(model, examples, pad):
    """Logits at the examples' real (not padding) positions."""
    b = collate(examples, pad)
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return out[b["attention_mask"].bool()]


def _randomise_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in _lora_layers(model).values():
        w = m.lora_B["default"].weight
        w.data = torch.randn(w.shape, generator=g) * 0.1


def test_protected_inputs_are_left_alone(tiny_model, tok):
    keep = _examples(tok, [("The capital of Germany is", "Berlin"), ("The capital of Italy is", "Rome")])
    other = _examples(tok, [("Mona Lisa was painted by", "Leonardo da Vinci")])
    model = attach_lora(tiny_model, LoraSettings(target_modules=list(PAPER_TARGETS), layers="all"))
    model.eval()
    base_keep, base_other = _logits(model, keep, tok.pad_token_id), _logits(model, other, tok.pad_token_id)
    info = protect_adapters(model, keep, tok.pad_token_id, share=1 - 1e-12)  # every direction they use
    assert info["min"] >= 1 and info["max"] < max(info["input_widths"])
    _randomise_b(model)  # an adapter that has learnt something
    moved_keep = (_logits(model, keep, tok.pad_token_id) - base_keep).abs().max().item()
    moved_other = (_logits(model, other, tok.pad_token_id) - base_other).abs().max().item()
    assert moved_other > 0.01
    assert moved_keep < 1e-3 * moved_other  # float32 rounding, amplified layer to layer


def test_release_folds_the_projection_into_a_plain_adapter(tiny_model, tok, tmp_path):
    from peft import PeftModel

    from conftest import make_model

    keep = _examples(tok, [("The capital of Germany is", "Berlin")])
    model = attach_lora(tiny_model, LoraSettings(target_modules=list(PAPER_TARGETS), layers="all")).eval()
    protect_adapters(model, keep, tok.pad_token_id, share=0.9)
    _randomise_b(model)
    for m in _lora_layers(model).values():  # A as trained: some weight in every direction
        m.lora_A["default"].parametrizations.weight.original.data.normal_()
    x = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=x).logits
    release_adapters(model)
    assert not any(P.is_parametrized(m.lora_A["default"]) for m in _lora_layers(model).values())
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, before, atol=1e-5)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(make_model(), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, before, atol=1e-5)


def test_unlearn_with_protection_still_forgets_and_saves_plain_lora(memorised_model, tok, tmp_path):
    cfg = small_config()
    cfg.lora.protect = 0.9
    report = lune.unlearn(facts(FORGET_RECORDS), facts(RETAIN_RECORDS, "retain.jsonl"), out=tmp_path / "run", config=cfg,
                          model=memorised_model, tokenizer=tok)
    assert report["after"]["usr"] == 1.0
    assert report["training"]["protected"]["directions_removed_mean"] >= 1
    names = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors").keys()
    assert names and not any("parametrizations" in n for n in names)


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_protect_share_is_checked(share):
    with pytest.raises(ValueError, match="protect"):
        LoraSettings(protect=share)
