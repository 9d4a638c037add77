"""Typed, validated configuration for a lune run.

Every field carries its help text in ``metadata["help"]`` (used by the CLI, as
in trl/peft). Every config validates itself on construction and round-trips
through JSON, so ``config.json`` in a run directory is enough to reproduce it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("auto", "completion", "chat")
NEGATIVE_KINDS = ("alternative", "contradiction", "refusal")
NEGATIVE_RANKS = ("count", "probability", "mixed")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Measured on the default model: FFN-only adapters on the lower half keep other facts far better
# than the paper's attention+FFN on every layer, at the same forgetting (README, "Defaults").
DEFAULT_TARGETS = ("gate_proj", "up_proj", "down_proj")


PATIENCE, PROTECTED_PATIENCE = 5, 10  # plateau patience (epochs) without and with protected adapters (README, "Defaults")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def parse_layers(spec: str | None, n_layers: int | None = None) -> list[int] | None:
    """Parse a layer spec into a sorted list of indices (``None`` = every layer).

    ``spec`` is a range such as ``"8-20"``, a list such as ``"3,5,7"``, or ``"all"``, ``"lower"``
    (the lower half of the model's ``n_layers``) or ``"upper"``. Without ``n_layers`` the halves
    cannot be resolved and ``None`` is returned (validation only).
    """
    if spec in (None, "", "all"):
        return None
    if spec in ("lower", "upper"):
        if n_layers is None:
            return None
        half = n_layers // 2
        return list(range(max(1, half))) if spec == "lower" else list(range(half, n_layers))
    out: set[int] = set()
    try:
        for part in str(spec).split(","):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                _check(lo <= hi, f"layers: range '{part}' is empty (start > end)")
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError as e:
        if "layers:" in str(e):
            raise
        raise ValueError(f"layers: cannot parse '{spec}'; use a range like '8-20', a list like '3,5,7', 'all', 'lower' or 'upper'") from None
    _check(min(out) >= 0, f"layers: negative index in '{spec}'")
    return sorted(out)


class _Config:
    """JSON round-trip shared by every config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**d)


