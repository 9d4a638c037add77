"""Looping share (``lune.eval.metrics.repeats``) of the forget completions stored in result files.

Works on any JSON with a ``facts`` list of rows carrying ``kind``, ``before`` and ``after`` texts: a
run's ``report.json`` or ``benchmarks/results/heldout*.json``, including those written before reports
carried the metric.

    python benchmarks/repeats.py benchmarks/results/heldout*.json /tmp/lune-paper/counterfact/lune/report.json
"""

from __future__ import annotations

import argparse
import json
import sys

from lune.eval.metrics import repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="report.json or heldout*.json files")
    args = ap.parse_args(argv)
    print("| file | forget completions | repeats before | repeats after |\n|---|---|---|---|")
    for path in args.files:
        rows = [r for r in json.loads(open(path, encoding="utf-8").read()).get("facts", []) if r.get("kind") in ("prompt", "paraphrase")]
        if not rows:
            print(f"{path}: no forget rows", file=sys.stderr)
            continue
        share = lambda key: sum(repeats(r[key]) for r in rows) / len(rows)  # noqa: E731
        print(f"| {path} | {len(rows)} | {share('before'):.2f} | {share('after'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
