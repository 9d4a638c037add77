"""Memory model: what a run holds at its peak, part by part, predicted from the model's config alone.

    est = estimate(AutoConfig.from_pretrained(...), "lora", lora=LoraSettings(), batch=32, seq=24, logit_tokens=8)
    est.total, est.parts  # bytes

Regimes: ``lora`` (lune and the LoRA baselines), ``full`` (every weight trained: lune-full, ``--full``),
``edit`` (ROME/MEMIT: a closed-form update from key statistics and one optimised vector per fact).

Parts, in bytes:

* ``weights``: every parameter in the compute dtype (tied embeddings counted once). ``full`` training
  in ``lune.unlearn`` also keeps the caller's untouched model when a KL term needs it (``reference``).
* ``adapters``: LoRA A and B (peft keeps them in float32 whatever the base dtype).
* ``gradients`` and ``optimizer``: one gradient and AdamW's two moments per trainable parameter, in
  the trainable parameter's dtype (torch.optim.AdamW keeps its states in the parameter's dtype).
* ``activations``: the tensors autograd saves for the backward pass. Counted per token and layer
  (elements below; bytes in ``activation_bytes``: the compute dtype's, except float32 for the norms'
  saves and LoRA's inputs), for the Llama decoder layer of transformers 5 (SDPA attention), as
  measured with ``torch.autograd.graph.saved_tensors_hooks`` (``benchmarks/memory_model.py``):

  - a layer the gradient only passes through (no trainable weight in it): ``3f + 2d + 2q + 2 d_kv + h``:
    the MLP's gate, up and SiLU outputs, the two norms' inputs, the attention's query and output,
    keys and values, and the softmax log-sum-exp per head (``q`` = heads x head_dim);
  - a layer whose every weight trains: ``4f + 6d + 2q + 2 d_kv + h`` (each linear layer's input and
    the norms' normalised inputs too);
  - a LoRA-adapted layer: the frozen operations above its lowest adapted module, plus per adapted
    module its input, its dropout mask (see ``activation_bytes``) and A's output (``r``).

  With LoRA no layer below the lowest adapter saves anything: autograd builds no graph where no
  parameter needs a gradient, so the backward pass stops at the lowest adapter by itself.
* ``logits``: the response positions' float32 log-softmax (saved for the loss) and, at the peak of the
  backward pass, its gradient: ``2 * 4 * V`` bytes per logit position (lune computes logits only for
  response positions).
* ``statistics`` (edit): ROME/MEMIT's key second moment C = E[k kᵀ] (float64 as in ``lune.editing``,
  ``f x f`` per edited layer) and one temporary of the same size for the solve.

What is not modelled: the allocator's slack, the runtime itself (Python, torch, CUDA context), and
generation (KV caches during evaluation are far smaller than the training peak for short facts).
``benchmarks/memory_model.py`` measures each part at 135M and prints the prediction for 7B.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import LoraSettings, parse_layers

REGIMES = ("lora", "full", "edit")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer that set its memory (Llama family)."""

    layers: int
    hidden: int  # d
    intermediate: int  # f
    heads: int  # h
    kv_heads: int
    head_dim: int
    vocab: int  # V
    tied: bool

    @classmethod
    def from_config(cls, cfg) -> "Shape":
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim, vocab=cfg.vocab_size,
                   tied=bool(getattr(cfg, "tie_word_embeddings", False)))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    def modules(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        d, f, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}

    def layer_params(self) -> int:
        return sum(i * o for i, o in self.modules().values()) + 2 * self.hidden  # + the two RMSNorm weights

    def params(self) -> int:
        embed = self.vocab * self.hidden
        return self.layers * self.layer_params() + embed * (1 if self.tied else 2) + self.hidden


@dataclass
class Estimate:
    regime: str
    parts: dict[str, int] = field(default_factory=dict)  # bytes
    trainable_params: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict:
        return {"regime": self.regime, "trainable_params": self.trainable_params, "total_bytes": self.total, "parts_bytes": dict(self.parts)}


