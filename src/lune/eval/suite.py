"""Evaluate a model, and an unlearning adapter on it, on a public benchmark (RWKU, TOFU, CounterFact, zsRE).

    report = evaluate_benchmark("rwku", targets="1-10", known_only=True, adapter="runs/x", out="evals/rwku")

The model is loaded once. The base state is measured first; then the adapter is attached to the same
model (peft) and the same probes are measured again. Each benchmark's probe groups map to the LUNE
paper's metrics through one table, ``ROLES``. A probe is *answered* when its greedy completion
contains the answer (``lune.data.contains_answer``, via ``score_probes``).

``known_only`` keeps, per group, only the probes the base model answers, and reports how many there
were before and after filtering (USR is then 0 before by construction, GUR = retain_acc after).
It does not apply to TOFU (fictitious authors: the base model knows none of them).

Report (``SCHEMA``; written as report.json with report.md, metrics.png and outcomes.png):
    schema, benchmark, model, adapter, retain_model: what was evaluated
    config: every setting of the run (benchmark, source, targets, split, limit, known_only, generation settings)
    versions: lune, torch, transformers, peft, python;  git_commit, git_dirty: of the lune checkout (null if none)
    data: source, splits, RWKU targets, counts (``Benchmark.counts``, before filtering)
    roles: the ``ROLES`` row used (group names after ``probe_groups``)
    known_only: {applied, note}
    groups: {group: {role, n (probes loaded), n_known (answered by the base model), n_kept (measured),
        answer_rate: {before, after} (over the measured probes)}}
    metrics: {before: {...}, after: {...} | null}, every key a registered metric (``METRICS``)
    directions: {metric: "higher" | "lower"} for every metric in ``metrics``
    counts: {before: {...}, after: {...} | null}: probes, MIA texts, edit cases, TOFU questions measured
    outcomes: {forget: [...], retain: [...]}: per probe (answered_before/after, completions) or, for
        TOFU, per question (rouge_before/after, generations)
    edits: {cases, generations}: CounterFact/zsRE fluency generations per case
    warnings: [...];  cost: wall_s, peak_rss_mb (peak_cuda_mb), phases_s {phase: seconds}, phases_peak_rss_mb {phase: peak RSS at its end}, n_probes
"""

from __future__ import annotations

import logging
import math
import platform
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import __version__
from ..api import atomic_dir
from ..config import UnlearnConfig
from ..cost import CostMeter
from ..data import Fact, PromptFormat
from ..errors import LuneError
from ..models import load_adapter, load_model
from .datasets import Benchmark, load_benchmark
from .editing import edit_scores, fluency
from .metrics import METRICS, score_probes
from .mia import mia_auc
from .tofu import tofu_eval, tofu_truth_ratios

log = logging.getLogger(__name__)

SCHEMA = "lune.benchmark_eval/1"
LONG_NEW_TOKENS = 64  # TOFU ROUGE and fluency generations; the papers use 200 / 100, too slow on CPU


@dataclass(frozen=True)
class Roles:
    """Which probe groups feed which metric. Group names as in ``Benchmark.probes``; ``<g>_para`` holds the
    paraphrases of group g's facts (see ``probe_groups``); ``{split}`` is the benchmark split."""

    usr: tuple[str, ...] = ()  # forget probes: USR = share no longer answered
    apr: tuple[str, ...] = ()  # paraphrased / adversarial forget probes: APR (USR on them)
    retain: tuple[str, ...] = ()  # neighbour / retain probes: retain_acc, GUR = retain_acc after / before
    mia: tuple[str, str] | None = None  # (members, non-members): keys of ``Benchmark.mia``
    edits: bool = False  # ROME editing scores and fluency on ``Benchmark.edits``
    tofu: bool = False  # TOFU metrics on ``Benchmark.qa``
    known_only: bool = True  # whether known-only filtering means anything here


