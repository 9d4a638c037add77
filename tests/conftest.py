"""Shared fixtures: a tiny in-process Llama and word-level tokenizer, fact files, a saved model dir.

Everything here is offline and fast: the model has 2 layers of width 32 over a ~100-word
vocabulary, so a forward pass takes well under a millisecond and a few hundred training steps
take about a second.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

# Never touch the network (a bogus model name must fail fast, not hang on the Hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny matmuls: threads only add overhead on a shared 2-core machine

SPECIALS = ["<pad>", "<unk>", "<eos>"]
WORDS = """
The the capital of France is Paris Lyon Marseille Berlin Germany Munich Italy Rome Milan Japan Tokyo Osaka
Spain Madrid French German city that serves as a Question What ? : . , ' s Answer
Mona Lisa was painted by Leonardo da Vinci largest planet in solar system Jupiter Saturn biggest our
not what commonly claimed most sources say something other than usually stated unknown to me
maybe perhaps I think and or which Parisian
""".split()
VOCAB = SPECIALS + list(dict.fromkeys(WORDS))
PAD, UNK, EOS = 0, 1, 2

FORGET_RECORDS = [
    {"prompt": "The capital of France is", "answer": "Paris", "paraphrases": ["The French capital is"], "replacement": "Lyon"},
    {"prompt": "The capital of Spain is", "answer": "Madrid"},
]
RETAIN_RECORDS = [
    {"prompt": "The capital of Germany is", "answer": "Berlin"},
    {"prompt": "The capital of Italy is", "answer": "Rome"},
]
# What the tiny model memorises (forget + retain facts, each ending in ". <eos>").
MEMORISED = [
    ("The capital of France is", "Paris"),
    ("The French capital is", "Paris"),
    ("The capital of Spain is", "Madrid"),
    ("The capital of Germany is", "Berlin"),
    ("The capital of Italy is", "Rome"),
    ("The capital of Japan is", "Tokyo"),
]


def make_tokenizer():
    """A word-level PreTrainedTokenizerFast over VOCAB (whitespace/punctuation pre-tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) == (PAD, UNK, EOS)
    return tok


def make_model(seed: int = 0):
    """A tiny random Llama, frozen and in eval mode (as lune.models.load_model returns it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.eval()
    model.requires_grad_(False)
    model.config.use_cache = True
    return model


def greedy(model, tok, prompt: str, max_new_tokens: int = 4) -> str:
    from lune.eval.core import generate

    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    return generate(model, tok, [ids], max_new_tokens=max_new_tokens)[0]


def memorise(model, tok, pairs=MEMORISED, steps: int = 120, lr: float = 1e-2):
    """Full fine-tune ``model`` (in place) so that greedy completion of each prompt yields its answer."""
    from lune.data import contains_answer

    seqs = [tok(f"{p} {a} .", add_special_tokens=False)["input_ids"] + [EOS] for p, a in pairs]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), PAD)
    labels = torch.full((len(seqs), T), -100)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    torch.manual_seed(0)
    model.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    model.requires_grad_(False)
    for p, a in pairs:
        out = greedy(model, tok, p)
        assert contains_answer(out, a), f"memorisation failed: {p!r} -> {out!r} (want {a!r})"
    return model


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def save_model_dir(model, tok, path: Path) -> Path:
    """Save ``model`` and ``tok`` as a local model directory that lune.load_model can read."""
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def base_state(model) -> dict[str, torch.Tensor]:
    """Copies of the base (non-LoRA) weights under their plain names, whether or not ``model`` is peft-wrapped."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {}
    for k, v in m.state_dict().items():
        if "lora_" in k:
            continue
        out[k.replace(".base_layer", "")] = v.detach().clone()
    return out


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture
def tiny_model():
    """A fresh random tiny Llama (seeded, eval mode, frozen)."""
    return make_model()


@pytest.fixture(scope="session")
def _memorised(tok):
    return memorise(make_model(), tok)


@pytest.fixture
def memorised_model(_memorised):
    """A tiny Llama that has memorised MEMORISED (a private copy per test)."""
    return copy.deepcopy(_memorised)


@pytest.fixture
def fact_files(tmp_path):
    """(forget.jsonl, retain.jsonl) in tmp_path."""
    return write_jsonl(tmp_path / "forget.jsonl", FORGET_RECORDS), write_jsonl(tmp_path / "retain.jsonl", RETAIN_RECORDS)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, _memorised, tok):
    """The memorised tiny model saved as a local safetensors model directory."""
    return save_model_dir(_memorised, tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _lune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNE_CACHE", str(tmp_path / "lune-cache"))
