"""``lune`` command line: parsing and printing only; the work is done by ``lune.api``.

    lune unlearn  --forget F [--retain R] --out DIR [--model M] [any config flag]
    lune eval     --forget F [--retain R] [--adapter DIR] [--out DIR]
    lune eval     --benchmark rwku|tofu|counterfact|zsre [--targets 1-10] [--known-only] [--adapter DIR] [--out DIR]
    lune generate [--adapter DIR] "prompt" ...
    lune merge    --adapter DIR --out DIR
    lune demo     [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from importlib import resources
from pathlib import Path

from .config import LoraSettings, NegativeSettings, RunSettings, TrainSettings, UnlearnConfig
from .errors import LuneError

SECTIONS = {"run": RunSettings, "lora": LoraSettings, "train": TrainSettings, "negatives": NegativeSettings}


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field (``--lr``, ``--per-fact``, ...), help text from the dataclass."""
    for section, cls in SECTIONS.items():
        g = p.add_argument_group(f"{section} settings")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kw: dict = {"dest": f"{section}.{f.name}", "default": argparse.SUPPRESS, "metavar": f.name.upper(),
                        "help": f"{f.metadata['help']} (default: {default})"}
            if "type" in f.metadata:
                kw.update(type=f.metadata["type"])
            elif isinstance(default, bool):
                kw.update(type=_bool)
            elif isinstance(default, list):
                kw.update(type=lambda s: [x for x in s.split(",") if x])
            elif default is None or isinstance(default, str):
                kw.update(type=str)
            else:
                kw.update(type=type(default))
            g.add_argument(f"--{f.name.replace('_', '-')}", **kw)
    from .methods import METHODS  # each method's own options: --<method>-<option>

    for name, mcls in sorted(METHODS.items()):
        fields = dataclasses.fields(mcls.Settings)
        if not fields:
            continue
        g = p.add_argument_group(f"options of --method {name} ({mcls.citation})")
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            t = f.metadata.get("type") or (_bool if isinstance(default, bool) else str if default is None or isinstance(default, str) else type(default))
            g.add_argument(f"--{name}-{f.name.replace('_', '-')}", dest=f"method:{name}.{f.name}", default=argparse.SUPPRESS,
                           metavar=f.name.upper(), type=t, help=f"{f.metadata['help']} (default: {default})")