@dataclass
class LoraSettings(_Config):
    """Where the LoRA adapters go and how large they are (paper §3: r=16, alpha=16, dropout 0.05)."""

    r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling numerator; the update is scaled by lora_alpha / r.")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input during training.")
    target_modules: list[str] = _f(list(DEFAULT_TARGETS), "Module names that receive adapters (default: the FFN projections; the paper also adapts q,k,v,o).")
    layers: str | None = _f("lower", "Decoder layers with adapters: 'lower' (lower half, default), 'upper', 'all', a range '8-20' or a list '3,5,7'.")
    protect: float | None = _f(None, "Share of the retain examples' input energy that the adapters may not read (0 = off): A is projected off the leading directions of every adapted layer's inputs on retain facts, anchors and neighbours, so the update leaves them nearly unchanged (AlphaEdit's null space, for LoRA). Default: the method's (0.8 for lune; 0 for the baselines, as published).", type=float)

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"r must be >= 1, got {self.r}")
        _check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        _check(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check(self.protect is None or 0.0 <= self.protect < 1.0, f"protect must be in [0, 1), got {self.protect}")
        if isinstance(self.target_modules, str):
            self.target_modules = [t for t in self.target_modules.split(",") if t]
        _check(len(self.target_modules) > 0, "target_modules must name at least one module")
        parse_layers(self.layers)


@dataclass
class TrainSettings(_Config):
    """The optimisation of one unlearning run (paper §3 with defaults tuned on the default model, see README)."""

    lr: float | None = _f(None, "Peak AdamW learning rate; default: the method's (1e-3 with LoRA: the paper's 2e-4 is too slow for a 135M model at few steps, see README; 1e-5 with --full).", type=float)
    full: bool = _f(False, "Train every weight of the model instead of LoRA adapters (the paper's full fine-tuning comparison; holds a frozen copy only when a KL term needs it).")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.05, "Share of steps with linear warm-up before the cosine decay.")
    max_epochs: int = _f(40, "Upper bound on epochs over the negatives (the paper's 40); early stopping usually ends sooner.")
    min_epochs: int = _f(3, "Epochs to run before early stopping may end the run.")
    early_stop: bool = _f(True, "Stop once every trained forget prompt no longer yields its answer (greedy check each epoch).")
    patience: int | None = _f(None, f"With early_stop: also stop when the share of suppressed trained prompts, once above 0, has not improved for this many checks (0 = never); further epochs only deepen the edit where it already holds. Default: {PROTECTED_PATIENCE} with protected adapters (they learn the forgetting about half as fast), else {PATIENCE}.", type=int)
    restore_best: bool = _f(True, "With early_stop and LoRA: when the last check suppressed fewer trained prompts than an earlier one, end with the adapter weights of the latest epoch that reached the best share (full training does not: it would hold a second copy of every weight).")
    focus: bool = _f(False, "After each early-stopping check, train only the facts some trained prompt still yields (a fact that relapses comes back).")
    batch_size: int = _f(16, "Forget examples per optimisation step.")
    retain_batch_size: int = _f(16, "Retain examples (retain facts, anchors, neighbours) paired with each forget batch.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass instead of keeping them: about a third more time for most of a step's activation memory (benchmarks/results/step_cost.md).")
    paraphrases: bool = _f(True, "Also train on each forget fact's paraphrases (they are then no longer held out for APR).")
    fit_retain: bool = _f(True, "Train on the retain file's facts; false only measures them (a held-out GUR).")
    anchors: int = _f(128, "Built-in general prompts whose original completions are kept (self-distilled retain NLL); 0 disables.")
    neighbours: int = _f(8, "Subject-swapped copies of each forget prompt whose original completions are kept (specificity); 0 disables.")
    contexts: int = _f(0, "Of each trained forget prompt's targets, this many (never all) are trained behind an unrelated sentence (an anchor prompt and the original model's completion of it), so the forgetting holds after other text.")
    sites: int = _f(4, "Extra examples per forget fact at places where the original model itself brings up the answer later in a text (sampled continuations of the prompt, and of the prompt followed by a negative, cut just before the answer), each trained with a negative.")
    swaps: int = _f(0, "Copies of each forget prompt with one word swapped for one the original model expects there, whose original completions are kept (specificity); 0 disables.")
    retain_weight: float = _f(1.0, "Weight of the NLL on retain facts, anchors and neighbours.")
    kl_weight: float = _f(0.0, "Weight of the KL to the original model on retain prompts (adapter disabled as reference).")
    seed: int = _f(0, "Random seed for negatives sampling, dropout and data order.")
    dtype: str = _f("auto", f"Compute dtype: one of {DTYPES}; auto = bfloat16 on CUDA with bf16 support, else float32.")
    device: str = _f("auto", "Device: auto, cpu, cuda, cuda:N.")

    def __post_init__(self) -> None:
        _check(self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        _check(0 <= self.min_epochs, f"min_epochs must be >= 0, got {self.min_epochs}")
        _check(self.patience is None or self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        _check(self.contexts >= 0, f"contexts must be >= 0, got {self.contexts}")
        _check(self.sites >= 0, f"sites must be >= 0, got {self.sites}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.retain_batch_size >= 1, f"retain_batch_size must be >= 1, got {self.retain_batch_size}")
        _check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        _check(self.retain_weight >= 0 and self.kl_weight >= 0, "retain_weight and kl_weight must be >= 0")
        _check(self.anchors >= 0 and self.neighbours >= 0 and self.swaps >= 0, "anchors, neighbours and swaps must be >= 0")
        _check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got '{self.dtype}'")
        _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
               f"device must be auto, cpu, mps, cuda or cuda:N, got '{self.device}'")


@dataclass
class NegativeSettings(_Config):
    """How negative targets y- are built for each forget fact (paper §3.1)."""

    per_fact: int = _f(4, "Negative targets per fact (balanced: every fact gets the same number).")
    kinds: list[str] = _f(["alternative"], f"Kinds of negatives, in order of preference; from {NEGATIVE_KINDS}. Contradictions always fill a fact that would otherwise have too few.")
    num_samples: int = _f(24, "Completions sampled from the model per fact to find alternative answers.")
    temperature: float = _f(1.0, "Sampling temperature for alternatives.")
    sample_tokens: int = _f(8, "Tokens per sampled completion before it is cut to a short span.")
    rank: str = _f("count", f"Order of the sampled alternatives, one of {NEGATIVE_RANKS}: count = most often sampled first; probability = most probable under the original model first (log p of the whole span after the prompt); mixed = the two orders alternated, most probable first.")
    distinct: bool = _f(False, "No sampled alternative serves two facts of the set: each fact, in file order, takes its best-ranked spans that no earlier fact took (a fact left with none keeps its own).")
    stop: bool = _f(False, "End every completion-style negative with the end-of-text token: the model learns to stop after the wrong answer instead of going on to restate the fact (chat negatives always end their turn).")

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str):
            self.kinds = [k for k in self.kinds.split(",") if k]
        _check(self.per_fact >= 1, f"per_fact must be >= 1, got {self.per_fact}")
        _check(len(self.kinds) > 0, f"kinds must name at least one of {NEGATIVE_KINDS}")
        for k in self.kinds:
            _check(k in NEGATIVE_KINDS, f"kinds: unknown kind '{k}'; allowed: {NEGATIVE_KINDS}")
        _check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(self.sample_tokens >= 1, f"sample_tokens must be >= 1, got {self.sample_tokens}")
        _check(self.rank in NEGATIVE_RANKS, f"rank must be one of {NEGATIVE_RANKS}, got '{self.rank}'")


@dataclass
class RunSettings(_Config):
    """What to unlearn, from which model, and where the result goes."""

    model: str = _f("smollm2-135m", "Model: 'smollm2-135m' (embedded), a Hub id, a local directory, or a .gguf file.")
    format: str = _f("auto", f"Prompt format, one of {FORMATS}: auto renders 'question' records with the chat template (if any) and 'prompt' records as plain completion.")
    method: str = _f("lune", "Unlearning method: lune (default), lune-full, ga, graddiff, npo, simnpo, rome, memit (lune.methods.METHODS).")
    max_new_tokens: int = _f(16, "Tokens generated per probe when checking whether the answer is still produced.")
    eval_batch_size: int = _f(32, "Prompts per batch for generation and scoring.")
    trust_remote_code: bool = _f(False, "Allow model code from the Hub (off unless asked).")

    def __post_init__(self) -> None:
        _check(self.format in FORMATS, f"format must be one of {FORMATS}, got '{self.format}'")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclass
class UnlearnConfig(_Config):
    """Everything that determines one run; written as ``config.json`` next to its results."""

    run: RunSettings = field(default_factory=RunSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    negatives: NegativeSettings = field(default_factory=NegativeSettings)
    method: dict[str, Any] = field(default_factory=dict)  # options of run.method (its Settings dataclass, lune.methods)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UnlearnConfig":
        parts = {"run": RunSettings, "lora": LoraSettings, "train": TrainSettings, "negatives": NegativeSettings}
        unknown = set(d) - set(parts) - {"method"}
        if unknown:
            raise ValueError(f"UnlearnConfig: unknown section(s) {sorted(unknown)}; allowed: {sorted(parts) + ['method']}")
        method = d.get("method") or {}
        _check(isinstance(method, dict), f"UnlearnConfig: section 'method' must be an object, got {type(method).__name__}")
        return cls(**{k: c.from_dict(d.get(k, {})) for k, c in parts.items()}, method=dict(method))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "UnlearnConfig":
        return cls.from_dict(json.loads(text))