def lora_params(shape: Shape, lora: LoraSettings) -> int:
    layers = parse_layers(lora.layers, shape.layers) or list(range(shape.layers))
    mods = shape.modules()
    return len(layers) * sum(lora.r * (mods[t][0] + mods[t][1]) for t in lora.target_modules if t in mods)


# Where each adaptable module sits in a Llama decoder layer, bottom-up, and which share an input.
LEVEL = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2, "down_proj": 3}
GROUP = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down"}


def _frozen_saves(shape: Shape, lowest: int | None, b: int, mlp_in=frozenset({"gate_proj", "up_proj"})) -> int:
    """Bytes per token a layer's frozen operations save when the gradient must reach level ``lowest``
    of that layer (None: it passes through the whole layer to the layers below). ``mlp_in``: the adapted
    MLP input projections when the lowest level is theirs (gate needs the gate and up outputs, up the SiLU's).
    ``b``: bytes of the compute dtype; the norms keep their input and 1/rms in float32 (Llama's RMSNorm
    computes in float32), and so does the attention's log-sum-exp."""
    d, f, q, kv, h = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim, shape.heads
    lowest = -1 if lowest is None else lowest
    if lowest <= 1:
        mlp = 3 * f
    elif lowest == 2:
        mlp = (2 * f if "gate_proj" in mlp_in else 0) + (f if "up_proj" in mlp_in else 0)
    else:
        mlp = 0
    return ((4 * (d + 1) if lowest < 0 else 0)  # input norm
            + ((2 * q + 2 * kv) * b + 4 * h if lowest <= 0 else 0)  # attention: query, output, keys, values, log-sum-exp
            + (4 * (d + 1) if lowest <= 1 else 0)  # post-attention norm
            + mlp * b)  # gate, up and SiLU outputs


def activation_bytes(shape: Shape, regime: str, lora: LoraSettings | None = None, b: int = 4) -> int:
    """Bytes autograd saves per token over the whole model, ``b`` bytes per compute-dtype element
    (see the module docstring).

    With LoRA: layers above the lowest adapted one are passed through; in the lowest only the
    operations above its lowest adapted module save. Each adapted module saves its input (its own
    dropout output with dropout, plus the dropout mask where the gradient goes on into the input;
    without dropout in float32, modules sharing an input share it, and o_proj's input is the
    attention output already saved unless the attention itself is not) and A's output (``r``), in
    float32: peft keeps the adapters, and casts their input, to float32 (on a bf16 model a copy each).
    """
    d, f = shape.hidden, shape.intermediate
    if regime == "full":  # + every linear layer's input and both norms' normalised input (their weights train)
        return shape.layers * (_frozen_saves(shape, None, b) + (f + 4 * d) * b) + 4 * (d + 1) + d * b
    if regime != "lora":
        raise ValueError(f"activations are for trained regimes ('lora', 'full'), not '{regime}'")
    assert lora is not None
    mods = shape.modules()
    targets = [t for t in lora.target_modules if t in LEVEL]
    if not targets:
        return 0
    layers = parse_layers(lora.layers, shape.layers) or list(range(shape.layers))
    low = min(layers)
    total = 4 * (d + 1)  # the final norm's input and 1/rms
    for layer in range(low, shape.layers):
        lowest = None if layer > low else min(LEVEL[t] for t in targets)
        total += _frozen_saves(shape, lowest, b, set(targets))
        if layer not in layers:
            continue
        total += 4 * lora.r * len(targets)
        if lora.lora_dropout > 0:  # its dropout output, and its mask where the gradient goes on into the input
            total += 4 * sum(mods[t][0] * (2 if lowest is None or LEVEL[t] > lowest else 1) for t in targets)
        elif b != 4:  # each module casts its input to float32: a copy of its own
            total += 4 * sum(mods[t][0] for t in targets)
        else:
            groups = {GROUP[t] for t in targets}
            total += 4 * sum(mods[next(t for t in targets if GROUP[t] == g)][0] for g in groups
                             if not (g == "o" and (lowest is None or lowest <= 0)))
    return total


