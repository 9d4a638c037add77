"""Unlearning methods, registered by name. A method is a loss over the one training loop."""

from .base import METHODS, Method, get_method, register
from . import lune  # noqa: F401  (registers 'lune')

__all__ = ["METHODS", "Method", "get_method", "register"]
