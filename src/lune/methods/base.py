"""The method registry and the two interfaces a method implements.

* ``Method`` (``kind = "loss"``): a loss over the one training loop (``lune.train``). It says what
  its forget examples answer (``targets``: the negatives y- or the true answers), whether it uses
  retain examples, and whether it needs log p_ref(y|x) of the original model per forget example
  (computed once before training, so no reference model is held or run during training).
* ``EditMethod`` (``kind = "edit"``): a closed-form weight edit (ROME, MEMIT) that returns the
  model with its update attached as a LoRA-format adapter.

Each method lives in its own file with its ``Settings`` dataclass and its citation, and registers
by name; adding one touches neither the training loop nor the API.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..config import PATIENCE, PROTECTED_PATIENCE, TrainSettings, _Config
from ..errors import LuneError
from ..losses import kl_to_ref, masked_nll, response_logits

METHODS: dict[str, type["Method"]] = {}
LORA_LR, FULL_LR = 1e-3, 1e-5  # default peak learning rates (README, "Defaults" and "Baselines")


def register(name: str):
    """Class decorator: make a method available as ``lune unlearn --method NAME``."""

    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@dataclass
class NoSettings(_Config):
    """A method without options of its own."""


def method_settings(name: str, options: dict[str, Any] | None) -> _Config:
    """Validate ``options`` against method ``name``'s Settings dataclass."""
    if name not in METHODS:
        raise LuneError(f"unknown method '{name}'; available: {sorted(METHODS)}")
    try:
        return METHODS[name].Settings.from_dict(dict(options or {}))
    except (TypeError, ValueError) as e:
        raise LuneError(f"method '{name}': {e}") from None


def get_method(name: str, cfg: TrainSettings, options: dict[str, Any] | None = None) -> "Method":
    """The registered method ``name`` with training settings ``cfg`` and its own ``options``."""
    settings = method_settings(name, options)
    return METHODS[name](cfg, settings)


def adapter_disabled(model):
    """Context in which a peft model behaves as its base model (the free reference model)."""
    model = getattr(model, "module", model)  # unwrap DDP under accelerate
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


class Method:
    """A loss over batches of forget examples (and optional retain examples).

    Attributes:
        name: registry name.
        citation: the paper the loss comes from.
        Settings: the dataclass of the method's own options (``--<name>-<option>`` on the CLI).
        kind: "loss" (trained by ``lune.train``) or "edit" (``EditMethod``).
        targets: what forget examples answer: "negatives" (y-) or "answers" (the true answers).
        uses_retain: build retain examples (retain facts, anchors, neighbours) for this method.
        reference_logp: forget batches carry ``ref_logp`` (B,), the original model's summed
            response log-probability, computed once before training.
        full: train every weight rather than LoRA adapters (``TrainSettings.full`` or a ``-full`` method).
    """

    name = "base"
    citation = ""
    Settings: type[_Config] = NoSettings
    kind = "loss"
    targets = "negatives"
    uses_retain = True
    reference_logp = False
    always_full = False
    protect = 0.0  # share of the retain inputs the adapters may not read when --protect is not given

    def __init__(self, cfg: TrainSettings, settings: _Config | None = None):
        self.cfg = cfg
        self.settings = settings if settings is not None else self.Settings()
        self.full = self.always_full or cfg.full
        self.ref_model = None  # a frozen copy, set by the API only for full training with a KL term

    @property
    def lr(self) -> float:
        """The peak learning rate: the configured one, else the default for LoRA or full training."""
        return self.cfg.lr if self.cfg.lr is not None else (FULL_LR if self.full else LORA_LR)

    def resolve(self, cfg):
        """``cfg`` (an ``UnlearnConfig``) with every "the method's default" (``None``) filled in, as the run uses it."""
        cfg = copy.deepcopy(cfg)
        if cfg.train.lr is None and self.kind == "loss":
            cfg.train.lr = self.lr
        adapters = self.kind == "loss" and not self.full
        if cfg.lora.protect is None:
            cfg.lora.protect = self.protect if adapters else 0.0
        if cfg.train.patience is None:
            cfg.train.patience = PROTECTED_PATIENCE if adapters and cfg.lora.protect > 0 else PATIENCE
        return cfg

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def reference_tokens(self, forget: dict, retain: dict | None) -> int:
        """Tokens of this step that also go through a gradient-free reference forward (for FLOPs)."""
        return int(retain["attention_mask"].sum()) if retain is not None and self.uses_retain and self.cfg.kl_weight > 0 else 0

    def reference(self, model):
        """Context and model giving the original model's outputs: the adapter-disabled model with
        LoRA (no second copy), the frozen copy the API set in ``ref_model`` for full training."""
        if self.ref_model is not None:
            return contextlib.nullcontext(), self.ref_model
        return adapter_disabled(model), model

    def retain_terms(self, model, retain: dict | None) -> tuple[torch.Tensor | float, dict[str, float]]:
        """``retain_weight`` x NLL on retain examples + ``kl_weight`` x KL(original || model) on them."""
        if retain is None or not self.uses_retain or (self.cfg.retain_weight <= 0 and self.cfg.kl_weight <= 0):
            return 0.0, {}
        logits, targets = response_logits(model, retain)
        loss, logs = 0.0, {}
        if self.cfg.retain_weight > 0:
            nll = masked_nll(logits, targets)
            loss, logs["retain_nll"] = self.cfg.retain_weight * nll, nll.item()
        if self.cfg.kl_weight > 0:
            ctx, ref = self.reference(model)
            with torch.no_grad(), ctx:
                ref_logits, _ = response_logits(ref, retain)
            kl = kl_to_ref(logits, ref_logits, targets)
            loss, logs["retain_kl"] = loss + self.cfg.kl_weight * kl, kl.item()
        return loss, logs


class EditMethod(Method):
    """A closed-form edit of the weights, returned as a LoRA-format adapter on the model.

    ``edit`` gets the frozen base model, the facts and one new target per fact (the fact's
    ``replacement`` or its first negative), and returns ``(peft_model, info)``: the model with the
    update attached as adapter "default" (so it saves, loads, merges and unloads like a LoRA
    adapter) and a dict with at least ``steps`` (optimisation steps spent), ``train_tokens`` and
    ``trainable_params`` (the size of the stored update).
    """

    kind = "edit"
    uses_retain = False

    def loss(self, model, forget, retain):  # pragma: no cover - edits are not trained by the loop
        raise LuneError(f"method '{self.name}' is an edit, not a loss")

    def edit(self, model, tok, fmt, facts: list, targets: list[str], cache_dir=None) -> tuple[Any, dict]:
        raise NotImplementedError
