# Sourced by recipes/run.sh and tests/run.sh: create or reuse the project virtualenv and install what it needs.
# Installs happen once, and again only when pyproject.toml changes (a stamp records its hash).
# torch is installed first and explicitly: on CPU machines `torch==2.13.0` is the CPU wheel, while an unpinned
# torch would pull a multi-GB CUDA build. Override with SEGADAPT_TORCH_SPEC (e.g. "torch" on a GPU machine).
set -euo pipefail
SEGADAPT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SEGADAPT_VENV="${SEGADAPT_VENV:-$SEGADAPT_ROOT/.venv}"
_segadapt_extras="${1:-}"
_segadapt_python="${PYTHON:-python3}"
if [ ! -x "$SEGADAPT_VENV/bin/python" ]; then
  echo "segadapt: creating virtualenv $SEGADAPT_VENV" >&2
  "$_segadapt_python" -m venv "$SEGADAPT_VENV"
fi
# shellcheck disable=SC1091
source "$SEGADAPT_VENV/bin/activate"
_segadapt_stamp="$SEGADAPT_VENV/.segadapt-installed${_segadapt_extras:+-$_segadapt_extras}"
_segadapt_hash="$(sha256sum "$SEGADAPT_ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$_segadapt_stamp" ] || [ "$(cat "$_segadapt_stamp")" != "$_segadapt_hash" ]; then
  echo "segadapt: installing into $SEGADAPT_VENV (first use or pyproject.toml changed)" >&2
  python -m pip install --quiet --upgrade pip >&2
  if ! python -c "import torch" 2>/dev/null; then
    if [ -n "${SEGADAPT_TORCH_SPEC:-}" ]; then
      python -m pip install --quiet "$SEGADAPT_TORCH_SPEC" >&2
    elif command -v nvidia-smi >/dev/null 2>&1; then
      python -m pip install --quiet torch >&2
    else
      python -m pip install --quiet "torch==2.13.0" >&2
    fi
  fi
  python -m pip install --quiet -e "$SEGADAPT_ROOT${_segadapt_extras:+[$_segadapt_extras]}" >&2
  echo "$_segadapt_hash" > "$_segadapt_stamp"
fi
