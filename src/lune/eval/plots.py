"""Figures of a benchmark report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

* ``metric_bars``: before/after bars per metric, each labelled with its direction.
* ``outcome_grid``: per probe (or TOFU question), answered before/after, forget and retain side by side.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..report import metric_order

SCALE = {"mia": 100.0}  # drawn divided by this, so that every bar is on a 0..1-ish axis


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def metric_bars(report: dict, path: Path) -> None:
    """Horizontal bars, one pair (before, after) per metric that has a value."""
    before, after = report["metrics"]["before"], report["metrics"].get("after") or {}
    names = [k for k in metric_order(report) if before.get(k) is not None or after.get(k) is not None]
    fig = Figure(figsize=(7, 0.35 * max(len(names), 2) + 1.2))
    ax = fig.add_subplot()
    y = range(len(names))
    h = 0.4 if after else 0.7
    ax.barh([i - (h / 2 if after else 0) for i in y], [(before.get(k) or 0) / SCALE.get(k, 1) for k in names], h, label="before (base)")
    if after:
        ax.barh([i + h / 2 for i in y], [(after.get(k) or 0) / SCALE.get(k, 1) for k in names], h, label="after (adapter)")
    arrow = {"higher": "↑", "lower": "↓"}
    ax.set_yticks(list(y), [f"{k}{' /' + str(int(SCALE[k])) if k in SCALE else ''} {arrow.get(report['directions'].get(k), '')}" for k in names])
    ax.invert_yaxis()
    ax.set_xlabel("value (arrow: better direction)")
    ax.set_title(f"{report['benchmark']} on {report['model']}" + (" (known-only)" if report["known_only"]["applied"] else ""))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small")
    _save(fig, path)


def outcome_grid(report: dict, path: Path) -> None:
    """Per probe: answered (1) or not (0) before and after, or ROUGE-L recall for TOFU; kept probes only."""
    panels = [(role, [r for r in report["outcomes"].get(role, []) if r.get("kept", True)]) for role in ("forget", "retain")]
    panels = [(role, rows) for role, rows in panels if rows]
    fig = Figure(figsize=(9, 1.6 * max(len(panels), 1) + 0.6))
    if not panels:
        fig.text(0.5, 0.5, "no probes measured", ha="center")
        _save(fig, path)
        return
    has_after = report["metrics"].get("after") is not None
    for n, (role, rows) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, n + 1)
        key = "rouge" if "rouge_before" in rows[0] else "answered"
        grid = [[float(r[f"{key}_before"]) for r in rows]]
        if has_after:
            grid.append([float(r[f"{key}_after"] or 0) for r in rows])
        ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(grid)), ["before", "after"][: len(grid)])
        starts = [i for i, r in enumerate(rows) if i == 0 or r["group"] != rows[i - 1]["group"]]
        for s in starts[1:]:
            ax.axvline(s - 0.5, color="tab:red", lw=1)
        ax.set_xticks([s - 0.5 for s in starts], [rows[s]["group"] for s in starts], fontsize="small", ha="left")
        what = "ROUGE-L recall (dark = high)" if key == "rouge" else "dark = answer produced"
        ax.set_title(f"{role}: {len(rows)} {'questions' if key == 'rouge' else 'probes'}, {what}", fontsize="medium")
    fig.tight_layout()
    _save(fig, path)