ROLES: dict[str, Roles] = {
    "rwku": Roles(usr=("forget_l1", "forget_l2"), apr=("forget_l3",), retain=("neighbor_l1", "neighbor_l2"), mia=("forget", "retain")),
    "counterfact": Roles(usr=("rewrite",), apr=("paraphrase",), retain=("neighborhood",), edits=True),
    "zsre": Roles(usr=("rewrite",), apr=("paraphrase",), retain=("neighborhood",), edits=True),  # split 'mend'
    # zsRE PII-unlearning splits: the inverse / one-hop / alias question probes the same knowledge indirectly.
    "zsre-pii": Roles(usr=("forget",), apr=("forget_para", "forget_{split}"), retain=("retain", "retain_para", "retain_{split}")),
    # TOFU answers are whole sentences: substring matching does not apply; its own metrics do.
    "tofu": Roles(mia=("forget", "holdout"), tofu=True, known_only=False),
}


def roles_for(bench: Benchmark) -> Roles:
    """The ``ROLES`` row of a loaded benchmark, its ``{split}`` filled in and absent groups dropped."""
    split = bench.splits.get("forget", "")
    key = "zsre-pii" if bench.name == "zsre" and split != "mend" else bench.name
    r = ROLES[key]
    have = set(probe_groups(bench))
    pick = lambda names: tuple(g for g in (n.format(split=split) for n in names) if g in have)  # noqa: E731
    return replace(r, usr=pick(r.usr), apr=pick(r.apr), retain=pick(r.retain), edits=r.edits and bool(bench.edits))


def probe_groups(bench: Benchmark) -> dict[str, list[Fact]]:
    """One prompt per probe: every group of ``bench.probes``, with its facts' paraphrases split off into ``<g>_para``."""
    out: dict[str, list[Fact]] = {}
    for g, facts in bench.probes.items():
        out[g] = [replace(f, paraphrases=[]) for f in facts]
        paras = [replace(f, prompt=p, paraphrases=[]) for f in facts for p in f.paraphrases]
        if paras:
            out[f"{g}_para"] = paras
    return out


def _rate(rows: list[dict]) -> float | None:
    return sum(r["answered"] for r in rows) / len(rows) if rows else None


def _mean_prob(rows: list[dict]) -> float | None:
    return sum(math.exp(r["answer_logprob"]) for r in rows) / len(rows) if rows else None


def role_metrics(rows: dict[str, list[dict]], roles: Roles, before: dict | None = None) -> tuple[dict, dict]:
    """(metrics, counts) of one model state from its scored probes per group.

    ``before``: the base state's metrics, for GUR (retain_acc after / retain_acc before).
    """
    pool = {k: [r for g in getattr(roles, k) for r in rows.get(g, [])] for k in ("usr", "apr", "retain")}
    m: dict = {}
    if roles.usr:
        m["usr"] = None if _rate(pool["usr"]) is None else 1 - _rate(pool["usr"])
        m["forget_prob"] = _mean_prob(pool["usr"])
    if roles.apr:
        m["apr"] = None if _rate(pool["apr"]) is None else 1 - _rate(pool["apr"])
    if roles.retain:
        m["retain_acc"] = _rate(pool["retain"])
        m["retain_prob"] = _mean_prob(pool["retain"])
        if before is not None:
            acc0 = before.get("retain_acc")
            m["gur"] = m["retain_acc"] / acc0 if acc0 and m["retain_acc"] is not None else None
    counts = {f"n_{k}_probes": len(v) for k, v in pool.items() if getattr(roles, k)}
    return m, counts


def _score(model, tok, fmt, groups: dict[str, list[Fact]], cfg: UnlearnConfig, label: str) -> dict[str, list[dict]]:
    kw = dict(max_new_tokens=cfg.run.max_new_tokens, batch_size=cfg.run.eval_batch_size)
    return {g: score_probes(model, tok, fmt, facts, desc=f"{label}: {g}", **kw) for g, facts in groups.items()}


