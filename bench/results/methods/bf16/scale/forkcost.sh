#!/bin/bash
# How forecast.py's FORK_S was measured: the quick uda-lsd lane (2 training seeds x 1 data seed: 5 runs of 2 steps,
# --jobs 1), as subprocesses and forked, alternating, three rounds, the machine otherwise idle; prints each round's
# seconds a run (protocol.json's elapsed_s). Run from the repository root in its environment.
set -euo pipefail
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for round in 1 2 3; do
  for launch in subprocess fork; do
    rm -rf "$scratch/$launch"
    python -m segadapt.bench methods --lane uda-lsd --quick --seeds 1,2 --data-seeds 1 --jobs 1 --launch "$launch" \
      --runs "$scratch/$launch" --out "$scratch/results-$launch" > /dev/null
    python - "$scratch/$launch" "$launch" "$round" <<'PY'
import json, pathlib, sys
seconds = sorted(json.loads(p.read_text())["elapsed_s"] for p in pathlib.Path(sys.argv[1]).glob("uda-lsd/*/*/protocol.json"))
print(f"round {sys.argv[3]} {sys.argv[2]:10s} {len(seconds)} runs, s: {[round(s, 2) for s in seconds]}, sum {sum(seconds):.2f}")
PY
  done
done
