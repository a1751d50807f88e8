#!/usr/bin/env bash
# One command for a lent GPU: everything that needs one, most important first, in under 10 minutes.
#
#   bench/gpu_session.sh OUTDIR              on a CUDA machine (H100/H200; torch, triton, onnx, onnxruntime)
#   bench/gpu_session.sh --dry-run OUTDIR    on CPU: every stage's plumbing at tiny sizes + the JSON schema check
#
# Each stage runs under its own time limit, clipped to what is left of the session budget (SESSION_BUDGET_S,
# default 560 s, so that start-up fits in a 15-minute lease), and writes its result file as soon as it exists;
# OUTDIR/stages.jsonl gets one line per stage when it ends (rc, seconds, files), so a run cut off at any point
# still leaves every finished stage's data. What is missing on the machine (DALI, TensorRT) is skipped and said
# in OUTDIR/skipped.txt. Stages, in order:
#   env        versions, nvidia-smi, which optional packages exist                          env.json
#   roofline   predicted H100/H200 times from bench/results/kernels-aot-sm90.json (CPU)   roofline.json
#   gpu-tests  pytest -m gpu (kernel parity at real sizes, compile, channels-last)         gpu-tests.xml
#   kernels    bench kernels --cases real, N=8: triton vs eager vs torch.compile, GB/s,    kernels-real.json
#              % of peak, % of the roofline prediction (file rewritten after every row);
#              CE and BCE with the backward forced to its scatter and to its gather form too
#   train      bench train adaptseg_gta2cs ladder a-f at real size on synthetic data,    train-*.json
#              peak memory per row (f skipped without DALI)
#   graph      torch._dynamo.explain of the whole training step: graph and break counts   graph-breaks.json
#   infer      bench infer: eager fp32, compiled bf16 channels-last, onnxruntime, TRT      infer-*.json
set -u

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: bench/gpu_session.sh [--dry-run] OUTDIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python}
if [ -x "$REPO/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then PY="$REPO/.venv/bin/python"; fi
# A lent GPU's lease is ~15 minutes with start-up; the CPU dry run is slower (interpreter, no GPU) and unbounded.
if [ "$DRY" = 1 ]; then BUDGET=${SESSION_BUDGET_S:-1500}; GRAPH_LIMIT=600; else BUDGET=${SESSION_BUDGET_S:-560}; GRAPH_LIMIT=90; fi
START=$(date +%s)
STAGES="$OUT/stages.jsonl"
: > "$STAGES"
: > "$OUT/skipped.txt"
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    DEVICE=cpu
else
    unset TRITON_INTERPRET
    DEVICE=cuda
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_session: no CUDA device visible; use --dry-run on CPU" >&2
        exit 2
    fi
fi

skip() { echo "$1" | tee -a "$OUT/skipped.txt"; }

# stage NAME LIMIT_S CMD...: run with the smaller of LIMIT_S and the budget left; log to NAME.log; record it.
stage() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 15 ]; then
        echo "{\"stage\": \"$name\", \"rc\": null, \"seconds\": 0, \"limit_s\": 0, \"status\": \"no time left\"}" >> "$STAGES"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s, $left s left)"
    local begin=$(date +%s%N)
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local elapsed_ms=$((($(date +%s%N) - begin) / 1000000))
    local seconds=$((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))
    local status=ok
    [ "$rc" -ne 0 ] && status=failed
    [ "$rc" -eq 124 ] && status=timeout
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $seconds, \"limit_s\": $limit, \"status\": \"$status\", \"log\": \"$name.log\"}" >> "$STAGES"
    echo "   $status (rc $rc, ${seconds}s)"
    tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

# --- env: what this machine has; decides the skips below.
stage env 60 "$PY" - "$OUT/env.json" <<'EOF'
import importlib.util, json, subprocess, sys
from segadapt.bench.common import env_stamp, write_json
import torch
device = "cuda" if torch.cuda.is_available() else "cpu"
present = {name: importlib.util.find_spec(name) is not None
           for name in ("triton", "onnx", "onnxruntime", "tensorrt", "nvidia.dali")}
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,power.limit", "--format=csv"],
                     capture_output=True, text=True) if device == "cuda" else None
write_json(sys.argv[1], {"bench": "env", **env_stamp(device), "present": present,
                         "nvidia_smi": smi.stdout if smi else None, "results": []})
print(json.dumps(present))
EOF
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('nvidia.dali') else 1)" 2>/dev/null; then
    skip "train row f (DALI loader): no nvidia-dali wheel on this machine"
    TRAIN_SKIP=(--skip "f=no DALI wheel on this machine")
else
    TRAIN_SKIP=()
fi
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('tensorrt') else 1)" 2>/dev/null; then
    skip "infer tensorrt-fp16 / tensorrt-int8: no tensorrt package on this machine"
    INFER_PROVIDERS=eager-fp32,compiled-amp-cl,onnxruntime
else
    INFER_PROVIDERS=eager-fp32,compiled-amp-cl,onnxruntime,tensorrt-fp16,tensorrt-int8
fi

# --- roofline: the prediction the measurements below are compared against (CPU only, instant).
ROOF_DEVICE=h100
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() and 'H200' in torch.cuda.get_device_name() else 1)" \
    2>/dev/null && ROOF_DEVICE=h200
