"""Per-step cost of lune against lune-full on the default model: one process per configuration.

    python benchmarks/step_cost.py        # -> results/step_cost.{json,md}

Each row is ``benchmarks/profile_step.py --no-profile --json`` in its own process (so peak RSS is
that configuration's alone): median seconds per training step over 6 steps after 2 warm-up steps,
on a batch of 32 sequences x 24 tokens (8 of them the response), MFU against the measured matmul
peak of the dtype, and the process's peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = {
    "lune (LoRA, FFN, lower half)": [],
    "lune, LoRA on the upper half": ["--layers", "upper"],
    "lune + gradient checkpointing": ["--gradient-checkpointing"],
    "lune-full": ["--full"],
}


def main() -> int:
    results = []
    for dtype in ("float32", "bfloat16"):
        for name, flags in ROWS.items():
            out = subprocess.run([sys.executable, str(HERE / "profile_step.py"), "--no-profile", "--json", "--dtype", dtype, *flags],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results.append({"row": name, **json.loads(out)})
            print(json.dumps(results[-1]), flush=True)
    (HERE / "results" / "step_cost.json").write_text(json.dumps(results, indent=2))
    md = ["# Per-step cost: lune vs lune-full (default model, batch 32 x 24 tokens)", "",
          "Reproduce: `python benchmarks/step_cost.py` (one process per row; median of 6 steps after 2 warm-up steps).", "",
          "| row | dtype | s / step | forward s | backward s | optimizer s | GFLOP / step (est.) | MFU | peak RSS MB | time vs lune-full | memory vs lune-full |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        full = next(x for x in results if x["full"] and x["dtype"] == r["dtype"])
        md.append(f"| {r['row']} | {r['dtype']} | {r['step_s']:.2f} | {r['fwd_s']:.2f} | {r['bwd_s']:.2f} | {r['opt_s']:.3f} | "
                  f"{r['step_gflop']:.0f} | {r['mfu']:.2f} | {r['peak_rss_mb']:,} | {full['step_s'] / r['step_s']:.2f}x less | "
                  f"{full['peak_rss_mb'] / r['peak_rss_mb']:.2f}x less |")
    (HERE / "results" / "step_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
