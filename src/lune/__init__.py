"""lune: make a causal LM forget facts with LoRA adapters trained on negative examples.

Implements Liu et al., "LUNE: Efficient LLM Unlearning via LoRA Fine-Tuning with Negative
Examples" (arXiv 2512.07375).
"""

__version__ = "0.1.0"

from .api import evaluate, generate, merge, unlearn  # noqa: E402
from .config import LoraSettings, NegativeSettings, RunSettings, TrainSettings, UnlearnConfig  # noqa: E402
from .data import Fact, read_facts  # noqa: E402
from .errors import LuneError  # noqa: E402
from .models import load_model  # noqa: E402
from .negatives import build_negatives  # noqa: E402

__all__ = [
    "unlearn", "evaluate", "evaluate_benchmark", "generate", "merge", "load_model", "build_negatives", "read_facts", "Fact", "LuneError",
    "UnlearnConfig", "RunSettings", "LoraSettings", "TrainSettings", "NegativeSettings",
]


def __getattr__(name: str):
    # Benchmark evaluation pulls in scikit-learn, scipy and rouge-score: imported on first use only.
    if name == "evaluate_benchmark":
        from .eval.suite import evaluate_benchmark

        return evaluate_benchmark
    raise AttributeError(f"module 'lune' has no attribute {name!r}")
