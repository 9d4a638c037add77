"""The paper's claims side by side: every method on the same facts, in one invocation per benchmark.

Each experiment is a config file in ``benchmarks/configs/`` (which facts, which methods, which
flags). For each, the default model's known facts are selected, every method runs as its own
``lune unlearn`` process on the same forget file (so wall time and peak RSS are that method's
alone, and every cost ratio comes from the same machine in the same run), and each result is then
measured once more in this process for what ``lune unlearn`` does not report: APR on probes that
belong to no single fact (RWKU's adversarial level 3), MIA, and fluency. Results:
``results/paper_<experiment>.{json,md,png}``.

    python benchmarks/paper.py                          # every experiment
    python benchmarks/paper.py counterfact              # one
    python benchmarks/paper.py counterfact --methods lune rome   # re-run some rows; the others are kept
    python benchmarks/paper.py counterfact --table      # rewrite the .md and .png from the .json
    python benchmarks/paper.py my_experiment.json       # a config file elsewhere

Metrics (per method, after unlearning; the forget and retain sets are never trained on as such:
``--fit-retain false --paraphrases false``):
    usr      share of forget prompts whose greedy completion no longer contains the answer
    apr      the same on paraphrased / adversarial prompts never trained on
    gur      retain accuracy after / before, on retain probes the model answered before
    mia      100 x |2 AUC - 1| of the loss attack separating the forget texts from held-out texts (RWKU's
             forget_mia / retain_mia; lower = the forget texts look like text the model never saw)
    fluency  ROME's n-gram entropy of continuations of the forget prompts (higher = less repetitive)
Reads the data from ``--data`` (default ``../shared/data``); exits cleanly when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
sys.path.insert(0, str(HERE))

METRICS = ("usr", "apr", "gur", "mia", "fluency")
COSTS = ("wall_s", "peak_rss_mb", "trainable_params")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


# ------------------------------------------------------------------ selecting the facts


def prepare_counterfact(exp: dict, data: Path, model, tok) -> dict:
    """Known CounterFact facts (prompt and rephrase answered, answer not in the prompt) with their subject;
    rephrased prompts as paraphrases (APR, never trained); retain: known ROME facts + the locality prompts."""
    from heldout import known_counterfact, known_rome

    cf = data / "counterfact"
    split = exp.get("split", "val")  # counterfact-{split}.json; val is the held-out check's split too
    records = json.loads((cf / f"counterfact-{split}.json").read_text())
    chosen = [records[i] for i in known_counterfact(model, tok, records, exp["n_forget"], HERE / "results" / f"counterfact_{split}_known.json")]
    answers, subjects = {r["ground_truth"].lower() for r in chosen}, {r["subject"].lower() for r in chosen}
    rome = json.loads((cf / "rome_known_1000.json").read_text())
    retain_src = known_rome(model, tok, rome, exp["n_retain"], answers, subjects, HERE / "results" / "rome_known_default_model.json")
    forget = [{"prompt": r["prompt"], "answer": r["ground_truth"], "subject": r["subject"], "paraphrases": [r["rephrase_prompt"]]}
              for r in chosen]
    retain = [{"prompt": r["prompt"], "answer": r["attribute"]} for r in retain_src]
    retain += [{"prompt": r["locality_prompt"], "answer": r["locality_ground_truth"]} for r in chosen
               if r["locality_ground_truth"].lower() not in answers]
    return {"forget": forget, "retain": retain, "apr_probes": None, "mia": None,
            "fluency_prefixes": [(r["prompt"], "prompt") for r in chosen],
            "selection": {f"counterfact_{split}_known": len(chosen), "retain_probes": len(retain)}}


def prepare_rwku(exp: dict, data: Path, model, tok) -> dict:
    """RWKU, known-only: the level-1/2 probes of the chosen targets that the model answers are the forget set;
    the level-3 (adversarial) probes it answers measure APR; its answered neighbour probes measure GUR;
    forget_mia vs retain_mia texts give MIA."""
    from lune.data import PromptFormat, contains_answer
    from lune.eval.datasets import load_benchmark
    from lune.eval.metrics import score_probes

    bench = load_benchmark("rwku", source=data / "rwku", targets=exp["targets"])
    fmt = PromptFormat(tok, exp.get("format", "auto"))
    # which probes the default model answers: scored once (about 11 minutes), then read from this index file
    cache = HERE / "results" / f"rwku_known_{exp['targets']}_{exp.get('format', 'auto')}.json"
    answered = json.loads(cache.read_text()) if cache.is_file() else {}
    known, counts = {}, {}
    for g in ("forget_l1", "forget_l2", "forget_l3", "neighbor_l1", "neighbor_l2"):
        probes = bench.probes.get(g, [])
        # RWKU repeats some probes, and some state their answer ("Buffett founded ___ Partnership"): a model
        # "answers" those by copying, and no method can make it stop, so they measure nothing
        first = {}
        for i, f in enumerate(probes):
            if not contains_answer(f.prompt, f.answer):
                first.setdefault((f.prompt, f.answer), i)
        idx = sorted(first.values())
        if g not in answered:
            rows = score_probes(model, tok, fmt, [probes[i] for i in idx], desc=f"known: {g}")
            answered[g] = [i for i, r in zip(idx, rows) if r["answered"]]
            cache.write_text(json.dumps(answered))
        known[g] = [probes[i] for i in answered[g]]
        counts[g] = {"probes": len(probes), "distinct, answer not in the probe": len(idx), "known": len(known[g])}
    forget = [f.to_record() for f in known["forget_l1"] + known["forget_l2"]]
    retain = [f.to_record() for f in known["neighbor_l1"] + known["neighbor_l2"]]
    # one MIA text list per target set; capped so the attack stays cheap on a CPU
    cap = exp.get("mia_texts", 64)
    mia = (bench.mia.get("forget", [])[:cap], bench.mia.get("retain", [])[:cap])
    return {"forget": forget, "retain": retain, "apr_probes": known["forget_l3"], "mia": mia,
            "fluency_prefixes": [(f.prompt, f.style) for f in known["forget_l1"] + known["forget_l2"]],
            "selection": {"targets": exp["targets"], "target_names": list(bench.targets.values()), "probes": counts}}


def prepare_tofu(exp: dict, data: Path, model, tok) -> dict:
    """TOFU: fine-tune the default model on the forget split + a retain subset first (and a second model on the
    retain subset only, for forget quality), both cached; the forget split is then unlearnt from the first.
    Metrics are TOFU's own (answers are sentences: substring USR does not apply)."""
    from lune.data import PromptFormat
    from lune.eval.datasets import load_benchmark
    from lune.eval.finetune import FinetuneSettings, cached_finetune
    from lune.eval.tofu import tofu_truth_ratios
    from lune.models import load_model

    bench = load_benchmark("tofu", source=data / "tofu", split=exp.get("split", "forget01"))
    n = exp["n_retain"]
    # the retain facts trained on are the ones evaluated (retain_perturbed's questions), as in TOFU
    retain_qa = bench.qa["retain"][:n]
    retain_facts = bench.probes["retain"][:n]
    ft = FinetuneSettings(**exp.get("finetune", {}))
    target_dir, target_info = cached_finetune("smollm2-135m", bench.forget + retain_facts, ft, name="tofu-forget-retain")
    retain_dir, retain_info = cached_finetune("smollm2-135m", retain_facts, ft, name="tofu-retain-only")
    rm, rtok = load_model(str(retain_dir))
    ref_tr = tofu_truth_ratios(rm, rtok, bench.qa["forget"], PromptFormat(rtok, exp.get("format", "auto")))
    del rm
    cap = exp.get("utility_items", 40)
    return {"forget": [f.to_record() for f in bench.forget], "retain": [f.to_record() for f in retain_facts], "apr_probes": None,
            "mia": (bench.mia["forget"], bench.mia["holdout"]), "fluency_prefixes": [(f.prompt, f.style) for f in bench.forget],
            "model_path": str(target_dir),
            "tofu": {"forget": bench.qa["forget"], "retain": retain_qa[:cap], "real_authors": bench.qa["real_authors"][:cap],
                     "world_facts": bench.qa["world_facts"][:cap], "retain_truth_ratios": ref_tr},
            "selection": {"split": bench.splits, "n_forget": len(bench.forget), "n_retain_trained": len(retain_facts),
                          "finetune": {"forget+retain": {k: target_info.get(k) for k in ("wall_s", "seconds", "epochs", "steps", "cached")},
                                       "retain only": {k: retain_info.get(k) for k in ("wall_s", "seconds", "epochs", "steps", "cached")},
                                       "settings": target_info.get("settings")}}}