def config_from_args(ns: argparse.Namespace, base: UnlearnConfig | None = None) -> UnlearnConfig:
    """Apply the flags that were given on top of ``base`` (or the defaults), validating the result."""
    d = (base or UnlearnConfig()).to_dict()
    options = {}
    for key, value in vars(ns).items():
        if key.startswith("method:"):
            options[key[len("method:"):]] = value
        elif "." in key:
            section, name = key.split(".", 1)
            d[section][name] = value
    method = d["run"]["method"]
    for key, value in options.items():
        owner, name = key.split(".", 1)
        if owner != method:
            flag = f"--{owner}-{name.replace('_', '-')}"
            raise ValueError(f"{flag} is an option of --method {owner}, but the method is '{method}'")
        d["method"][name] = value
    if d["method"] and base is not None and base.run.method != method:
        d["method"] = {k: v for k, v in d["method"].items() if f"{method}.{k}" in options}  # a --config's options of another method
    return UnlearnConfig.from_dict(d)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lune", description="Make a causal LM forget facts with LoRA adapters trained on negative examples (LUNE).")
    p.add_argument("-v", "--verbose", action="store_true", help="Log progress details.")
    sub = p.add_subparsers(dest="command", required=True)

    u = sub.add_parser("unlearn", help="Train an unlearning adapter and write a run directory.")
    u.add_argument("--forget", required=True, help="Forget facts, JSON Lines.")
    u.add_argument("--retain", help="Retain facts, JSON Lines (measured for GUR; trained on with --retain-weight/--kl-weight).")
    u.add_argument("--out", required=True, help="Run directory to create.")
    u.add_argument("--negatives", help="Use this negatives.jsonl instead of building negatives.")
    u.add_argument("--config", help="Start from this config.json (flags override it).")
    u.add_argument("--overwrite", action="store_true", help="Replace an existing --out directory.")
    add_config_flags(u)

    e = sub.add_parser("eval", help="Measure forget/retain metrics of a model, with and without an adapter: on fact files or a benchmark.")
    e.add_argument("--forget", help="Forget facts, JSON Lines (or use --benchmark).")
    e.add_argument("--retain", help="Retain facts, JSON Lines.")
    e.add_argument("--model", default="smollm2-135m", help="Base model (default: smollm2-135m).")
    e.add_argument("--adapter", help="Run directory or adapter folder to evaluate against the base model.")
    e.add_argument("--format", default="auto", help="Prompt format: auto, completion or chat.")
    e.add_argument("--max-new-tokens", type=int, default=16, help="Tokens generated per probe to check for the answer (default: 16).")
    e.add_argument("--eval-batch-size", type=int, default=32, help="Prompts per batch for generation and scoring (default: 32).")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto).")
    e.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto).")
    e.add_argument("--out", help="Write the report here (benchmarks: default evals/<benchmark>-<time>).")
    e.add_argument("--overwrite", action="store_true", help="Replace an existing --out directory.")
    b = e.add_argument_group("benchmark evaluation (lune.evaluate_benchmark)")
    b.add_argument("--benchmark", help="rwku, tofu, counterfact or zsre: measure its paper metrics (USR, APR, GUR, MIA, ...).")
    b.add_argument("--data", help="The benchmark's data directory (or the folder holding it) or a Hub id "
                   "(default: $LUNE_DATA/<benchmark>, else ../shared/data/<benchmark>).")
    b.add_argument("--targets", help="RWKU target ids or names, e.g. 1-10 or 1,5,7 (default: all 200).")
    b.add_argument("--split", help="TOFU forget01|forget05|forget10; CounterFact val|train|edit|known; zsRE mend|inverse|onehop|subject_replace.")
    b.add_argument("--limit", type=int, help="At most this many probes per group (and MIA texts, TOFU questions per split), for quick runs.")
    b.add_argument("--known-only", action="store_true", help="Measure only the probes the base model answers, per group (not TOFU).")
    b.add_argument("--retain-model", help="TOFU: a model trained on the retain set only, for forget quality (else null, with a warning).")
    b.add_argument("--long-new-tokens", type=int, default=64,
                   help="Tokens generated for TOFU ROUGE and fluency texts (default: 64; the papers use 200 and 100).")

    g = sub.add_parser("generate", help="Complete prompts with the base model and, side by side, the unlearned one.")
    g.add_argument("prompts", nargs="+", help="Prompts to complete.")
    g.add_argument("--model", default="smollm2-135m", help="Base model (default: smollm2-135m).")
    g.add_argument("--adapter", help="Run directory or adapter folder.")
    g.add_argument("--format", default="auto", help="Prompt format: auto, completion or chat.")
    g.add_argument("--max-new-tokens", type=int, default=24, help="Tokens to generate per prompt.")

    m = sub.add_parser("merge", help="Fold an adapter into the base weights and save them as safetensors.")
    m.add_argument("--model", default="smollm2-135m", help="Base model (default: smollm2-135m).")
    m.add_argument("--adapter", required=True, help="Run directory or adapter folder.")
    m.add_argument("--out", required=True, help="Directory for the merged model.")
    m.add_argument("--overwrite", action="store_true", help="Replace an existing --out directory.")

    d = sub.add_parser("demo", help="Forget the built-in facts from the default model and print a before/after table.")
    d.add_argument("--out", default="runs/demo", help="Run directory (replaced if it exists; default: runs/demo).")
    add_config_flags(d)
    return p


def _table(report: dict) -> str:
    from .report import SHOWN

    b, a = report["before"], report.get("after") or {}
    rows = [f"{'metric':<12} {'before':>8} {'after':>8}"]
    for k in SHOWN:
        if b.get(k) is None and a.get(k) is None:
            continue
        fmt = lambda v: "–" if v is None else f"{v:.3f}"
        rows.append(f"{k:<12} {fmt(b.get(k)):>8} {fmt(a.get(k)):>8}")
    return "\n".join(rows)


