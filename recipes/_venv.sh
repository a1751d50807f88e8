# Sourced by recipes/run.sh and tests/run.sh: create or reuse the project virtualenv and install what it needs.
# Installs happen once, and again only when pyproject.toml changes (a stamp records its hash).
# torch is installed first and explicitly, so that pip never picks a build for us: with nvidia-smi present the default
# (CUDA) wheel, otherwise torch==2.13.0, and SEGADAPT_TORCH_SPEC overrides both (pip arguments: a spec and options,
# e.g. "torch --index-url https://download.pytorch.org/whl/cpu" for PyTorch's CPU-only wheels).
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
    # One line says which torch build is chosen and why; pip options (an index URL) can follow the spec.
    if [ -n "${SEGADAPT_TORCH_SPEC:-}" ]; then
      echo "segadapt: torch: installing '$SEGADAPT_TORCH_SPEC' (SEGADAPT_TORCH_SPEC is set)" >&2
      # shellcheck disable=SC2086 # the spec may carry pip options such as --index-url
      python -m pip install --quiet $SEGADAPT_TORCH_SPEC >&2
    elif command -v nvidia-smi >/dev/null 2>&1; then
      echo "segadapt: torch: installing the default (CUDA) build: nvidia-smi found a GPU driver" >&2
      python -m pip install --quiet torch >&2
    else
      echo "segadapt: torch: installing torch==2.13.0 for a CPU-only machine (no nvidia-smi; set" \
        "SEGADAPT_TORCH_SPEC to choose, e.g. 'torch --index-url https://download.pytorch.org/whl/cpu')" >&2
      python -m pip install --quiet "torch==2.13.0" >&2
    fi
  else
    echo "segadapt: torch: keeping the installed $(python -c 'import torch; print(torch.__version__)')" >&2
  fi
  python -m pip install --quiet -e "$SEGADAPT_ROOT${_segadapt_extras:+[$_segadapt_extras]}" >&2
  echo "$_segadapt_hash" > "$_segadapt_stamp"
fi
