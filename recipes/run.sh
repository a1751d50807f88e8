#!/usr/bin/env bash
# Train a recipe: recipes/run.sh NAME [--set key=value ...] [--resume [PATH]]
# NAME is the stem of recipes/NAME.toml (e.g. demo, adaptseg_gta2cs). Creates .venv on first use.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: recipes/run.sh NAME [--set key=value ...] [--resume [PATH]]" >&2
  ls "$(dirname "$0")"/*.toml | xargs -n1 basename | sed 's/\.toml$//; s/^/  /' >&2
  exit 2
fi
source "$(dirname "$0")/_venv.sh" ""
cd "$SEGADAPT_ROOT"
exec python -m engine train "$@"