def _other_metrics(model, tok, fmt, bench: Benchmark, roles: Roles, cases: list, cfg: UnlearnConfig, long_new_tokens: int,
                   ref_truth_ratios: list | None, phase, label: str) -> tuple[dict, dict, dict]:
    """(metrics, counts, extras) of the non-probe metrics: MIA, editing scores + fluency, TOFU."""
    m, counts, extra = {}, {}, {}
    bs = cfg.run.eval_batch_size
    if roles.mia:
        members, nonmembers = (bench.mia.get(k, []) for k in roles.mia)
        if members and nonmembers:
            with phase(f"{label}: mia"):
                res = mia_auc(model, tok, members, nonmembers, batch_size=bs)  # long texts: core batches them by a token budget
            m.update({k: v for k, v in res.items() if k in METRICS})
            counts.update(n_mia_members=res["n_members"], n_mia_nonmembers=res["n_nonmembers"])
    if cases:
        with phase(f"{label}: edits"):
            res = edit_scores(model, tok, cases, fmt, batch_size=bs)
            flu = fluency(model, tok, [c.prompt for c in cases], max_new_tokens=long_new_tokens, batch_size=bs, style=cases[0].style, fmt=fmt)
        m.update({k: v for k, v in res.items() if k in METRICS}, fluency=flu["fluency"])
        counts.update({f"n_edit_{k.removeprefix('n_')}": v for k, v in res.items() if k.startswith("n_")})
        extra["generations"] = flu["generations"]
    if roles.tofu:
        with phase(f"{label}: tofu"):
            res = tofu_eval(model, tok, bench.qa["forget"], bench.qa.get("retain"), bench.qa.get("real_authors"), bench.qa.get("world_facts"),
                            retain_truth_ratios=ref_truth_ratios, max_new_tokens=long_new_tokens, batch_size=bs, fmt=fmt)
        m.update({k: v for k, v in res.items() if k in METRICS})
        counts.update({f"n_tofu_{s}": d["n"] for s, d in res["splits"].items()})
        extra["tofu"] = {s: d["rows"] for s, d in res["splits"].items()}
    return m, counts, extra


def _versions() -> dict:
    import peft
    import transformers

    return {"lune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _git() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout lune is imported from, or (None, None) when it is not one."""
    pkg = Path(__file__).resolve().parents[1]
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=pkg, capture_output=True, text=True, timeout=10)  # noqa: E731
        if run("ls-files", "--error-unmatch", "__init__.py").returncode != 0:  # e.g. installed inside some other repo
            return None, None
        head = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (head.stdout.strip() or None, bool(dirty.stdout.strip())) if head.returncode == 0 else (None, None)


def _outcome_rows(groups, kept, before, after, roles_of) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"forget": [], "retain": []}
    for g, facts in groups.items():
        if g not in roles_of:
            continue
        keep = set(kept[g])
        b_rows, a_rows = before[g], iter(after.get(g, []) if after is not None else [])
        for i, (f, b) in enumerate(zip(facts, b_rows)):
            a = next(a_rows) if after is not None and i in keep else None
            out["retain" if roles_of[g] == "retain" else "forget"].append({
                "group": g, "prompt": f.prompt, "answer": f.answer, "source": f.source, "kept": i in keep,
                "before": b["completion"], "after": a["completion"] if a else None,
                "answered_before": b["answered"], "answered_after": a["answered"] if a else None,
            })
    return out


def _tofu_rows(bench: Benchmark, before: dict, after: dict | None) -> dict[str, list[dict]]:
    out = {}
    for role, split in (("forget", "forget"), ("retain", "retain")):
        if split not in before:
            continue
        a_rows = after[split] if after else [None] * len(before[split])
        out[role] = [{"group": split, "prompt": q.question, "answer": q.answer, "source": q.source,
                      "before": b["generation"], "after": a["generation"] if a else None,
                      "rouge_before": b["rouge"], "rouge_after": a["rouge"] if a else None}
                     for q, b, a in zip(bench.qa[split], before[split], a_rows)]
    return out


