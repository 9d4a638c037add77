"""How far a ROME update for one subject reaches other subjects' keys, per choice of key statistics.

A ROME edit at layer L is dW = delta u^T / (u^T k*), u = C^-1 k*: a key k is moved in proportion to
u^T k / u^T k* (1 for the edited subject's own key). This measures that ratio for "The capital of
France is" (subject France) against 15 other capitals' keys, on the default model, with C from the
model's own text ("self", lune's default), from a text file, and with C = I.

    python benchmarks/rome_key_overlap.py [--layer 5] [--corpus FILE ...]   # -> results/rome_key_overlap.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import lune
from lune.data import PromptFormat
from lune.editing import capture, find_arch, second_moments, subject_row
from lune.methods.rome import RomeSettings
from lune.models import cache_dir

HERE = Path(__file__).resolve().parent
OTHERS = ["Germany", "Italy", "Japan", "Spain", "Canada", "Austria", "Ireland", "Poland", "Egypt", "Brazil",
          "China", "India", "Mexico", "Russia", "Portugal"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=int, default=5, help="Edited layer (ROME's default for the default model: 5).")
    ap.add_argument("--corpus", nargs="*", default=["self", "identity"], help="Statistics sources (stats_corpus values).")
    ap.add_argument("--out", default=str(HERE / "results" / "rome_key_overlap.md"))
    args = ap.parse_args(argv)
    model, tok = lune.load_model("smollm2-135m")
    fmt, arch = PromptFormat(tok, "completion"), find_arch(model)
    rows = [subject_row(tok, fmt, f"The capital of {c} is", "prompt", c) for c in ["France"] + OTHERS]
    keys = capture(model, tok, arch, rows, [args.layer])[0][args.layer].double()  # (16, d_in); row 0 = France
    lines = [f"# Reach of a ROME update for France at layer {args.layer} (u^T k / u^T k*)", "",
             f"`python benchmarks/rome_key_overlap.py --layer {args.layer} --corpus {' '.join(args.corpus)}`", "",
             "| statistics | mean over 15 other capitals | max | tokens |", "|---|---|---|---|"]
    for corpus in args.corpus:
        stats = second_moments(model, tok, arch, [args.layer], corpus, RomeSettings().stats_tokens, cache_dir())
        C = stats.regularised(args.layer, RomeSettings().stats_ridge, keys)
        u = torch.linalg.solve(C, keys[0])
        reach = (keys[1:] @ u) / (keys[0] @ u)
        lines.append(f"| {corpus} | {reach.mean():.3f} | {reach.max():.3f} ({OTHERS[int(reach.argmax())]}) | {stats.tokens:,} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
