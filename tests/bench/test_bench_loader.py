"""Loader benchmark on CPU (tiny case): JSON schema, one row per backend x workers, GPU rows skipped, timing hygiene."""

import json
import time

import pytest
import torch

from segadapt.bench import loader

ENV_KEYS = {"device_name", "torch", "triton", "dali", "cuda", "git_sha", "timestamp"}


def test_loader_bench_tiny_json(tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "loader.json"
    argv = ["--cases", "tiny", "--backends", "torch,dali_cpu,dali_gpu", "--workers", "1", "--batch-size", "2"]
    argv += ["--count", "4", "--warmup", "1", "--batches", "3", "--cache", str(tmp_path / "data"), "--out", str(out)]
    payload = loader.main(argv)
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(payload, default=str)), "JSON differs from the returned payload"
    assert ENV_KEYS <= set(stored) and stored["bench"] == "loader" and stored["batches"] == 3
    rows = {row["backend"]: row for row in stored["results"]}
    assert sorted(rows) == ["dali_cpu", "dali_gpu", "torch"] and len(stored["results"]) == 3
    for backend in ("torch", "dali_cpu"):
        row = rows[backend]
        assert row["skipped"] is None and row["images_per_s"] > 0, f"[{backend}] {row}"
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], f"[{backend}] percentiles out of order"
        assert row["dataset"] == "gta5" and row["resize"] == [64, 36] and row["batch"] == 2 and row["workers"] == 1

    if not torch.cuda.is_available():
        assert rows["dali_gpu"]["skipped"] == "no CUDA device on this machine"
        assert rows["dali_gpu"]["images_per_s"] is None and rows["dali_gpu"]["p50_ms"] is None


class _SlowLoader:
    """Yields 2-image batches; the first `slow_first` calls sleep 50 ms (start-up), the rest `sleep_s`."""

    def __init__(self, slow_first: int, sleep_s: float) -> None:
        self.calls, self.slow_first, self.sleep_s = 0, slow_first, sleep_s

    def __iter__(self):
        return self

    def __next__(self):
        self.calls += 1
        time.sleep(0.05 if self.calls <= self.slow_first else self.sleep_s)
        return {"image": torch.zeros(2, 1, 1, 3)}


def test_warmup_batches_are_not_timed():
    fake = _SlowLoader(slow_first=2, sleep_s=0.0)
    stats = loader.time_loader(fake, warmup=2, batches=5, cuda=False)
    assert fake.calls == 7, "warmup + timed batches expected"
    assert stats["p99_ms"] < 5.0, f"a warm-up batch leaked into the timing: {stats}"


def test_slow_batches_show_in_latency_and_rate():
    """Control: 20 ms per 2-image batch must give p50 >= 20 ms and at most 100 images/s."""
    stats = loader.time_loader(_SlowLoader(slow_first=0, sleep_s=0.02), warmup=0, batches=4, cuda=False)
    assert stats["p50_ms"] >= 20.0 and stats["images_per_s"] <= 100.0


def test_cases_and_flags():
    real = loader.make_cases("real", 4, 16)
    assert [(case["dataset"], case["native"], case["resize"]) for case in real] == [
        ("gta5", [1914, 1052], [1280, 720]),
        ("cityscapes", [2048, 1024], [1024, 512]),
    ]
    with pytest.raises(ValueError, match="--cases 'huge'"):
        loader.make_cases("huge", 1, 1)
    with pytest.raises(SystemExit):
        loader.parse_args(["--backends", "torch,nvjpeg"])
    with pytest.raises(SystemExit):
        loader.parse_args(["--workers", "0"])
