#!/usr/bin/env bash
# Run the test suite on this machine: tests/run.sh [pytest args]. Creates .venv with the dev extras on first use.
# No GPU needed: Triton kernels run under TRITON_INTERPRET=1 and DALI through CPU pipelines.
set -euo pipefail
source "$(dirname "$0")/../recipes/_venv.sh" dev
cd "$SEGADAPT_ROOT"
set +e
python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests; that counts as a failure" >&2
  exit 1
fi
exit "$status"