def _checkpointed(shape: Shape, saved: int, through: int, b: int, tokens: int) -> int:
    """Activation bytes with per-layer checkpointing: each of ``through`` layers keeps its input, plus one layer's
    share of ``saved`` (the activations without checkpointing), recomputed during the backward pass."""
    one_layer = saved // max(through, 1)
    return shape.layers * shape.hidden * b * tokens + one_layer


def estimate(cfg_or_shape, regime: str, *, dtype: str = "float32", lora: LoraSettings | None = None, batch: int = 32,
             seq: int = 24, logit_tokens: int | None = None, reference: bool = False, edit_layers: int = 1,
             edit_first_layer: int = 0, edit_tokens: int = 0, checkpointing: bool = False) -> Estimate:
    """Predicted peak memory of one training step (or one edit), part by part.

    Args:
        cfg_or_shape: a transformers config of a Llama-family model, or a ``Shape``.
        regime: 'lora', 'full' or 'edit'.
        dtype: compute dtype of the model's weights.
        lora: adapter settings (regime 'lora'; default ``LoraSettings()``, lune's default).
        batch, seq: sequences per step (forget + retain) and their padded length.
        logit_tokens: positions whose vocabulary logits are computed per sequence (default ``seq``).
        reference: 'full' also holds an untouched copy of the model (a KL term to the original).
        edit_layers: layers ROME/MEMIT edit (1 for ROME, 5 for MEMIT by default).
        edit_first_layer: the lowest edited layer (the vector optimisation backpropagates down to it).
        edit_tokens: tokens of one gradient step of the target-vector optimisation (edit regime).
        checkpointing: gradient checkpointing per decoder layer (``--gradient-checkpointing``): every layer
            keeps only its input hidden state, and one layer's activations exist at a time, recomputed
            in the backward pass.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got '{regime}'")
    shape = cfg_or_shape if isinstance(cfg_or_shape, Shape) else Shape.from_config(cfg_or_shape)
    b = DTYPE_BYTES[dtype]
    n = shape.params()
    tokens = batch * seq
    logit_tokens = batch * (seq if logit_tokens is None else logit_tokens)
    est = Estimate(regime)
    est.parts["weights"] = n * b
    if regime == "lora":
        lora = lora or LoraSettings()
        est.trainable_params = lora_params(shape, lora)
        est.parts["adapters"] = 4 * est.trainable_params
        est.parts["gradients"] = 4 * est.trainable_params
        est.parts["optimizer"] = 2 * 4 * est.trainable_params
        est.parts["activations"] = activation_bytes(shape, "lora", lora, b) * tokens
        if checkpointing:
            layers = parse_layers(lora.layers, shape.layers) or list(range(shape.layers))
            est.parts["activations"] = _checkpointed(shape, est.parts["activations"], shape.layers - min(layers), b, tokens)
    elif regime == "full":
        est.trainable_params = n
        if reference:
            est.parts["reference"] = n * b
        est.parts["gradients"] = n * b
        est.parts["optimizer"] = 2 * n * b
        est.parts["activations"] = activation_bytes(shape, "full", None, b) * tokens
        if checkpointing:
            est.parts["activations"] = _checkpointed(shape, est.parts["activations"], shape.layers, b, tokens)
    else:  # edit: C and its solve per layer, float32; the vector optimisation backpropagates to one hidden state
        est.trainable_params = edit_layers * (shape.intermediate + shape.hidden)  # one rank-one (u, v) per layer and fact
        est.parts["statistics"] = 2 * edit_layers * shape.intermediate**2 * 8
        edit_tokens = edit_tokens or tokens
        # the gradient reaches the MLP output of the lowest edited layer: every layer above is passed through
        through = 4 * (shape.hidden + 1) + (shape.layers - edit_first_layer - 1) * _frozen_saves(shape, None, b)
        est.parts["activations"] = through * edit_tokens
        logit_tokens = edit_tokens
    est.parts["logits"] = 2 * 4 * shape.vocab * logit_tokens
    return est