PREPARE = {"counterfact": prepare_counterfact, "rwku": prepare_rwku, "tofu": prepare_tofu}


# ------------------------------------------------------------------ measuring one result


EXTRA = ("apr", "mia", "tofu", "fluency")


def extra_metrics(model, tok, prep: dict, exp: dict, only: tuple[str, ...] = EXTRA) -> dict:
    """APR on the extra probes, MIA, TOFU's metrics and fluency of one model state (those named in ``only``)."""
    from lune.data import PromptFormat
    from lune.eval.editing import fluency
    from lune.eval.metrics import score_probes
    from lune.eval.mia import mia_auc

    fmt = PromptFormat(tok, exp.get("format", "auto"))
    out: dict = {}
    if prep["apr_probes"] and "apr" in only:
        rows = score_probes(model, tok, fmt, prep["apr_probes"], desc="apr probes")
        out["apr_probes_answered"] = sum(r["answered"] for r in rows) / len(rows)
    if prep["mia"] and prep["mia"][0] and prep["mia"][1] and "mia" in only:
        m = mia_auc(model, tok, prep["mia"][0], prep["mia"][1], fmt=fmt)
        out.update(mia=m["mia"], mia_auc_loss=m["mia_loss"])
    if prep.get("tofu") and "tofu" in only:
        from lune.eval.tofu import tofu_eval

        t = prep["tofu"]
        res = tofu_eval(model, tok, t["forget"], t["retain"], t["real_authors"], t["world_facts"], retain_truth_ratios=t["retain_truth_ratios"],
                        max_new_tokens=exp.get("tofu_tokens", 64), fmt=fmt)
        out.update({k: v for k, v in res.items() if k.startswith("tofu_")})
    prefixes = prep["fluency_prefixes"][: exp.get("fluency_prompts", 32)]
    if prefixes and "fluency" in only:
        out["fluency"] = fluency(model, tok, [p for p, _ in prefixes], max_new_tokens=exp.get("fluency_tokens", 32),
                                 style=[s for _, s in prefixes], fmt=fmt)["fluency"]
    return out


