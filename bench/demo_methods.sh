#!/usr/bin/env bash
# Reproduce the README's method tables on synthshift: bench/demo_methods.sh LANE SEED...
#   LANE "semi": semi_demo_advsemiseg and semi_demo_u2pl, each with its supervised-only baseline (issue 8)
#   LANE "semi-init": the same from a pretrained start (semi_demo_init_* trained once on the game domain, seed 0)
#   LANE "lsd":  lsd_demo with its source-only baseline (issue 9)
#   LANE "mm":   the three Mix-and-Match pipelines (colorization -> M&M -> fine-tune, colorization -> fine-tune,
#                random init -> fine-tune) (issue 9)
# Runs go to runs/measure/s<SEED>/...; `python bench/demo_methods_table.py` then tabulates every results.json there.
# One thread per process (two lanes side by side fill a 2-core machine).
set -euo pipefail
lane="${1:?usage: bench/demo_methods.sh semi|lsd|mm SEED...}"; shift
source "$(dirname "$0")/../recipes/_venv.sh" ""
cd "$SEGADAPT_ROOT"
export OMP_NUM_THREADS=1
train() { python -m segadapt train "$@" --set train.progress=false --set train.tensorboard=false; }
for seed in "$@"; do
  out="runs/measure/s$seed"
  common=(--set "train.seed=$seed")
  case "$lane" in
    semi)
      train semi_demo_advsemiseg "${common[@]}" --set "train.run_dir=\"$out/semi_demo_advsemiseg/{method}\""
      train semi_demo_u2pl "${common[@]}" --set "train.run_dir=\"$out/semi_demo_u2pl/{method}\"" ;;
    semi-init)
      for arch in deeplabv2 deeplabv3plus; do
        init="runs/measure/init/semi_demo_init_$arch"
        [ -f "$init/checkpoints/step_0000600.pt" ] || \
          train "semi_demo_init_$arch" --set train.seed=0 --set "train.run_dir=\"$init\""
      done
      train semi_demo_advsemiseg "${common[@]}" --set "train.run_dir=\"$out/init/semi_demo_advsemiseg/{method}\"" \
        --set 'model.pretrained="runs/measure/init/semi_demo_init_deeplabv2/checkpoints/step_0000600.pt"'
      train semi_demo_u2pl "${common[@]}" --set "train.run_dir=\"$out/init/semi_demo_u2pl/{method}\"" \
        --set 'model.pretrained="runs/measure/init/semi_demo_init_deeplabv3plus/checkpoints/step_0000600.pt"' ;;
    lsd)
      train lsd_demo "${common[@]}" --set "train.run_dir=\"$out/lsd_demo/{method}\"" ;;
    mm)
      colorize="$out/mm/colorize/checkpoints/step_0000400.pt"
      mixmatch="$out/mm/mixmatch/checkpoints/step_0000300.pt"
      train mm_demo_colorize "${common[@]}" --set "train.run_dir=\"$out/mm/colorize\""
      train mm_demo_mixmatch "${common[@]}" --set "train.run_dir=\"$out/mm/mixmatch\"" \
        --set "model.pretrained=\"$colorize\""
      train mm_demo_finetune "${common[@]}" --set "train.run_dir=\"$out/mm/finetune_from_mixmatch\"" \
        --set "model.pretrained=\"$mixmatch\""
      train mm_demo_finetune "${common[@]}" --set "train.run_dir=\"$out/mm/finetune_from_colorization\"" \
        --set "model.pretrained=\"$colorize\""
      train mm_demo_finetune "${common[@]}" --set "train.run_dir=\"$out/mm/finetune_from_scratch\"" \
        --set 'model.pretrained=""' ;;
    *) echo "bench/demo_methods.sh: unknown lane '$lane' (semi, lsd or mm)" >&2; exit 2 ;;
  esac
done
