"""ROME and MEMIT (lune.methods.rome / memit, lune.editing): the edit lives in a LoRA-format adapter.

All offline and fast: the tiny 2-layer Llama (and a tiny GPT-2) from conftest, explicit layers,
"identity" or a few-line text file as key statistics (one test samples a few "self" tokens).

In a 2-layer model a fact reaches the answer position through attention reading the subject's
*embedding*, not the subject's MLP output, so no edit at the subject token can overturn "The
capital of France is -> Paris" (measured: the best delta leaves NLL(Lyon) ~ 10). The prediction
tests therefore memorise prompts that end in their subject ("The capital of France" -> "Paris"),
where the MLP output at the subject is on the answer's path.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import base_state, greedy, make_model, memorise

from lune import editing
from lune.config import TrainSettings
from lune.data import Fact, PromptFormat, contains_answer
from lune.errors import LuneError
from lune.methods import METHODS, get_method

SUBJECT_LAST = [(f"The capital of {c}", a) for c, a in
                [("France", "Paris"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Japan", "Tokyo")]]
FRANCE = Fact("The capital of France is", "Paris", subject="France", source="forget.jsonl:1")
GERMANY = Fact("The capital of Germany is", "Berlin", source="forget.jsonl:2")  # subject found: "Germany"


def run(name, model, tok, facts, targets, tmp_path=None, **opts):
    opts.setdefault("stats_corpus", "identity")
    method = get_method(name, TrainSettings(), opts)
    return method.edit(model, tok, PromptFormat(tok), facts, targets, cache_dir=tmp_path)


def rank(d: torch.Tensor) -> int:
    """Numerical rank of a merged-minus-original difference (float32 rounding of W + dW is noise, not rank)."""
    return int(torch.linalg.matrix_rank(d.double(), rtol=1e-5))


def merged_diff(peft_model, orig: dict) -> dict[str, torch.Tensor]:
    """Parameters whose merged value differs from ``orig``, with the difference."""
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert set(merged) == set(orig)
    return {k: merged[k] - orig[k] for k in orig if not torch.equal(merged[k], orig[k])}


@pytest.fixture(scope="module")
def _subject_last(tok):
    return memorise(make_model(), tok, SUBJECT_LAST)


@pytest.fixture
def subject_last_model(_subject_last):
    return copy.deepcopy(_subject_last)


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import EOS, PAD, VOCAB

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(VOCAB), n_layer=2, n_embd=32, n_head=4, n_positions=128,
                     bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    model = GPT2LMHeadModel(cfg).eval()
    model.requires_grad_(False)
    return model


def test_registered_as_edits():
    assert METHODS["rome"].kind == "edit" and METHODS["memit"].kind == "edit"
    assert not METHODS["rome"].uses_retain and "Meng" in METHODS["memit"].citation


def test_rome_is_one_rank_one_update_in_one_module(tiny_model, tok):
    orig = base_state(tiny_model)
    peft_model, info = run("rome", tiny_model, tok, [FRANCE], ["Lyon"], layer=0)
    assert all(torch.equal(orig[k], v) for k, v in base_state(peft_model).items())
    diff = merged_diff(peft_model, orig)
    assert list(diff) == ["model.layers.0.mlp.down_proj.weight"]
    assert rank(diff["model.layers.0.mlp.down_proj.weight"]) == 1
    assert info["steps"] > 0 and info["train_tokens"] > 0
    assert info["trainable_params"] == 64 + 32 and info["rank"] == 1 and info["layers"] == [0]
    assert info["stats"] == "identity" and len(info["target_nll"]) == 1 and info["subjects"] == ["France"]
    # The adapted layer computes W x + U V x (lora_alpha = r: scaling 1).
    m = peft_model.get_base_model().model.layers[0].mlp.down_proj
    x = torch.randn(3, 64)
    U, V = m.lora_B["default"].weight, m.lora_A["default"].weight
    assert m.scaling["default"] == 1.0
    torch.testing.assert_close(m(x), x @ (orig["model.layers.0.mlp.down_proj.weight"] + U @ V).T, rtol=1e-5, atol=1e-6)


def test_rome_changes_the_edited_fact_only(subject_last_model, tok):
    fact = Fact("The capital of France", "Paris", subject="France", source="f:1")
    peft_model, info = run("rome", subject_last_model, tok, [fact], ["Lyon"], layer=0)
    assert contains_answer(greedy(peft_model, tok, "The capital of France", 1), "Lyon")
    for p, a in SUBJECT_LAST[1:]:
        assert contains_answer(greedy(peft_model, tok, p, 2), a), p
    assert info["target_nll"][0] < 5


def test_memit_touches_only_its_layers_with_rank_at_most_n(tiny_model, tok):
    orig = base_state(tiny_model)
    peft_model, info = run("memit", tiny_model, tok, [FRANCE, GERMANY], ["Lyon", "Munich"], layers="0-1")
    diff = merged_diff(peft_model, orig)
    assert sorted(diff) == [f"model.layers.{l}.mlp.down_proj.weight" for l in (0, 1)]
    for d in diff.values():
        assert 1 <= rank(d) <= 2
    assert info["layers"] == [0, 1] and info["z_layer"] == 1 and info["rank"] == 2
    assert info["trainable_params"] == 2 * (2 * 64 + 32 * 2)
    assert peft_model.peft_config["default"].r == 2 and peft_model.peft_config["default"].lora_alpha == 2


def test_memit_changes_the_edited_facts(subject_last_model, tok):
    facts = [Fact("The capital of France", "Paris", source="f:1"), Fact("The capital of Germany", "Berlin", source="f:2")]
    # The tiny model needs a delta of a few MLP-output norms; the residual-stream clamp 0.75 is for real models.
    peft_model, info = run("memit", subject_last_model, tok, facts, ["Lyon", "Munich"], layers="0-1",
                           clamp_norm_factor=4.0, mom2_update_weight=5.0)
    assert contains_answer(greedy(peft_model, tok, "The capital of France", 1), "Lyon")
    assert contains_answer(greedy(peft_model, tok, "The capital of Germany", 1), "Munich")
    assert max(info["z_residual_left"]) < 0.5


@pytest.mark.parametrize("name,opts", [("rome", {"layer": 1}), ("memit", {"layers": "0-1"})])
def test_unload_restores_and_saved_adapter_reloads(tiny_model, tok, tmp_path, name, opts):
    from peft import PeftModel

    orig = base_state(tiny_model)
    peft_model, _ = run(name, tiny_model, tok, [FRANCE, GERMANY], ["Lyon", "Munich"], **opts)
    ids = torch.tensor([tok("The capital of France is Paris .")["input_ids"]])
    with torch.no_grad():
        edited = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(make_model(), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
        plain = make_model()(input_ids=ids).logits
    assert torch.equal(edited, again)
    assert not torch.allclose(edited, plain)
    base = peft_model.unload()
    after = base.state_dict()
    assert set(after) == set(orig) and all(torch.equal(after[k], orig[k]) for k in orig)


def test_gpt2_conv1d_path(tok, tmp_path):
    from peft import PeftModel

    model = tiny_gpt2()
    orig = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model, info = run("rome", model, tok, [FRANCE], ["Lyon"], layer=0)
    assert peft_model.peft_config["default"].fan_in_fan_out
    diff = merged_diff(peft_model, orig)
    assert list(diff) == ["transformer.h.0.mlp.c_proj.weight"]  # Conv1D weight (in, out)
    assert rank(diff["transformer.h.0.mlp.c_proj.weight"]) == 1
    m = peft_model.get_base_model().transformer.h[0].mlp.c_proj
    x = torch.randn(3, 128)
    W, b = orig["transformer.h.0.mlp.c_proj.weight"], orig["transformer.h.0.mlp.c_proj.bias"]
    U, V = m.lora_B["default"].weight, m.lora_A["default"].weight
    torch.testing.assert_close(m(x), x @ (W + (U @ V).T) + b, rtol=1e-5, atol=1e-6)
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        edited = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        again = PeftModel.from_pretrained(tiny_gpt2(), str(tmp_path / "adapter"))(input_ids=ids).logits
    assert torch.equal(edited, again)
    after = peft_model.unload().state_dict()
    assert all(torch.equal(after[k], orig[k]) for k in orig)
    # MEMIT on GPT-2 too
    _, info = run("memit", tiny_gpt2(), tok, [FRANCE], ["Lyon"], layers="0-1")
    assert info["layers"] == [0, 1]


def test_fact_without_subject_names_its_source(tiny_model, tok):
    fact = Fact("the capital of france is", "Paris", source="forget.jsonl:7")
    with pytest.raises(LuneError, match=r"forget\.jsonl:7.*subject"):
        run("rome", tiny_model, tok, [fact], ["Lyon"], layer=0)


def test_subject_last_token_is_located(tok):
    fmt = PromptFormat(tok)
    row = editing.subject_row(tok, fmt, "Paris . The capital of Spain is", "prompt", "Spain", at=len("Paris . The capital of "))
    assert tok.convert_ids_to_tokens(row.ids)[row.lookup] == "Spain"
    rows = editing.fact_rows(tok, fmt, Fact("The Mona Lisa was painted by", "Leonardo", subject="Mona Lisa"),
                             "Mona Lisa", ["Mona Lisa is the", ""], [4], 0)
    for r in rows:  # the subject inside the prompt, not the one in the prefix
        toks = tok.convert_ids_to_tokens(r.ids)
        assert toks[r.lookup] == "Lisa" and toks[r.lookup + 1] == "was"
    kl = editing.kl_row(tok, fmt, "Mona Lisa", 0)
    assert tok.convert_ids_to_tokens(kl.ids)[kl.lookup] == "Lisa"
    # A question rendered by a chat template: the subject is found inside the rendered text.
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = "{% for m in messages %}Question : {{ m['content'] }}{% endfor %} Answer :"
    chat = PromptFormat(chat_tok, "chat")
    q = Fact("What is the capital of France ?", "Paris", style="question", subject="France")
    for r in editing.fact_rows(chat_tok, chat, q, "France", ["France is a"], [7], 0):
        toks = chat_tok.convert_ids_to_tokens(r.ids)
        assert toks[0] == "Question" and toks[r.lookup] == "France" and toks[r.lookup + 1] == "?"


def test_stats_cached_once_and_reused(tiny_model, tok, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is Paris .\n\nThe capital of Spain is Madrid .\n\nMona Lisa was painted by Leonardo da Vinci .\n")
    calls = []
    real = editing.compute_second_moments

    def counting(*a, **kw):
        calls.append(a[3])
        return real(*a, **kw)

    monkeypatch.setattr(editing, "compute_second_moments", counting)
    _, info = run("rome", copy.deepcopy(tiny_model), tok, [FRANCE], ["Lyon"], tmp_path, layer=0, stats_corpus=str(corpus))
    assert calls == [[0]] and info["stats_tokens"] == 23 and "corpus.txt" in info["stats"]
    files = list((tmp_path / "stats").rglob("layer0.pt"))
    assert len(files) == 1 and not list((tmp_path / "stats").rglob(".tmp-*"))
    C = torch.load(files[0])["mom2"]
    assert C.shape == (64, 64) and torch.allclose(C, C.T)
    _, info2 = run("rome", copy.deepcopy(tiny_model), tok, [FRANCE], ["Lyon"], tmp_path, layer=0, stats_corpus=str(corpus))
    assert calls == [[0]] and info2["stats_seconds"] == 0
    # MEMIT needs layer 1 too: only that layer is computed
    run("memit", copy.deepcopy(tiny_model), tok, [FRANCE], ["Lyon"], tmp_path, layers="0-1", stats_corpus=str(corpus))
    assert calls == [[0], [1]]


def test_self_corpus_stats(tiny_model, tok, tmp_path):
    _, info = run("rome", tiny_model, tok, [FRANCE], ["Lyon"], tmp_path, layer=0, stats_corpus="self", stats_tokens=50)
    assert info["stats_tokens"] == 50 and info["stats"].startswith("self")
    assert len(list((tmp_path / "stats").rglob("samples.pt"))) == 1
    assert len(list((tmp_path / "stats").rglob("layer0.pt"))) == 1


def test_bad_stats_corpus(tiny_model, tok, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(LuneError, match="nope.txt"):
        run("rome", copy.deepcopy(tiny_model), tok, [FRANCE], ["Lyon"], tmp_path, layer=0, stats_corpus=str(missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(LuneError, match="empty.jsonl"):
        run("rome", copy.deepcopy(tiny_model), tok, [FRANCE], ["Lyon"], tmp_path, layer=0, stats_corpus=str(empty))


def test_settings_and_inputs_are_validated(tiny_model, tok):
    for name, opts in [("rome", {"v_lr": 0}), ("rome", {"layer": -1}), ("memit", {"layers": "x"}),
                       ("memit", {"mom2_update_weight": -1}), ("rome", {"stats_ridge": -1}), ("rome", {"bogus": 1})]:
        with pytest.raises(LuneError, match=name):
            get_method(name, TrainSettings(), opts)
    assert get_method("rome", TrainSettings(), {"layer": "3"}).settings.layer == 3
    assert get_method("rome", TrainSettings(), {"layer": "auto"}).settings.layer is None
    assert get_method("memit", TrainSettings(), {"layers": [3, 4, 5]}).settings.layers == "3,4,5"
    with pytest.raises(LuneError, match="out of range"):
        run("rome", tiny_model, tok, [FRANCE], ["Lyon"], layer=5)
    with pytest.raises(LuneError, match="targets"):
        run("memit", tiny_model, tok, [FRANCE], [], layers="0")

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    with pytest.raises(LuneError, match="Odd"):
        run("rome", Odd(), tok, [FRANCE], ["Lyon"], layer=0)


def test_default_layers_scale_with_depth():
    from lune.methods.memit import default_layers

    assert editing.round_layer(0.17, 30) == 5 and editing.round_layer(0.17, 2) == 0
    assert default_layers(30) == [3, 4, 5, 6, 7] and default_layers(28) == [3, 4, 5, 6, 7] and default_layers(2) == [0, 1]