def evaluate_benchmark(
    name: str,
    model: str = "smollm2-135m",
    adapter: str | Path | None = None,
    source: str | Path | None = None,
    targets=None,
    split: str | None = None,
    limit: int | None = None,
    known_only: bool = False,
    retain_model: str | None = None,
    config: UnlearnConfig | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    long_new_tokens: int = LONG_NEW_TOKENS,
) -> dict:
    """Measure a benchmark's paper metrics on a model, before (base) and after (with ``adapter``) when one is given.

    Args:
        name: 'rwku', 'tofu', 'counterfact' or 'zsre'.
        model: base model spec (as ``lune.load_model``); loaded once.
        adapter: a run directory or adapter folder (``lune unlearn`` output) to evaluate against the base.
        source, targets, split, limit: as ``lune.eval.datasets.load_benchmark`` (``limit`` caps each probe
            group, MIA list and TOFU split at load time, before any known-only filtering).
        known_only: keep only the probes the base model answers, per group (not for TOFU: warned, not applied).
        retain_model: TOFU only: a model trained on the retain set only (its tokenizer is loaded with it);
            needed for forget quality, which is otherwise None with a warning.
        config: generation settings (``run.max_new_tokens``, ``run.eval_batch_size``, ``run.format``,
            ``train.device``, ``train.dtype``, ``run.trust_remote_code``).
        out: report directory (report.json, report.md, metrics.png, outcomes.png), written atomically.
        overwrite: replace an existing ``out``.
        long_new_tokens: tokens generated for TOFU ROUGE and for fluency (the papers use 200 and 100).

    Returns:
        The report (see the module docstring for its schema).
    """
    cfg = config or UnlearnConfig()
    meter, warnings = CostMeter(), []
    phase = meter.phase
    if out is not None and Path(out).exists() and not overwrite:  # fail before any expensive work
        raise LuneError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    if not isinstance(long_new_tokens, int) or long_new_tokens < 1:
        raise LuneError(f"long_new_tokens must be a positive integer, got {long_new_tokens!r}")
    if retain_model is not None and name != "tofu":
        raise LuneError(f"a retain model is only used for TOFU forget quality, not for {name!r}")

    def warn(msg: str) -> None:
        log.warning(msg)
        warnings.append(msg)

    with phase("load data"):
        bench = load_benchmark(name, source=source, targets=targets, split=split, limit=limit)
    roles = roles_for(bench)
    filtering = known_only and roles.known_only
    if known_only and not roles.known_only:
        warn(f"--known-only does not apply to {name}: the base model has not learnt TOFU's fictitious authors; nothing was filtered")
    if roles.tofu and retain_model is None:
        warn("TOFU forget quality NOT computed (null): it needs a model trained on the retain set only (--retain-model)")

    roles_of = {g: role for role in ("usr", "apr", "retain") for g in getattr(roles, role)}
    groups = {g: fs for g, fs in probe_groups(bench).items() if g in roles_of}
    ref_tr = None
    if retain_model is not None:
        with phase("retain model: truth ratios"):
            rm, rtok = load_model(retain_model, cfg.train.device, cfg.train.dtype, cfg.run.trust_remote_code)
            ref_tr = tofu_truth_ratios(rm, rtok, bench.qa["forget"], PromptFormat(rtok, cfg.run.format), cfg.run.eval_batch_size)
            del rm
    with phase("load model"):
        base, tok = load_model(model, cfg.train.device, cfg.train.dtype, cfg.run.trust_remote_code)
    fmt = PromptFormat(tok, cfg.run.format)

    with phase("base: probes"):
        all_before = _score(base, tok, fmt, groups, cfg, "base")
    kept = {g: [i for i, r in enumerate(rows) if r["answered"] or not filtering] for g, rows in all_before.items()}
    for g, idx in kept.items():
        if filtering and not idx:
            warn(f"known-only: the base model answers none of the {len(groups[g])} probes of group {g!r}; its metrics are null")
    sub = lambda d: {g: [d[g][i] for i in kept[g]] for g in d}  # noqa: E731
    kept_groups, before_rows = sub(groups), sub(all_before)
    # Edit case i is the case of rewrite probe i; without a target_new a case cannot be scored.
    cases = [bench.edits[i] for i in kept.get("rewrite", [])] if roles.edits else []
    if any(not c.target_new for c in cases):
        warn(f"{sum(not c.target_new for c in cases)} editing case(s) without target_new left out of the editing scores")
    cases = [c for c in cases if c.target_new]

    m_before, c_before = role_metrics(before_rows, roles)
    om, oc, ex_before = _other_metrics(base, tok, fmt, bench, roles, cases, cfg, long_new_tokens, ref_tr, phase, "base")
    m_before.update(om)
    c_before.update(oc)
    m_after = c_after = after_rows = ex_after = None
    if adapter is not None:
        with phase("load adapter"):
            tuned = load_adapter(base, adapter)
        with phase("adapter: probes"):
            after_rows = _score(tuned, tok, fmt, kept_groups, cfg, "adapter")
        m_after, c_after = role_metrics(after_rows, roles, before=m_before)
        om, oc, ex_after = _other_metrics(tuned, tok, fmt, bench, roles, cases, cfg, long_new_tokens, ref_tr, phase, "adapter")
        m_after.update(om)
        c_after.update(oc)

    git_commit, git_dirty = _git()
    report = {
        "schema": SCHEMA,
        "benchmark": name,
        "model": model,
        "adapter": str(adapter) if adapter is not None else None,
        "retain_model": retain_model,
        "config": {"benchmark": name, "source": None if source is None else str(source), "targets": None if targets is None else str(targets),
                   "split": split, "limit": limit, "known_only": known_only, "model": model,
                   "adapter": str(adapter) if adapter is not None else None, "retain_model": retain_model,
                   "format": cfg.run.format, "max_new_tokens": cfg.run.max_new_tokens, "long_new_tokens": long_new_tokens,
                   "eval_batch_size": cfg.run.eval_batch_size, "device": cfg.train.device, "dtype": cfg.train.dtype,
                   "dtype_used": str(next(base.parameters()).dtype).replace("torch.", "")},
        "versions": _versions(),
        "git_commit": git_commit,
        "git_dirty": git_dirty,
        "data": {"source": bench.source, "splits": bench.splits, "targets": {str(k): v for k, v in bench.targets.items()}, "counts": bench.counts()},
        "roles": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(roles).items()},
        "known_only": {
            "applied": filtering,
            "note": ("kept only the probes the base model answers, per group; editing scores and fluency cover the cases whose "
                     "rewrite probe was kept; MIA texts are not filtered" if filtering else
                     "not applicable to TOFU (fictitious authors); nothing filtered" if known_only else "off: every probe is measured"),
        },
        "groups": {g: {"role": roles_of[g], "n": len(all_before[g]), "n_known": sum(r["answered"] for r in all_before[g]), "n_kept": len(kept[g]),
                       "answer_rate": {"before": _rate(before_rows[g]), "after": None if after_rows is None else _rate(after_rows[g])}}
                   for g in groups},
        "metrics": {"before": m_before, "after": m_after},
        "directions": {k: "higher" if METRICS[k].higher_is_better else "lower" for k in {**m_before, **(m_after or {})}},
        "counts": {"before": c_before, "after": c_after},
        "outcomes": (_tofu_rows(bench, ex_before["tofu"], ex_after and ex_after["tofu"]) if roles.tofu
                     else _outcome_rows(groups, kept, all_before, after_rows, roles_of)),
        "edits": {"cases": [asdict(c) for c in cases], "generations": {"before": ex_before.get("generations"),
                  "after": ex_after and ex_after.get("generations")}} if cases else None,
        "warnings": warnings,
    }
    n_probes = sum(map(len, all_before.values())) + (sum(map(len, after_rows.values())) if after_rows else 0)
    report["cost"] = meter.block(n_probes=n_probes)
    if out is not None:
        from ..report import write_benchmark_report

        with atomic_dir(out, overwrite) as tmp:
            write_benchmark_report(report, tmp)
        report["out"] = str(out)
    return report
