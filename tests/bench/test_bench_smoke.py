"""Kernel benchmark harness on CPU (Triton interpreter, tiny case): JSON schema, row coverage, timing hygiene."""

import json
import time

import pytest
import torch

from segadapt.bench import common
from segadapt.bench import kernels

ENV_KEYS = {"device_name", "torch", "triton", "dali", "cuda", "git_sha", "timestamp", "cpu_model", "cpu_capability"}
MY_OPS = ["upsample_cross_entropy", "upsample_bce"]


def _run(tmp_path, ops, providers="ref,triton", modes="fwd,full"):
    out = tmp_path / "segadapt.kernels.json"
    argv = ["--device", "cpu", "--cases", "tiny", "--precision", "fp32", "--ops", ",".join(ops)]
    argv += ["--providers", providers, "--modes", modes, "--warmup", "1", "--rep", "2", "--out", str(out)]
    payload = kernels.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload, default=str)), "JSON differs from payload"
    return json.loads(out.read_text())


def test_kernel_bench_json_schema(tmp_path):
    payload = _run(tmp_path, MY_OPS)
    assert ENV_KEYS <= set(payload), f"missing env keys {ENV_KEYS - set(payload)}"
    assert payload["bench"] == "kernels" and payload["cases"] == "tiny"
    got = sorted((row["name"], row["provider"], row["mode"]) for row in payload["results"])
    want = sorted((op, provider, mode) for op in MY_OPS for provider in ("ref", "triton") for mode in ("fwd", "full"))
    assert got == want, "expected exactly one row per op x provider x mode"
    for row in payload["results"]:
        for key in ("median_ms", "p20_ms", "p80_ms", "gbps"):
            assert row[key] > 0, f"[{row['name']}/{row['provider']}/{row['mode']}] {key} = {row[key]}"
        assert row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["peak_memory_mib"] is None, "CPU has no allocator peak; expected None"
        assert row["batch"] == 1 and row["classes"] == 19 and (row["height"], row["width"]) == (33, 65)


def test_bytes_moved_by_hand():
    """N1, C19, 33x65 labels, stride 8 -> 5x9 logits; fp32: fwd reads logits once and int64 labels once."""
    case = kernels.make_cases("tiny", "cpu", "fp32", "nchw")[0]
    logits, labels = 19 * 5 * 9 * 4, 33 * 65 * 8
    assert kernels.OPS["upsample_cross_entropy"].bytes_moved(case, "fwd") == logits + labels
    assert kernels.OPS["upsample_cross_entropy"].bytes_moved(case, "full") == 3 * logits + 2 * labels
    assert kernels.OPS["upsample_bce"].bytes_moved(case, "fwd") == 2 * 3 * 4 + 33 * 65


def test_other_ops_plug_in(tmp_path):
    """The U2PL / AdvSemiSeg ops (written elsewhere) get one row per supported provider, forward only."""
    others = [name for name in kernels.OPS if name not in MY_OPS]
    for module in ("entropy_percentile", "pseudo_label", "memory_queue"):
        pytest.importorskip(f"segadapt.kernels.{module}")
    payload = _run(tmp_path, others, modes="fwd")
    got = sorted((row["name"], row["provider"]) for row in payload["results"])
    want = sorted((name, p) for name in others for p in ("ref", "triton") if p in kernels.OPS[name].providers)
    assert got == want
    assert all(row["median_ms"] > 0 and row["gbps"] > 0 for row in payload["results"])


def test_time_fn_excludes_warmup():
    """The first 3 calls sleep 50 ms (compilation stand-in); with warmup=3 none of them may be timed."""
    calls = []

    def fn():
        calls.append(None)
        if len(calls) <= 3:
            time.sleep(0.05)

    median, p20, p80 = common.time_fn(fn, warmup=3, rep=5, device="cpu")
    assert len(calls) == 8, "warmup + rep calls expected"
    assert p80 < 5.0, f"a warm-up sleep leaked into the timed calls: p80 = {p80:.2f} ms"
    assert 0 < p20 <= median <= p80


def test_time_fn_counts_slow_timed_calls():
    """Control for the test above: a sleep inside the timed window must show up in the median."""
    median, _, _ = common.time_fn(lambda: time.sleep(0.02), warmup=0, rep=3, device="cpu")
    assert median >= 20.0


def test_env_stamp_names_the_cpu(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6448Y\n"
                       "flags\t\t: fpu avx2 amx_tile avx512f\n\nprocessor\t: 1\nmodel name\t: other\n")  # fmt: skip
    assert common.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6448Y"
    assert common.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_tile", "avx512f"}
    assert common.cpu_model(tmp_path / "missing") and common.cpu_flags(tmp_path / "missing") == set()
    stamp = common.env_stamp("cpu")
    assert stamp["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and isinstance(stamp["cpu_amx"], bool)


def test_common_helpers(tmp_path):
    table = common.markdown_table([{"a": 1.23456, "b": None}, {"a": "x|y", "b": 2}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | - |", "| x\\|y | 2 |"]
    path = common.write_json(tmp_path / "sub" / "r.json", {"k": [1, 2]})
    assert json.loads(path.read_text()) == {"k": [1, 2]} and list(path.parent.iterdir()) == [path]
    assert common.device_peak_bandwidth("NVIDIA H100 80GB HBM3") == 3350.0
    assert common.device_peak_bandwidth("NVIDIA H100 PCIe") == 2000.0
    assert common.device_peak_bandwidth("NVIDIA H200") == 4800.0
    assert common.device_peak_bandwidth("NVIDIA A100-SXM4-80GB") == 2039.0
    assert common.device_peak_bandwidth("x86_64") is None
    name = common.result_path("kernels", "bf16", "channels_last", "NVIDIA H100 80GB HBM3").name
    assert name.startswith("kernels-bf16-channels_last-pt") and name.endswith("-nvidia-h100-80gb-hbm3.json")
    case = common.Case("c", {"batch": 2})
    with pytest.raises(KeyError, match="no parameter 'classes'"):
        case["classes"]


def test_bad_cli_values_name_the_flag():
    with pytest.raises(SystemExit):
        kernels.parse_args(["--providers", "ref,cudnn"])
    with pytest.raises(ValueError, match="warmup"):
        common.time_fn(lambda: None, warmup=-1, rep=1)