stage roofline 30 "$PY" -m segadapt.bench roofline --device "$ROOF_DEVICE" --json "$OUT/roofline.json"

if [ "$DRY" = 1 ]; then
    # Plumbing only: the gpu tests must collect; every bench runs its smallest case on CPU.
    stage gpu-tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests/kernels
    stage kernels 240 "$PY" -m segadapt.bench kernels --device cpu --cases tiny --ops pseudo_label,upsample_bce \
        --providers ref,triton,triton_scatter,triton_gather --modes fwd,full --warmup 0 --rep 1 --out "$OUT/kernels-real.json"
    stage train 300 "$PY" -m segadapt.bench train demo --rows a,e --warmup 0 --steps 1 --profile-steps 1 \
        --count 2 --out "$OUT" "${TRAIN_SKIP[@]}"
    GRAPH_RECIPE=demo
    stage infer 120 "$PY" -m segadapt.bench infer --device cpu --recipe demo --size 64x32 --providers eager-fp32 \
        --warmup 0 --rep 1 --out "$OUT"
else
    stage gpu-tests 100 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/engine \
        --junitxml="$OUT/gpu-tests.xml"
    stage kernels 150 "$PY" -m segadapt.bench kernels --device cuda --cases real --batches 8 --modes fwd,full \
        --providers triton,triton_scatter,triton_gather,ref,ref_compiled --warmup 3 --rep 20 --out "$OUT/kernels-real.json"
    stage train 200 "$PY" -m segadapt.bench train adaptseg_gta2cs --rows a,b,c,d,e,f --warmup 2 --steps 5 \
        --profile-steps 2 --out "$OUT" "${TRAIN_SKIP[@]}"
    GRAPH_RECIPE=adaptseg_gta2cs
    stage infer 60 "$PY" -m segadapt.bench infer --device cuda --providers "$INFER_PROVIDERS" --warmup 2 --rep 5 \
        --out "$OUT"
fi

# --- graph: torch.compile's view of one whole training step (graph breaks are what keeps it from one graph).
stage graph "$GRAPH_LIMIT" "$PY" - "$GRAPH_RECIPE" "$OUT/graph-breaks.json" <<'EOF'
import sys
import torch
from segadapt.bench.common import env_stamp, write_json
from segadapt.bench.train import bench_config, build_row, kernel_mode, ladder, row_config
from segadapt.train import train_step
recipe, out = sys.argv[1], sys.argv[2]
device = "cuda" if torch.cuda.is_available() else "cpu"
# The fastest ladder row this machine runs (e on a GPU: channels-last, AMP, Triton kernels), compiled as one step
# instead of the engine's per-model torch.compile.
plan = [row for row in ladder(list("abcde"), torch.device(device)) if row["skipped"] is None]
settings = {**plan[-1]["settings"], "compile": "off"}
cfg = row_config(bench_config(recipe, [], count=2), settings)
with kernel_mode(settings["kernels"]):
    run = build_row(cfg)
    train_step(run, 0)  # warm: lazy state (queues, teacher) exists before tracing
    # The batch is read outside: the loader (PIL, numpy) is not part of the device step being compiled.
    batch = {name: run.streams.next(name) for name in run.method.streams}
    explanation = torch._dynamo.explain(lambda: run.method.train_step(batch, run.ctx))()
reasons = [str(getattr(b, "reason", b))[:300] for b in explanation.break_reasons][:50]
write_json(out, {"bench": "graph", **env_stamp(device), "recipe": recipe, "results": [{
    "recipe": recipe, "row": plan[-1]["row"], "graph_count": explanation.graph_count, "graph_break_count": explanation.graph_break_count,
    "op_count": explanation.op_count, "break_reasons": reasons}]})
print(f"graphs {explanation.graph_count}, graph breaks {explanation.graph_break_count}")
EOF

# --- schema: every JSON written carries the environment stamp and a results list; stages.jsonl parses.
"$PY" - "$OUT" "$DRY" <<'EOF'
import json, pathlib, sys
out, dry = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
stamp = ("device_name", "torch", "triton", "cuda", "git_sha", "timestamp")
stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines() if line.strip()]
problems = []
for path in sorted(out.glob("*.json")):
    payload = json.loads(path.read_text())
    missing = [key for key in ("bench", "results") if key not in payload]
    missing += [key for key in stamp if key not in payload and payload.get("bench") != "roofline"]
    if missing:
        problems.append(f"{path.name}: missing {missing}")
    elif not isinstance(payload["results"], list):
        problems.append(f"{path.name}: results is not a list")
expected = {"env": "env.json", "roofline": "roofline.json", "kernels": "kernels-real.json",
            "graph": "graph-breaks.json"}
for stage in stages:
    name = expected.get(stage["stage"])
    if stage["status"] == "ok" and name and not (out / name).is_file():
        problems.append(f"stage {stage['stage']} ok but {name} missing")
failed = [s["stage"] for s in stages if s["status"] != "ok"]
summary = {"stages": len(stages), "failed": failed, "schema_problems": problems}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
sys.exit(1 if problems or (dry and failed) else 0)
EOF
