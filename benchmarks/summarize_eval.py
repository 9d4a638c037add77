"""Collect `lune eval --benchmark` reports into one table of metrics, probe counts and cost.

    python benchmarks/summarize_eval.py REPORT_DIR [REPORT_DIR ...] --out benchmarks/results/base_eval

Writes OUT.json (metrics, group counts, cost and settings of each report; no per-probe outcomes, so
no benchmark text lands in the repository) and OUT.md (the tables).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _fmt(v) -> str:
    if v is None:
        return "null"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summarize(report: dict) -> dict:
    return {k: report[k] for k in ("benchmark", "model", "adapter", "config", "versions", "git_commit", "data", "known_only",
                                   "groups", "metrics", "directions", "counts", "warnings", "cost") if k in report}


def markdown(rows: list[dict]) -> str:
    out = ["# Benchmarks on the default model, before unlearning", ""]
    for r in rows:
        c, cfg = r["cost"], r["config"]
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (("targets", cfg.get("targets")), ("split", cfg.get("split")), ("limit", cfg.get("limit"))) if v)
        out += [f"## {r['benchmark']}", "",
                f"`lune eval --model {r['model']} --benchmark {r['benchmark']} {flags}{' --known-only' if cfg.get('known_only') else ''}`".replace("  ", " "),
                f"wall {c['wall_s']:.0f} s, peak RSS {c['peak_rss_mb']:.0f} MB, {c.get('n_probes', '?')} probes measured; "
                f"dtype {cfg.get('dtype_used')}, max_new_tokens {cfg.get('max_new_tokens')}", ""]
        if r.get("groups"):
            out += ["| probe group | role | probes | answered by the base model | measured |", "|---|---|---|---|---|"]
            out += [f"| {g} | {v['role']} | {v['n']} | {v['n_known']} | {v['n_kept']} |" for g, v in r["groups"].items()]
            out.append("")
        out += ["| metric | direction | before |", "|---|---|---|"]
        out += [f"| {k} | {r['directions'].get(k, '')} | {_fmt(v)} |" for k, v in (r["metrics"]["before"] or {}).items()]
        for w in r.get("warnings") or []:
            out += ["", f"> {w}"]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [summarize(json.loads((d / "report.json").read_text())) for d in args.reports]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    args.out.with_suffix(".md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
