"""Write a report as JSON (stable schema) and a markdown table a person reads first."""

from __future__ import annotations

import json
from pathlib import Path

SHOWN = ("usr", "apr", "usr_known", "apr_known", "retain_acc", "gur", "forget_prob", "retain_prob", "repeats")


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
        lines += ["", "## Cost", "", *cost_table(report["cost"])]
    for title, key in (("Forget probes", "facts"), ("Retain probes", "retain")):
        rows = report.get(key) or []
        if rows:
            lines += ["", f"## {title}", "", "| prompt | answer | before | after |", "|---|---|---|---|"]
            for r in rows:
                cell = lambda s: s.replace("|", "\\|").replace("\n", " ").strip()
                lines.append(f"| {cell(r['prompt'])} | {cell(r['answer'])} | {cell(r['before'])} | {cell(r['after'])} |")
    return "\n".join(lines) + "\n"


def cost_table(cost: dict) -> list[str]:
    """Markdown lines: the cost figures in one row, then seconds and peak RSS so far per phase."""
    flat = {k: v for k, v in cost.items() if not isinstance(v, dict)}
    lines = ["| " + " | ".join(flat) + " |", "|" + "---|" * len(flat), "| " + " | ".join(_fmt(v) for v in flat.values()) + " |"]
    if cost.get("phases_s"):
        peaks = cost.get("phases_peak_rss_mb", {})
        lines += ["", "| phase | seconds | peak RSS MB at its end |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v)} | {_fmt(peaks.get(k))} |" for k, v in cost["phases_s"].items()]
    return lines


def write_report(report: dict, directory: Path) -> None:
    data = {k: v for k, v in report.items() if k != "peft_model"}
    (directory / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    (directory / "report.md").write_text(markdown(data))


# ---------------------------------------------------------------- benchmark reports (lune.eval.suite)

MAX_ROWS = 20  # per-probe rows shown in report.md; report.json has them all
FIRST = ("usr", "apr", "gur", "retain_acc", "mia")  # the paper's headline metrics lead the table


def _cell(s) -> str:
    return _fmt(s).replace("|", "\\|").replace("\n", " ").strip()


def metric_order(report: dict) -> list[str]:
    """Every metric of a benchmark report, the headline ones (``FIRST``) first."""
    names = [*report["metrics"]["before"], *(report["metrics"].get("after") or {})]
    return list(dict.fromkeys([*(k for k in FIRST if k in names), *names]))


def benchmark_table(report: dict) -> str:
    """The metric table of a benchmark report (markdown): metric, direction, before, after."""
    before, after = report["metrics"]["before"], report["metrics"].get("after")
    lines = ["| metric | direction | before | after |" if after else "| metric | direction | value |",
             "|---|---|---|---|" if after else "|---|---|---|"]
    for k in metric_order(report):
        row = [k, report["directions"].get(k, ""), _fmt(before.get(k))] + ([_fmt(after.get(k))] if after else [])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def benchmark_markdown(report: dict) -> str:
    """report.md of a benchmark evaluation: settings, warnings, metrics, probe groups, cost, sample probes, plots."""
    c = report["config"]
    title = f"# lune eval: {report['benchmark']} on {report['model']}" + (f" + adapter {report['adapter']}" if report["adapter"] else "")
    git = (report["git_commit"] or "")[:10] + (" (dirty)" if report.get("git_dirty") else "") if report["git_commit"] else "no git checkout"
    lines = [title, "",
             f"Schema `{report['schema']}`; lune {report['versions']['lune']} ({git}); data {report['data']['source']}; "
             f"split {', '.join(f'{k}={v}' for k, v in report['data']['splits'].items()) or '–'}; targets {c['targets'] or 'all'}; limit {c['limit'] or 'none'}; "
             f"known-only: {report['known_only']['note']}. Greedy generation: {c['max_new_tokens']} new tokens per probe, "
             f"{c['long_new_tokens']} for TOFU ROUGE and fluency texts; format {c['format']}, dtype {c['dtype_used']}.", ""]
    lines += [f"> **Warning:** {w}" for w in report["warnings"]]
    lines += ["", benchmark_table(report), ""]
    if report["groups"]:
        after = report["metrics"].get("after") is not None
        lines += ["## Probe groups", "", "Answer rate = share of measured probes whose greedy completion contains the answer.", "",
                  "| group | role | probes | known by base | measured | answer rate before |" + (" after |" if after else ""),
                  "|---|---|---|---|---|---|" + ("---|" if after else "")]
        for g, d in report["groups"].items():
            row = [g, d["role"], d["n"], d["n_known"], d["n_kept"], _fmt(d["answer_rate"]["before"])] + ([_fmt(d["answer_rate"]["after"])] if after else [])
            lines.append("| " + " | ".join(map(str, row)) + " |")
        lines.append("")
    counts = report["counts"]["after"] or report["counts"]["before"]
    lines += ["Measured: " + ", ".join(f"{k.removeprefix('n_')} {v}" for k, v in counts.items()) + ".", "", "## Cost", ""]
    lines += cost_table(report["cost"])
    for role, rows in report["outcomes"].items():
        rows = [r for r in rows if r.get("kept", True)]
        if not rows:
            continue
        score = "rouge" if "rouge_before" in rows[0] else "answered"
        lines += ["", f"## {role.capitalize()} probes ({min(len(rows), MAX_ROWS)} of {len(rows)}; all in report.json)", "",
                  f"| group | prompt | answer | before | {score} | after | {score} |", "|---|---|---|---|---|---|---|"]
        for r in rows[:MAX_ROWS]:
            lines.append("| " + " | ".join(_cell(r[k]) for k in ("group", "prompt", "answer", "before", f"{score}_before", "after", f"{score}_after")) + " |")
    lines += ["", "![metrics](metrics.png)", "", "![outcomes](outcomes.png)"]
    return "\n".join(lines) + "\n"


def write_benchmark_report(report: dict, directory: Path) -> None:
    """report.json, report.md, metrics.png and outcomes.png of a benchmark evaluation into ``directory``."""
    from .eval.plots import metric_bars, outcome_grid  # matplotlib only when a report is written

    (directory / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (directory / "report.md").write_text(benchmark_markdown(report))
    metric_bars(report, directory / "metrics.png")
    outcome_grid(report, directory / "outcomes.png")
