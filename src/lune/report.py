"""Write a report as JSON (stable schema) and a markdown table a person reads first."""

from __future__ import annotations

import json
from pathlib import Path

SHOWN = ("usr", "apr", "usr_known", "apr_known", "retain_acc", "gur", "forget_prob", "retain_prob")


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    """Before/after metrics table, cost, and per-fact outcomes."""
    before, after = report.get("before", {}), report.get("after")
    lines = [f"# lune report: {report.get('method', 'eval')} on {report['model']}", ""]
    lines += ["| metric | direction | before | after |" if after else "| metric | direction | value |",
              "|---|---|---|---|" if after else "|---|---|---|"]
    for k in SHOWN:
        if before.get(k) is None and (not after or after.get(k) is None):
            continue
        d = report["directions"].get(k, "")
        lines.append(f"| {k} | {d} | {_fmt(before.get(k))} | {_fmt(after.get(k))} |" if after else f"| {k} | {d} | {_fmt(before.get(k))} |")
    counts = after or before
    lines += ["", f"Probes: {counts.get('n_forget_prompts')} forget prompts, {counts.get('n_forget_paraphrases')} forget paraphrases, "
              f"{counts.get('n_retain_probes')} retain probes."]
    if report.get("unknown_facts"):
        lines += ["", f"**{len(report['unknown_facts'])} forget fact(s) were not produced by the model even before unlearning** "
                  "(usr_known/apr_known exclude them): " + ", ".join(map(str, report["unknown_facts"][:10]))]
    if "cost" in report:
        lines += ["", "## Cost", "", "| " + " | ".join(report["cost"]) + " |", "|" + "---|" * len(report["cost"]),
                  "| " + " | ".join(_fmt(v) for v in report["cost"].values()) + " |"]
    for title, key in (("Forget probes", "facts"), ("Retain probes", "retain")):
        rows = report.get(key) or []
        if rows:
            lines += ["", f"## {title}", "", "| prompt | answer | before | after |", "|---|---|---|---|"]
            for r in rows:
                cell = lambda s: s.replace("|", "\\|").replace("\n", " ").strip()
                lines.append(f"| {cell(r['prompt'])} | {cell(r['answer'])} | {cell(r['before'])} | {cell(r['after'])} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, directory: Path) -> None:
    data = {k: v for k, v in report.items() if k != "peft_model"}
    (directory / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    (directory / "report.md").write_text(markdown(data))
