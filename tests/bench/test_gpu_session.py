"""bench/gpu_session.sh --dry-run on CPU: every stage's plumbing runs, and the files it leaves pass the schema check."""

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_session.sh"


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_schema_valid_results(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", "SEGADAPT_KERNELS")}
    completed = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path)], env=env, capture_output=True,
                               text=True)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert summary == {"stages": 7, "failed": [], "schema_problems": []}
    stages = [json.loads(line)["stage"] for line in (tmp_path / "stages.jsonl").read_text().splitlines()]
    # most important first: nothing that needs the GPU's time comes before the tests and the kernel rows
    assert stages == ["env", "roofline", "gpu-tests", "kernels", "train", "infer", "graph"]
    kernels = json.loads((tmp_path / "kernels-real.json").read_text())
    # upsample_bce also with its backward forced to the scatter (atomic) and the gather form, timed side by side
    assert {(row["name"], row["provider"], row["mode"]) for row in kernels["results"]} == {
        ("pseudo_label", "ref", "fwd"), ("pseudo_label", "triton", "fwd"),
        *(("upsample_bce", provider, mode)
          for provider in ("ref", "triton", "triton_scatter", "triton_gather") for mode in ("fwd", "full")),
    }  # fmt: skip
    roofline = json.loads((tmp_path / "roofline.json").read_text())
    assert {row["op"] for row in roofline["results"]} >= {"upsample_cross_entropy fwd+bwd", "pseudo_label"}
    graph = json.loads((tmp_path / "graph-breaks.json").read_text())["results"][0]
    # torch._dynamo.explain: every break starts a new graph (graph_break_count = graph_count - 1 in its
    # ExplainOutput); reasons are listed deduplicated, so at least one when there is any break
    assert graph["graph_count"] >= 1 and graph["graph_break_count"] == graph["graph_count"] - 1
    assert (len(graph["break_reasons"]) >= 1) == (graph["graph_break_count"] >= 1)
    assert "tensorrt" in (tmp_path / "skipped.txt").read_text()


def test_usage_error_without_outdir():
    completed = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert completed.returncode == 2 and "usage: bench/gpu_session.sh [--dry-run] OUTDIR" in completed.stderr
