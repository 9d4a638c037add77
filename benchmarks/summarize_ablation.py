"""Summarise benchmarks/results/demo_ablation/*/report.json into demo_ablation.json and demo_ablation_rerun.md."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "demo_ablation")
rows = []
for rep in sorted(root.glob("*/report.json")):
    r = json.loads(rep.read_text())
    cfg = json.loads((rep.parent / "config.json").read_text())
    a, c = r["after"], r["cost"]
    rows.append({"variant": rep.parent.name, "usr": a["usr"], "apr": a["apr"], "gur": a["gur"], "epochs": r["training"]["epochs"],
                 "train_s": c["train_s"], "wall_s": c["wall_s"], "peak_rss_mb": c["peak_rss_mb"], "trainable_params": c["trainable_params"],
                 "lora": cfg["lora"], "train": {k: cfg["train"][k] for k in ("lr", "anchors", "neighbours", "retain_weight", "kl_weight")}})
(root.parent / "demo_ablation.json").write_text(json.dumps(rows, indent=2))
md = ["| variant | usr | apr | gur | epochs | train s | peak RSS MB | trainable |", "|---|---|---|---|---|---|---|---|"]
md += [f"| {r['variant']} | {r['usr']:.2f} | {r['apr']:.2f} | {r['gur']:.2f} | {r['epochs']} | {r['train_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['trainable_params']:,} |" for r in rows]
(root.parent / "demo_ablation_rerun.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
