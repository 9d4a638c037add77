"""The memory model (lune.memory) against the tensors a real training step holds, on tiny Llamas."""

from __future__ import annotations

import pytest
import torch

from lune.config import LoraSettings
from lune.losses import masked_nll, response_logits
from lune.memory import Shape, activation_bytes, estimate, lora_params
from lune.models import attach_lora

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(tied: bool = False, layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def _saved_bytes(model, batch: int = 6, seq: int = 10, response: int = 4) -> int:
    """Bytes autograd saves for one loss (each storage once, parameters excluded)."""
    ids = torch.randint(3, 90, (batch, seq), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : seq - response] = -100
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        masked_nll(*response_logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}))
    return sum(saved.values())


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_matches_the_model(tied):
    model = _model(tied)
    assert Shape.from_config(model.config).params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("lora", [LoraSettings(), LoraSettings(layers="all", target_modules=ALL), LoraSettings(layers="1,3", r=4)])
def test_lora_parameter_count_matches_peft(lora):
    peft_model = attach_lora(_model(), lora)
    assert lora_params(Shape.from_config(peft_model.config), lora) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("regime,lora", [
    ("full", None),
    ("lora", LoraSettings()),  # FFN, lower half: every layer above the lowest adapter saves
    ("lora", LoraSettings(layers="upper")),  # nothing saved below layer 2
    ("lora", LoraSettings(layers="all", target_modules=ALL, lora_dropout=0.0)),
    ("lora", LoraSettings(layers="1-2", target_modules=["q_proj", "down_proj"])),
])
def test_saved_activations_match_the_model(regime, lora, dtype):
    batch, seq, response = 6, 10, 4
    model = _model().to(getattr(torch, dtype))
    if regime == "full":
        model.requires_grad_(True)
    else:
        model = attach_lora(model, lora)
    shape = Shape.from_config(model.config)
    est = estimate(shape, regime, dtype=dtype, lora=lora, batch=batch, seq=seq, logit_tokens=response)
    predicted = est.parts["activations"] + est.parts["logits"] // 2
    measured = _saved_bytes(model, batch, seq, response)
    assert measured == pytest.approx(predicted, rel=0.03), (measured, predicted)


def test_lora_below_the_lowest_adapter_saves_nothing():
    shape = Shape.from_config(_model().config)
    upper = activation_bytes(shape, "lora", LoraSettings(layers="upper"))
    lower = activation_bytes(shape, "lora", LoraSettings(layers="lower"))
    assert upper < lower < activation_bytes(shape, "full")


def test_parts_per_regime():
    shape = Shape.from_config(_model().config)
    n = shape.params()
    full = estimate(shape, "full", dtype="bfloat16")
    assert full.parts["weights"] == full.parts["gradients"] == 2 * n and full.parts["optimizer"] == 4 * n
    assert "reference" not in full.parts and estimate(shape, "full", reference=True).parts["reference"] == 4 * n
    lora = estimate(shape, "lora", dtype="bfloat16")
    assert lora.parts["adapters"] == 4 * lora.trainable_params  # adapters stay float32 on a bf16 model
    assert lora.parts["gradients"] == 4 * lora.trainable_params and lora.parts["optimizer"] == 8 * lora.trainable_params
    edit = estimate(shape, "edit", edit_layers=5)
    assert edit.parts["statistics"] == 5 * 2 * shape.intermediate**2 * 8
    with pytest.raises(ValueError, match="regime"):
        estimate(shape, "qlora")


def test_checkpointing_keeps_one_layer_of_activations():
    shape = Shape.from_config(_model(layers=8).config)
    for regime in ("lora", "full"):
        plain = estimate(shape, regime, batch=4, seq=16).parts["activations"]
        ckpt = estimate(shape, regime, batch=4, seq=16, checkpointing=True).parts["activations"]
        assert ckpt < plain / 2
