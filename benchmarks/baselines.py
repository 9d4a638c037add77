"""Every method on the same facts, one run each: the baseline table of issue 4.

Forget set: the first ``--n-forget`` CounterFact (validation) facts the default model knows on both
the prompt and the rephrased prompt (``heldout.known_counterfact``), given with their ``subject``
(ROME/MEMIT need it) and without paraphrases: the rephrased prompts are measured (APR), never
trained on. Retain set: ROME known_1000 facts the default model answers before unlearning
(different subjects and answers), plus the forget facts' CounterFact locality prompts; measured
(GUR), never shown to any method. Each method runs as its own ``lune unlearn`` process with its
defaults, so wall time and peak RSS are that method's alone.

    python benchmarks/baselines.py                      # every registered method -> results/baselines.{json,md}
    python benchmarks/baselines.py --methods rome memit  # (re)run some; the others' rows are kept

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
sys.path.insert(0, str(HERE))
from heldout import known_counterfact, known_rome  # noqa: E402

import lune  # noqa: E402
from lune.methods import METHODS  # noqa: E402

# (row name, lune unlearn flags): every registered method, loss methods also with --full.
VARIANTS = {
    "lune": ["--method", "lune"],
    "lune-full": ["--method", "lune-full"],
    "ga": ["--method", "ga"],
    "ga --full": ["--method", "ga", "--full", "true"],
    "graddiff": ["--method", "graddiff"],
    "graddiff --full": ["--method", "graddiff", "--full", "true"],
    "npo": ["--method", "npo"],
    "npo --full": ["--method", "npo", "--full", "true"],
    "simnpo": ["--method", "simnpo"],
    "simnpo --full": ["--method", "simnpo", "--full", "true"],
    "rome": ["--method", "rome"],
    "memit": ["--method", "memit"],
    # how the key statistics change the edits: C = I, and C from Wikipedia text (RWKU's passages)
    "rome, C = I": ["--method", "rome", "--rome-stats-corpus", "identity"],
    "rome, C from Wikipedia": ["--method", "rome", "--rome-stats-corpus", "{data}/rwku/passage.jsonl"],
    "memit, C = I": ["--method", "memit", "--memit-stats-corpus", "identity"],
    "memit, C from Wikipedia": ["--method", "memit", "--memit-stats-corpus", "{data}/rwku/passage.jsonl"],
}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"), help="Folder with counterfact/.")
    ap.add_argument("--n-forget", type=int, default=6, help="Forget facts (first known CounterFact val facts).")
    ap.add_argument("--n-retain", type=int, default=40, help="Known ROME known_1000 facts measured for GUR.")
    ap.add_argument("--methods", nargs="*", default=list(VARIANTS), help=f"Rows to (re)run, from {list(VARIANTS)}.")
    ap.add_argument("--work", default="/tmp/lune-baselines", help="Where the run directories go.")
    ap.add_argument("--out", default=str(HERE / "results"), help="Folder for baselines.json / baselines.md.")
    ap.add_argument("--table", action="store_true", help="Only rewrite baselines.md from baselines.json.")
    args = ap.parse_args(argv)
    if args.table:
        write_table(json.loads((Path(args.out) / "baselines.json").read_text()), Path(args.out) / "baselines.md")
        return 0
    unknown = [m for m in args.methods if m not in VARIANTS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(VARIANTS)}")
    cf = Path(args.data) / "counterfact"
    if not (cf / "counterfact-val.json").is_file():
        print(f"skipping: {cf}/counterfact-val.json not found")
        return 0

    records = json.loads((cf / "counterfact-val.json").read_text())
    model, tok = lune.load_model("smollm2-135m")
    chosen = [records[i] for i in known_counterfact(model, tok, records, args.n_forget, HERE / "results" / "counterfact_val_known.json")]
    answers, subjects = {r["ground_truth"].lower() for r in chosen}, {r["subject"].lower() for r in chosen}
    rome = json.loads((cf / "rome_known_1000.json").read_text())
    retain_src = known_rome(model, tok, rome, args.n_retain, answers, subjects, HERE / "results" / "rome_known_default_model.json")
    del model
    # The rephrased prompts are probes only: written as paraphrases, never trained (--paraphrases false).
    forget = [{"prompt": r["prompt"], "answer": r["ground_truth"], "subject": r["subject"], "paraphrases": [r["rephrase_prompt"]]}
              for r in chosen]
    retain = [{"prompt": r["prompt"], "answer": r["attribute"]} for r in retain_src]
    retain += [{"prompt": r["locality_prompt"], "answer": r["locality_ground_truth"]} for r in chosen
               if r["locality_ground_truth"].lower() not in answers]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "forget.jsonl", forget)
    write_jsonl(work / "retain.jsonl", retain)

    out = Path(args.out)
    results_path = out / "baselines.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": {}}
    results.update({"n_forget": len(forget), "n_retain_probes": len(retain), "forget": forget, "retain": retain})
    lune_bin = Path(sys.executable).with_name("lune")
    for name in args.methods:
        flags = [f.replace("{data}", str(Path(args.data).resolve())) for f in VARIANTS[name]]
        if flags[1] not in METHODS:
            print(f"skipping {name}: method not registered")
            continue
        run = work / name.replace(" --", "-").replace(", ", "-").replace(" ", "_").replace("=", "")
        cmd = [str(lune_bin), "unlearn", "--forget", str(work / "forget.jsonl"), "--retain", str(work / "retain.jsonl"),
               "--fit-retain", "false", "--paraphrases", "false", "--out", str(run), "--overwrite", *flags]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            results["rows"][name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
            continue
        rep = json.loads((run / "report.json").read_text())
        a, b, c = rep["after"], rep["before"], rep["cost"]
        results["rows"][name] = {
            "command": "lune " + " ".join(cmd[1:]).replace(str(work), "$WORK").replace(str(Path(args.data).resolve()), "$DATA"),
            "usr": a["usr"], "apr": a["apr"], "gur": a["gur"], "retain_acc_before": b["retain_acc"], "retain_acc_after": a["retain_acc"],
            "forget_prob_before": b["forget_prob"], "forget_prob_after": a["forget_prob"],
            "wall_s": c["wall_s"], "train_s": c["train_s"], "peak_rss_mb": c["peak_rss_mb"], "trainable_params": c["trainable_params"],
            "steps": c["steps"], "epochs": rep["training"]["epochs"], "train_flops": c.get("train_flops"),
            "process_s": round(time.perf_counter() - t0, 1),
            # edits: seconds spent on the key statistics (0 when cached from an earlier run)
            "stats_s": rep["training"]["history"][0].get("stats_seconds") if rep["training"]["history"] else None,
            "retain_lost": [r["prompt"] for r in rep["retain"] if r["answered_before"] and not r["answered_after"]],
        }
        print(json.dumps({k: v for k, v in results["rows"][name].items() if k not in ("command", "retain_lost")}), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    write_table(results, out / "baselines.md")
    return 0


def write_table(results: dict, path: Path) -> None:
    md = ["# Baselines on the default model: same facts, one run each", "",
          f"{results['n_forget']} CounterFact facts the default model knows (prompt/answer/subject; rephrased prompts measured "
          f"for APR, never trained), GUR on {results['n_retain_probes']} retain probes it answers before (never shown). "
          "Each method with its defaults (LoRA lr 1e-3, full lr 1e-5, early stopping once no trained prompt yields its answer). "
          "Reproduce: `python benchmarks/baselines.py`.", "",
          "| method | usr | apr | gur | forget p before → after | wall s | train s | peak RSS MB | trainable params | steps | train TFLOP (est.) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        r = results["rows"].get(name)
        if r is None:
            continue
        if "error" in r:
            md.append(f"| {name} | failed: {r['error']} | | | | | | | | | |")
            continue
        train = f"{r['train_s']:.0f}" + (f" ({r['stats_s']:.0f} of it key statistics)" if r.get("stats_s") else "")
        md.append(f"| {name} | {r['usr']:.2f} | {r['apr']:.2f} | {r['gur']:.2f} | {r['forget_prob_before']:.3f} → {r['forget_prob_after']:.3f} | "
                  f"{r['wall_s']:.0f} | {train} | {r['peak_rss_mb']:,.0f} | {r['trainable_params']:,} | {r['steps']} | "
                  f"{r['train_flops'] / 1e12:.2f} |")
    md += ["", "Steps: optimiser steps for trained methods, target-vector gradient steps for ROME/MEMIT. Wall = the whole "
           "`lune unlearn` process (model load, before/after probes, negatives, training/editing, writing). ROME's first run "
           "samples the key-statistics text once per model (cached; MEMIT's rows reuse it)."]
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