def _print_run(report: dict) -> None:
    print(_table(report))
    c = report["cost"]
    print(f"cost: {c['wall_s']:.1f} s wall ({c['train_s']:.1f} s training, {c['steps']} steps, {report['training']['epochs']} epochs), "
          f"peak RSS {c['peak_rss_mb']:.0f} MB, {c['trainable_params']:,} trainable of {c['total_params']:,} parameters")
    if report.get("out"):
        print(f"wrote {report['out']}/ (adapter/, negatives.jsonl, config.json, report.json, report.md)")


def _eval_benchmark(args: argparse.Namespace, cfg: UnlearnConfig) -> None:
    from .eval.suite import evaluate_benchmark
    from .report import benchmark_table

    if args.forget or args.retain:
        raise LuneError("give either --benchmark or --forget/--retain, not both")
    out = args.out or f"evals/{args.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = evaluate_benchmark(args.benchmark, model=args.model, adapter=args.adapter, source=args.data, targets=args.targets,
                                split=args.split, limit=args.limit, known_only=args.known_only, retain_model=args.retain_model,
                                config=cfg, out=out, overwrite=args.overwrite, long_new_tokens=args.long_new_tokens)
    print(benchmark_table(report))
    if report["known_only"]["applied"]:
        print("known-only: " + ", ".join(f"{g} {d['n_kept']}/{d['n']}" for g, d in report["groups"].items()) + " probes kept")
    c = report["cost"]
    print(f"cost: {c['wall_s']:.1f} s wall, peak RSS {c['peak_rss_mb']:.0f} MB" + (f", {c['n_probes']} probes generated" if c["n_probes"] else ""))
    print(f"wrote {out}/ (report.json, report.md, metrics.png, outcomes.png)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from . import api  # heavy imports after parsing, so --help is fast

    try:
        if args.command in ("unlearn", "demo"):
            base = None
            if getattr(args, "config", None):
                cfg_path = Path(args.config)
                if not cfg_path.is_file():
                    raise LuneError(f"config file not found: {cfg_path}")
                raw = json.loads(cfg_path.read_text())
                base = UnlearnConfig.from_dict({k: v for k, v in raw.items() if k in SECTIONS or k == "method"})
            if args.command == "demo":  # the demo's retain facts are held out: measured, never trained on
                base = UnlearnConfig(train=TrainSettings(fit_retain=False))
            cfg = config_from_args(args, base)
            if args.command == "demo":
                demo = resources.files("lune") / "demo"
                report = api.unlearn(str(demo / "forget.jsonl"), str(demo / "retain.jsonl"), out=args.out, config=cfg, overwrite=True)
                for r in report["facts"]:
                    print(f"{r['prompt']!r:55} before: {r['before'][:28]!r:32} after: {r['after'][:28]!r}")
            else:
                report = api.unlearn(args.forget, args.retain, out=args.out, config=cfg, negatives=args.negatives, overwrite=args.overwrite)
            _print_run(report)
        elif args.command == "eval":
            cfg = UnlearnConfig(run=RunSettings(model=args.model, format=args.format, max_new_tokens=args.max_new_tokens,
                                                eval_batch_size=args.eval_batch_size),
                                train=TrainSettings(device=args.device, dtype=args.dtype))
            if args.benchmark:
                _eval_benchmark(args, cfg)
            elif args.forget:
                report = api.evaluate(args.forget, args.retain, model=args.model, adapter=args.adapter, config=cfg, out=args.out, overwrite=args.overwrite)
                print(_table(report))
                if args.out:
                    print(f"wrote {args.out}/report.json and report.md")
            else:
                raise LuneError("eval needs --forget FILE or --benchmark NAME")
        elif args.command == "generate":
            for row in api.generate(args.prompts, model=args.model, adapter=args.adapter, fmt=args.format, max_new_tokens=args.max_new_tokens):
                print(f"prompt:    {row['prompt']}")
                print(f"base:      {row['base']!r}")
                if "unlearned" in row:
                    print(f"unlearned: {row['unlearned']!r}")
                print()
        elif args.command == "merge":
            print(f"wrote merged model to {api.merge(args.model, args.adapter, args.out, overwrite=args.overwrite)}")
    except (LuneError, ValueError) as e:
        print(f"lune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
