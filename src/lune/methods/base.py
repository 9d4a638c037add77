"""The method registry and the interface every method implements."""

from __future__ import annotations

import torch

from ..config import TrainSettings
from ..errors import LuneError

METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    """Class decorator: make a method available as ``lune unlearn --method NAME``."""

    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str, cfg: TrainSettings) -> "Method":
    if name not in METHODS:
        raise LuneError(f"unknown method '{name}'; available: {sorted(METHODS)}")
    return METHODS[name](cfg)


class Method:
    """A loss over batches of forget examples (and optional retain examples).

    Attributes:
        name: registry name.
        citation: the paper the loss comes from.
    """

    name = "base"
    citation = ""

    def __init__(self, cfg: TrainSettings):
        self.cfg = cfg

    def loss(self, model, forget: dict, retain: dict | None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def reference_tokens(self, forget: dict, retain: dict | None) -> int:
        """Tokens of this step that also go through a gradient-free reference forward (for FLOPs)."""
        return 0
