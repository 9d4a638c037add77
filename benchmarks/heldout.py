"""Held-out check of the default settings on real facts the defaults were not tuned on.

Forget set: CounterFact (validation split) facts whose prompt *and* rephrased prompt the default
model completes with the true answer, and whose answer is not part of either prompt. lune is given only ``prompt``/``answer``; the rephrased
prompts are measured (APR) but never trained on. Retain set: facts from ROME's known_1000 that the model answers, and the
forget facts' CounterFact locality prompts, measured (GUR) but never shown to the tool.

    python benchmarks/heldout.py                  # writes benchmarks/results/heldout.{json,md}
    python benchmarks/heldout.py --n-forget 12 --data ../shared/data --set train.contexts=0 --name heldout12
    python benchmarks/heldout.py --replacements --name heldout_replacements   # user replacements given

Reads the data from ``--data`` (default ``../shared/data``); exits cleanly when it is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lune
from lune.anchors import anchor_prompts, neighbour_prompts
from lune.config import UnlearnConfig
from lune.data import Fact, PromptFormat, contains_answer
from lune.eval.core import generate

HERE = Path(__file__).resolve().parent


def eligible(r: dict) -> bool:
    """A probe is meaningful only if the answer is not already in the prompt.

    "Toyota Corolla E140 is produced by" -> "Toyota": any continuation about the subject restates
    the answer, so substring-matched USR cannot fall on such facts (measured: most of the probes
    still "answered" after unlearning in the first held-out run were of this kind).
    """
    return not (contains_answer(r["prompt"], r["ground_truth"]) or contains_answer(r["rephrase_prompt"], r["ground_truth"]))


def known_counterfact(model, tok, records: list[dict], need: int, cache: Path, chunk: int = 128) -> list[int]:
    """Indices of the first ``need`` eligible CounterFact records whose prompt and rephrase the model answers.

    Records are scanned in file order, a chunk at a time; the scan is cached so re-runs are instant.
    """
    state = json.loads(cache.read_text()) if cache.is_file() else {"scanned": 0, "known": []}
    fmt = PromptFormat(tok, "completion")
    while sum(eligible(records[i]) for i in state["known"]) < need and state["scanned"] < len(records):
        part = records[state["scanned"] : state["scanned"] + chunk]
        prompts = [r["prompt"] for r in part] + [r["rephrase_prompt"] for r in part]
        outs = generate(model, tok, [fmt.prompt_ids(p, "prompt") for p in prompts], max_new_tokens=16, batch_size=64, desc="finding known facts")
        n = len(part)
        state["known"] += [state["scanned"] + i for i, r in enumerate(part)
                           if contains_answer(outs[i], r["ground_truth"]) and contains_answer(outs[n + i], r["ground_truth"])]
        state["scanned"] += n
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(state))
    return [i for i in state["known"] if eligible(records[i])][:need]


def known_rome(model, tok, rome: list[dict], need: int, skip_answers: set[str], skip_subjects: set[str], cache: Path) -> list[dict]:
    """The first ``need`` ROME known_1000 facts the model completes with their attribute (cached)."""
    state = json.loads(cache.read_text()) if cache.is_file() else {"scanned": 0, "known": []}
    fmt = PromptFormat(tok, "completion")
    ok = lambda r: r["attribute"].lower() not in skip_answers and r["subject"].lower() not in skip_subjects  # noqa: E731
    while sum(ok(rome[i]) for i in state["known"]) < need and state["scanned"] < len(rome):
        part = rome[state["scanned"] : state["scanned"] + 128]
        outs = generate(model, tok, [fmt.prompt_ids(r["prompt"], "prompt") for r in part], max_new_tokens=16, batch_size=64, desc="known retain facts")
        state["known"] += [state["scanned"] + i for i, (r, o) in enumerate(zip(part, outs)) if contains_answer(o, r["attribute"])]
        state["scanned"] += len(part)
        cache.write_text(json.dumps(state))
    return [rome[i] for i in state["known"] if ok(rome[i])][:need]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"), help="Folder with counterfact/.")
    ap.add_argument("--n-forget", type=int, default=30, help="Forget facts to take (first known ones in file order).")
    ap.add_argument("--n-retain", type=int, default=100, help="ROME known_1000 facts the model answers, measured for GUR.")
    ap.add_argument("--out", default=str(HERE / "results"), help="Folder for heldout.json / heldout.md.")
    ap.add_argument("--dtype", default="auto", help="Compute dtype of the run (default: lune's auto).")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="Override a setting, e.g. --set train.contexts=2 or --set lora.protect=0.8 (repeatable).")
    ap.add_argument("--replacements", action="store_true",
                    help="Give each forget fact CounterFact's counterfactual target (target_new) as its user replacement: "
                         "what a user-supplied replacement buys over the tool's own sampled alternatives.")
    ap.add_argument("--name", default="heldout", help="Result file stem (default: heldout -> heldout.json, heldout.md).")
    args = ap.parse_args(argv)
    cf = Path(args.data) / "counterfact"
    if not (cf / "counterfact-val.json").is_file():
        print(f"skipping: {cf}/counterfact-val.json not found")
        return 0

    t0 = time.perf_counter()
    records = json.loads((cf / "counterfact-val.json").read_text())
    model, tok = lune.load_model("smollm2-135m", dtype=args.dtype)
    chosen = [records[i] for i in known_counterfact(model, tok, records, args.n_forget, HERE / "results" / "counterfact_val_known.json")]
    forget = [Fact(prompt=r["prompt"], answer=r["ground_truth"], paraphrases=[r["rephrase_prompt"]], source=f"counterfact-val case {r['case_id']}",
                   replacement=r["target_new"] if args.replacements else None) for r in chosen]
    answers = {r["ground_truth"].lower() for r in chosen}
    subjects = {r["subject"].lower() for r in chosen}
    rome = json.loads((cf / "rome_known_1000.json").read_text())
    # known ones only: GUR counts only facts the model answered before (the first 100 of the file held 17)
    retain = [Fact(prompt=r["prompt"], answer=r["attribute"], source=f"rome_known_1000 {r['known_id']}")
              for r in known_rome(model, tok, rome, args.n_retain, answers, subjects, HERE / "results" / "rome_known_default_model.json")]
    retain += [Fact(prompt=r["locality_prompt"], answer=r["locality_ground_truth"], source=f"counterfact-val locality {r['case_id']}")
               for r in chosen if r["locality_ground_truth"].lower() not in answers]

    cfg = UnlearnConfig()
    cfg.train.dtype = args.dtype
    for kv in args.set:
        key, _, value = kv.partition("=")
        section, _, field = key.partition(".")
        obj = getattr(cfg, section, None)
        if obj is None or not hasattr(obj, field) or not value:
            ap.error(f"--set {kv}: expected SECTION.FIELD=VALUE with a setting of {sorted(cfg.to_dict())}")
        old = getattr(obj, field)
        if isinstance(old, bool):
            value = value.lower() in ("1", "true", "yes")
        elif isinstance(old, list):
            value = value.split(",")
        elif old is not None:
            value = type(old)(value)
        setattr(obj, field, value)
    # Default settings; the only changes make the held-out sets invisible to the tool:
    cfg.train.paraphrases = False  # rephrased prompts are measured, never trained on
    cfg.train.fit_retain = False  # retain facts are measured, never trained on
    # ... and no retain probe may coincide with a prompt lune keeps by itself (anchors, neighbours).
    own = {p for p, _ in neighbour_prompts(forget, cfg.train.neighbours, cfg.train.seed)} | set(anchor_prompts(cfg.train.anchors))
    overlap = [r.prompt for r in retain if r.prompt in own]
    retain = [r for r in retain if r.prompt not in own]
    report = lune.unlearn(forget, retain, config=cfg, model=model, tokenizer=tok)
    result = {
        "command": "python benchmarks/heldout.py " + " ".join(argv or sys.argv[1:]),
        "n_forget": len(forget),
        "replacements": args.replacements,
        "n_retain_probes": len(retain),
        "retain_dropped_as_seen": overlap,
        "config": cfg.to_dict(),
        "before": report["before"],
        "after": report["after"],
        "cost": report["cost"],
        "total_s": round(time.perf_counter() - t0, 1),
        "training": report["training"],
        "facts": report["facts"],
        "retain": report["retain"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    a, c = report["after"], report["cost"]
    md = [
        f"# Held-out check (CounterFact known facts, dtype {args.dtype}, {', '.join(args.set) or 'default settings'}"
        f"{', CounterFact target_new as each fact replacement' if args.replacements else ''})", "",
        f"`{result['command'].strip()}`", "",
        f"{len(forget)} forget facts (prompt/answer only), APR on their {a['n_forget_paraphrases']} unseen rephrased prompts, "
        f"GUR on {len(retain)} unseen retain probes. Repeats: share of forget completions (prompts and rephrasings) "
        "that say a word or phrase twice back to back (\"Brest. Brest.\").", "",
        "| usr | apr | gur | retain_acc before → after | repeats before → after | wall s | train s | peak RSS MB | trainable params | epochs |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {a['usr']:.3f} | {a['apr']:.3f} | {a['gur']:.3f} | {report['before']['retain_acc']:.3f} → {a['retain_acc']:.3f} | "
        f"{report['before']['repeats']:.3f} → {a['repeats']:.3f} | "
        f"{c['wall_s']:.0f} | {c['train_s']:.0f} | {c['peak_rss_mb']:.0f} | {c['trainable_params']:,} | {report['training']['epochs']} |",
    ]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
