#!/usr/bin/env bash
# How bench/results/layout-sbs/ was measured: `bench train` rows b (fp32) and c (bf16 autocast), both channels-last,
# at the commit before the layout change (119537d) and at be12dfb (landed as dea2752), alternating, two rounds, one thread each, the
# machine otherwise idle. The older commit runs from a worktree through a package tree of symlinks on PYTHONPATH
# (engine/ is installed as segadapt, so the checkout's editable install would otherwise be imported). OLD, NEW,
# OUT_DIR and RECIPES measure another pair the same way (bench/results/softmax-sbs/run.sh).
set -euo pipefail
cd "$(dirname "$0")/../../.."
source .venv/bin/activate
old=${OLD:-119537d} new=${NEW:-dea2752} scratch=$(mktemp -d) out=${OUT_DIR:-bench/results/layout-sbs}
recipes=${RECIPES:-demo semi_demo_advsemiseg semi_demo_u2pl semi_demo_init_deeplabv2 lsd_demo mm_demo_colorize}
git worktree add -q "$scratch/old" "$old" && git worktree add -q "$scratch/new" "$new"
for side in old new; do
  mkdir -p "$scratch/pkg-$side/segadapt"
  for f in "$scratch/$side"/engine/*; do ln -s "$f" "$scratch/pkg-$side/segadapt/"; done
  for d in kernels bench recipes; do ln -s "$scratch/$side/$d" "$scratch/pkg-$side/segadapt/$d"; done
done
export OMP_NUM_THREADS=1
for round in 1 2; do
  for recipe in $recipes; do
    for side in old new; do
      commit=$([ "$side" = old ] && echo "$old" || echo "$new")
      PYTHONPATH="$scratch/pkg-$side" python -m segadapt.bench train "$recipe" --rows b,c --warmup 5 --steps 30 \
        --profile-steps 10 --out "$out/$commit-round$round" \
        --note "side by side: $old then $new, alternating, round $round, OMP_NUM_THREADS=1"
    done
  done
done
git worktree remove --force "$scratch/old" && git worktree remove --force "$scratch/new"
