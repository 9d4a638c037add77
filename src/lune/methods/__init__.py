"""Unlearning methods, registered by name: losses over the one training loop, and weight edits."""

from .base import METHODS, EditMethod, Method, get_method, method_settings, register
from . import ga, lune, npo, simnpo  # noqa: F401,E402  (each registers its methods)

__all__ = ["METHODS", "EditMethod", "Method", "get_method", "method_settings", "register"]
from . import rome, memit  # noqa: F401,E402
