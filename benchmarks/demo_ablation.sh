#!/usr/bin/env bash
# How the defaults were chosen: variants of `lune unlearn` on the demo facts (the tuning set).
# The demo's retain facts are measured only (--fit-retain false), so GUR is on facts the tool never saw.
# Usage: bash benchmarks/demo_ablation.sh [VARIANT ...]   -> benchmarks/results/demo_ablation/<variant>/report.json
set -euo pipefail
cd "$(dirname "$0")/.."
LUNE=${LUNE:-.venv/bin/lune}
DEMO=src/lune/demo
OUT=benchmarks/results/demo_ablation
MLP="--target-modules gate_proj,up_proj,down_proj"
declare -A V=(
  [paper_all_lr2e-4_noretain]="--target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --layers= --lr 0.0002 --anchors 0 --neighbours 0"
  [all_noretain]="--target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --layers= --anchors 0 --neighbours 0"
  [all_anchors]="--target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --layers= --neighbours 0"
  [all_anchors_neighbours]="--target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --layers= --neighbours 8 --retain-weight 1"
  [mlp0-14_anchors]="$MLP --layers 0-14 --neighbours 0 --retain-weight 1"
  [mlp0-14_anchors_neighbours8]="$MLP --layers 0-14 --neighbours 8 --retain-weight 1"
  [mlp0-14_neighbours16_rw2]="$MLP --layers 0-14 --neighbours 16 --retain-weight 2"
  [mlp0-9_neighbours16_rw2]="$MLP --layers 0-9 --neighbours 16 --retain-weight 2"
  # second round (current defaults plus one change each; see demo_ablation.md)
  [defaults]=""
  [swaps8]="--swaps 8"
  [swaps8_kl1]="--swaps 8 --kl-weight 1"
  [swaps8_focus]="--swaps 8 --focus true"
  [swaps8_upper_focus]="--swaps 8 --layers upper --focus true"
  [swaps8_rbs48]="--swaps 8 --retain-batch-size 48"
  [swaps24_anchors32_rbs32]="--swaps 24 --anchors 32 --retain-batch-size 32"
  [no_paraphrases]="--paraphrases false"
  [swaps8_lr5e-4]="--swaps 8 --lr 5e-4"
  # seventh round: protected adapters (`lune demo --protect S [--seed N]` is the same run)
  [protect0.7]="--protect 0.7"
  [protect0.7_seed1]="--protect 0.7 --seed 1"
  [protect0.8]="--protect 0.8"
  [protect0.8_seed1]="--protect 0.8 --seed 1"
  [protect0.9]="--protect 0.9"
  # eighth round (`lune demo ...` is the same run; the held-out rows: benchmarks/heldout.py --set ...)
  [seed1]="--seed 1"
  [protect0.8_seed1_all]="--protect 0.8 --seed 1 --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --layers all"
  [contexts2]="--contexts 2"
  [contexts2_stop]="--contexts 2 --stop true"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=("${!V[@]}")
mkdir -p "$OUT"
for n in "${names[@]}"; do
  echo "== $n: ${V[$n]}"
  # shellcheck disable=SC2086
  $LUNE unlearn --forget $DEMO/forget.jsonl --retain $DEMO/retain.jsonl --fit-retain false \
    --out "$OUT/$n" --overwrite ${V[$n]}
done