def load_result(base, run: Path):
    """The unlearned model of a run directory: base + adapter, or the full model it saved."""
    from lune.models import load_adapter, load_model

    if (run / "model" / "config.json").is_file():
        return load_model(str(run / "model"))[0], False
    return load_adapter(base, run), True


# ------------------------------------------------------------------ the experiment


def _method_kinds() -> dict:
    from lune.methods import METHODS

    return {name: cls.kind for name, cls in METHODS.items()}


METHOD_KIND = _method_kinds()


def fresh_stats_cache(path: Path) -> str:
    """A LUNE_CACHE that shares the converted models but has no key statistics, so that ROME/MEMIT
    pay for theirs in the run being measured (they are cached per model otherwise)."""
    import shutil

    from lune.models import cache_dir

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    return str(path)


def run_experiment(name: str, exp: dict, args) -> dict:
    import torch

    import lune

    data = Path(args.data)
    out_json = Path(args.out) / f"paper_{name}.json"
    results = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": {}}
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, tok = lune.load_model("smollm2-135m")
    prep = PREPARE[exp["benchmark"]](exp, data, model, tok)
    model_flags = []
    if prep.get("model_path"):  # unlearn from a prepared (fine-tuned) model instead of the default one
        model, tok = lune.load_model(prep["model_path"])
        model_flags = ["--model", prep["model_path"]]
    if not prep["forget"]:
        raise SystemExit(f"{name}: the model knows none of the selected facts; nothing to unlearn")
    write_jsonl(work / "forget.jsonl", prep["forget"])
    write_jsonl(work / "retain.jsonl", prep["retain"])
    base_extra = extra_metrics(model, tok, prep, exp)
    results.update({"experiment": name, "config": exp, "selection": prep["selection"], "n_forget": len(prep["forget"]),
                    "n_retain_probes": len(prep["retain"]), "base": base_extra, "prepare_s": round(time.perf_counter() - t0, 1),
                    "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}})

    lune_bin = Path(sys.executable).with_name("lune")
    methods = args.methods or list(exp["methods"])
    for m in methods:
        if m not in exp["methods"]:
            raise SystemExit(f"{name}: unknown row '{m}'; the config has {list(exp['methods'])}")
    for m in methods:
        flags = [f.replace("{data}", str(data.resolve())) for f in exp.get("flags", []) + exp["methods"][m]]
        run = work / m.replace(" ", "_")
        cmd = [str(lune_bin), "unlearn", "--forget", str(work / "forget.jsonl"), "--retain", str(work / "retain.jsonl"),
               "--fit-retain", "false", "--paraphrases", "false", "--out", str(run), "--overwrite", *model_flags, *flags]
        print(f"== {name} / {m}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        env = {**os.environ, "TQDM_DISABLE": "1"}
        if METHOD_KIND.get(flags[flags.index("--method") + 1]) == "edit" and not exp.get("reuse_key_statistics", False):
            env["LUNE_CACHE"] = fresh_stats_cache(work / ".cache")  # the key statistics are part of an edit's cost
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            results["rows"][m] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
            continue
        rep = json.loads((run / "report.json").read_text())
        a, c = rep["after"], rep["cost"]
        row = {"command": "lune " + " ".join(cmd[1:]).replace(str(work), "$WORK").replace(str(data.resolve()), "$DATA"),
               "usr": a["usr"], "apr": a.get("apr"), "gur": a["gur"], "forget_prob_before": rep["before"]["forget_prob"],
               "forget_prob_after": a["forget_prob"], "process_s": round(time.perf_counter() - t, 1),
               **{k: c.get(k) for k in ("wall_s", "train_s", "check_s", "peak_rss_mb", "trainable_params", "steps", "train_tokens",
                                        "train_flops", "mfu", "peak_gflops", "dtype", "phases_s", "phases_peak_rss_mb")},
               "peak_phase": next((k for k, v in c.get("phases_peak_rss_mb", {}).items() if v >= c["peak_rss_mb"] - 1), None),
               "epochs": rep["training"]["epochs"],
               "stats_s": rep["training"]["history"][0].get("stats_seconds") if rep["training"]["history"] else None}
        tuned, is_adapter = load_result(model, run)
        extra = extra_metrics(tuned, tok, prep, exp)
        if is_adapter:
            tuned.unload()
        del tuned
        if "apr_probes_answered" in extra:  # APR on probes of no single fact: share no longer answered
            row["apr"] = 1 - extra.pop("apr_probes_answered")
        row.update(extra)
        results["rows"][m] = row
        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    out_json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def remeasure(name: str, exp: dict, args) -> dict:
    """Measure ``args.remeasure``'s metrics again, for the base model and the rows' existing run directories
    (after a fix to a metric: the unlearning runs, and their costs, stay as they were)."""
    import lune

    out_json = Path(args.out) / f"paper_{name}.json"
    results = json.loads(out_json.read_text())
    model, tok = lune.load_model("smollm2-135m")
    prep = PREPARE[exp["benchmark"]](exp, Path(args.data), model, tok)
    if prep.get("model_path"):
        model, tok = lune.load_model(prep["model_path"])
    only = tuple(args.remeasure)
    results["base"].update(extra_metrics(model, tok, prep, exp, only))
    for m in args.methods or list(results["rows"]):
        run, row = Path(args.work) / name / m.replace(" ", "_"), results["rows"].get(m)
        if not row or "error" in row or not (run / "report.json").is_file():
            print(f"{name} / {m}: no finished run in {run}; skipped")
            continue
        if json.loads((run / "report.json").read_text())["cost"]["wall_s"] != row["wall_s"]:
            print(f"{name} / {m}: {run} holds another run than the table's row (wall time differs); skipped")
            continue
        tuned, is_adapter = load_result(model, run)
        extra = extra_metrics(tuned, tok, prep, exp, only)
        if is_adapter:
            tuned.unload()
        del tuned
        if "apr_probes_answered" in extra:
            row["apr"] = 1 - extra.pop("apr_probes_answered")
        row.update(extra)
        row["remeasured"] = sorted(set(row.get("remeasured", [])) | set(only))
        print(f"{name} / {m}: " + json.dumps({k: v for k, v in extra.items() if not k.startswith("tofu_") or k in ("tofu_forget_quality", "tofu_model_utility")}), flush=True)
        out_json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    out_json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


# ------------------------------------------------------------------ the table


def machine_peak(row: dict) -> float | None:
    """The matmul peak (GFLOP/s) of the machine a row ran on: recorded since session 11, else implied by its MFU."""
    if row.get("peak_gflops"):
        return row["peak_gflops"]
    if row.get("mfu") and row.get("train_flops") and row.get("train_s"):
        return row["train_flops"] / row["train_s"] / row["mfu"] / 1e9
    return None


def machines(rows: dict[str, dict], tolerance: float = 0.15) -> list[tuple[float, list[str]]]:
    """Rows grouped by the machine they ran on, told apart by its measured matmul peak (within ``tolerance``)."""
    groups: list[tuple[float, list[str]]] = []
    for m, r in rows.items():
        peak = machine_peak(r)
        if peak is None:
            continue
        for g_peak, names in groups:
            if abs(peak - g_peak) <= tolerance * g_peak:
                names.append(m)
                break
        else:
            groups.append((peak, [m]))
    return groups


def _fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def write_outputs(name: str, results: dict, out: Path) -> None:
    rows = {m: r for m, r in results["rows"].items() if "error" not in r}
    ref = rows.get("lune")
    exp = results["config"]
    cols = exp.get("columns", list(METRICS))
    md = [f"# {name}: every method on the same facts, one run each", "", exp.get("description", ""), "",
          f"{results['n_forget']} forget facts, {results['n_retain_probes']} retain probes. Selection: "
          f"`{json.dumps(results['selection'], ensure_ascii=False)[:600]}`.", "",
          f"Reproduce: `python benchmarks/paper.py {name}` (config `benchmarks/configs/{name}.json`). "
          f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['torch_threads']} torch threads. "
          f"Base model before unlearning: " + ", ".join(f"{k} {_fmt(v)}" for k, v in results["base"].items()) + ".", "",
          "| method | " + " | ".join(cols) + " | wall s | peak RSS MB | trainable params | wall / lune | peak MB / lune | "
          "wall x MB / lune | steps | s / step | MFU | of train s: key statistics |",
          "|---" * (len(cols) + 11) + "|"]
    for m in exp["methods"]:
        r = results["rows"].get(m)
        if r is None:
            continue
        if "error" in r:
            md.append(f"| {m} | failed: {r['error']} |" + " |" * (len(cols) + 10))
            continue
        ratio = lambda k: "–" if not ref else f"{r[k] / ref[k]:.2f}"  # noqa: E731
        wm = "–" if not ref else f"{r['wall_s'] * r['peak_rss_mb'] / (ref['wall_s'] * ref['peak_rss_mb']):.2f}"
        per_step = r["train_s"] / r["steps"] if r.get("steps") else None
        md.append(f"| {m} | " + " | ".join(_fmt(r.get(c), ".1f" if c == "mia" else ".3f" if c == "tofu_forget_quality" else ".2f")
                                         for c in cols) + f" | {r['wall_s']:.0f} | {r['peak_rss_mb']:,.0f} | {r['trainable_params']:,} | "
                  f"{ratio('wall_s')} | {ratio('peak_rss_mb')} | {wm} | {r['steps']} | {_fmt(per_step)} | {_fmt(r.get('mfu'))} | "
                  f"{_fmt(r.get('stats_s'), '.0f')} |")
    md += ["", "Wall = the whole `lune unlearn` process (load, before/after probes, negatives, training or editing, writing); "
           "peak RSS = that process's. Steps: optimiser steps, or target-vector steps for ROME/MEMIT; s / step = train s / steps "
           "(edits: including their key statistics, computed afresh in the measured run unless the config sets "
           "`reuse_key_statistics`). MIA: loss-attack AUC turned into 100 x |2 AUC - 1| "
           "(0 = forget texts indistinguishable from held-out ones)."]
    groups = machines(rows)
    if len(groups) > 1:
        md += ["", "**Not every row ran on the same machine** (told apart by the float32 matmul peak each run measured; "
               "rows run before session 11 by the peak implied by their MFU). Wall-time ratios between groups compare "
               "machines as well as methods; peak memory does not depend on the machine: "
               + "; ".join(f"{peak:.0f} GFLOP/s: {', '.join(names)}" for peak, names in groups) + "."]
    again = sorted({k for r in rows.values() for k in r.get("remeasured", [])})
    if again:
        md += ["", f"Measured again after the runs (`python benchmarks/paper.py {name} --remeasure {' '.join(again)}`, "
               "on the same run directories): " + "; ".join(f"{m}: {', '.join(r['remeasured'])}" for m, r in rows.items() if r.get("remeasured")) + "."]
    (out / f"paper_{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    plot(name, results, out / f"paper_{name}.png")


def plot(name: str, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {m: r for m, r in results["rows"].items() if "error" not in r}
    if not rows:
        return
    names = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    w = 0.27
    shown = [c for c in results["config"].get("columns", list(METRICS)) if c not in ("mia", "fluency")][:3]
    for k, (metric, color) in enumerate(zip(shown, ("tab:red", "tab:orange", "tab:green"))):
        ax1.bar([i + (k - 1) * w for i in range(len(names))], [rows[m].get(metric) or 0 for m in names], w, label=metric, color=color)
    ax1.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax1.set_ylim(0, 1.15)
    ax1.set_title(f"{name}: effectiveness")
    ax1.legend(ncol=3, fontsize=8)
    ref = rows.get("lune")
    if ref:
        cost = [rows[m]["wall_s"] * rows[m]["peak_rss_mb"] / (ref["wall_s"] * ref["peak_rss_mb"]) for m in names]
        ax2.bar(names, cost, color="tab:blue")
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax2.set_yscale("log")
        ax2.set_ylabel("wall s x peak MB, relative to lune")
        ax2.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax2.set_title("cost (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="*", help=f"Experiments to run (default: all of {sorted(p.stem for p in CONFIGS.glob('*.json'))}).")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"), help="Benchmark data root.")
    ap.add_argument("--methods", nargs="*", help="Rows to (re)run (default: every method of the config).")
    ap.add_argument("--work", default="/tmp/lune-paper", help="Where the run directories go.")
    ap.add_argument("--out", default=str(HERE / "results"), help="Folder for paper_<experiment>.{json,md,png}.")
    ap.add_argument("--table", action="store_true", help="Only rewrite the .md and .png from the .json.")
    ap.add_argument("--remeasure", nargs="+", choices=EXTRA, help="Measure these metrics again on the existing run directories in --work (of --methods, default every row) and on the base model; nothing is unlearnt again.")
    args = ap.parse_args(argv)
    names = args.experiments or sorted(p.stem for p in CONFIGS.glob("*.json"))
    for name in names:
        path = Path(name) if name.endswith(".json") else CONFIGS / f"{name}.json"
        name = path.stem
        if not path.is_file():
            ap.error(f"no experiment config {path}")
        exp = json.loads(path.read_text())
        if exp["benchmark"] not in PREPARE:
            ap.error(f"{path}: benchmark '{exp['benchmark']}' has no preparation here; known: {sorted(PREPARE)}")
        out = Path(args.out)
        if args.table:
            write_outputs(name, json.loads((out / f"paper_{name}.json").read_text()), out)
            continue
        if not (Path(args.data) / exp["benchmark"]).is_dir():
            print(f"skipping {name}: {Path(args.data) / exp['benchmark']} not found")
            continue
        write_outputs(name, (remeasure if args.remeasure else run_experiment)(name, exp, args), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
