#!/usr/bin/env bash
# Train a recipe: recipes/run.sh NAME [--nproc N] [--set key=value ...] [--resume [PATH]]
# NAME is the stem of recipes/NAME.toml (e.g. demo, adaptseg_gta2cs). Creates .venv on first use.
# --nproc N starts N processes on this node with torchrun (DDP: NCCL on GPUs, gloo on CPU). For several nodes, put
# torchrun's rendezvous flags in SEGADAPT_TORCHRUN_ARGS, e.g.
#   SEGADAPT_TORCHRUN_ARGS="--nnodes 2 --node-rank 0 --rdzv-backend c10d --rdzv-endpoint host0:29400 --rdzv-id job1"
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: recipes/run.sh NAME [--nproc N] [--set key=value ...] [--resume [PATH]]" >&2
  ls "$(dirname "$0")"/*.toml | xargs -n1 basename | sed 's/\.toml$//; s/^/  /' >&2
  exit 2
fi
nproc=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) nproc="${2:?--nproc needs a number of processes}"; shift 2 ;;
    --nproc=*) nproc="${1#--nproc=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
source "$(dirname "$0")/_venv.sh" ""
cd "$SEGADAPT_ROOT"
if [ -z "$nproc" ]; then
  exec python -m segadapt train "${args[@]}"
fi
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "recipes/run.sh: --nproc expects a positive integer, got '$nproc'" >&2
  exit 2
fi
# shellcheck disable=SC2086 # the rendezvous flags are meant to split into words
if [ -n "${SEGADAPT_TORCHRUN_ARGS:-}" ]; then
  exec python -m torch.distributed.run --nproc-per-node "$nproc" $SEGADAPT_TORCHRUN_ARGS -m segadapt train "${args[@]}"
fi
exec python -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m segadapt train "${args[@]}"
