"""Input-pipeline benchmark: images/s and batch latency of the torch loader, DALI on the CPU and DALI on the GPU.

    python -m segadapt.bench.loader --cases real --backends torch,dali_cpu,dali_gpu --workers 2,4,8

Cases mirror AdaptSegNet's resize-only pipelines at the datasets' native resolutions: GTA5 (1914x1052 PNG resized to
1280x720) and Cityscapes (2048x1024 resized to 1024x512), on synthshift images generated at those sizes into a
cache folder. A batch's latency is the wall time between two consecutive batches handed to the consumer (the
trainer's view, prefetching included); on CUDA the clock stops after `torch.cuda.synchronize()` so a GPU batch
counts only once it is ready. Warm-up batches (worker start, pipeline build) are never timed. Images/s is
batches x batch size over the timed window. Backends that cannot run here (DALI without DALI, DALI GPU without a
GPU) get a row with the reason instead of numbers. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from segadapt.bench.common import Case
from segadapt.bench.common import check_counts
from segadapt.bench.common import env_stamp
from segadapt.bench.common import markdown_table
from segadapt.bench.common import result_path
from segadapt.bench.common import write_json
from segadapt.config import Stream

BACKENDS = ("torch", "dali_cpu", "dali_gpu")
CACHE = Path(__file__).resolve().parent.parent / "runs" / "bench-data"


def make_cases(name: str, batch_size: int, count: int) -> list[Case]:
    """Named case sets: "real" (GTA5 1914x1052 -> 1280x720, Cityscapes 2048x1024 -> 1024x512) or "tiny" (CPU smoke)."""
    if name == "real":
        shapes = [("gta5", (1914, 1052), (1280, 720)), ("cityscapes", (2048, 1024), (1024, 512))]
    elif name == "tiny":
        shapes = [("gta5", (96, 53), (64, 36))]
    else:
        raise ValueError(f"--cases {name!r}: expected 'real' or 'tiny'")
    return [
        Case(
            name=f"{dataset}-{native[0]}x{native[1]}-to-{resize[0]}x{resize[1]}-N{batch_size}",
            params={
                "dataset": dataset,
                "native": list(native),
                "resize": list(resize),
                "batch": batch_size,
                "count": count,
            },
        )  # fmt: skip
        for dataset, native, resize in shapes
    ]


def ensure_data(case: Case, cache: Path) -> Path:
    """Generate synthshift at the case's native size into `cache` (once) and return the dataset root."""
    from segadapt.data import synthshift

    width, height = case["native"]
    folder = cache / f"synthshift-{width}x{height}-{case['count']}"
    root = folder / case["dataset"]
    if not (folder / ".done").is_file():
        synthshift.generate(folder, seed=0, size=(width, height), count=case["count"], formats=(case["dataset"],))
        (folder / ".done").write_text("ok\n")
    return root


def _stream(case: Case, root: Path) -> Stream:
    return Stream(dataset=case["dataset"], root=str(root), split="train", batch_size=case["batch"],
                  resize=tuple(case["resize"]))  # fmt: skip


def skip_reason(backend: str) -> str | None:
    """Why `backend` cannot run on this machine, or None."""
    from segadapt.data import dali

    if backend.startswith("dali") and not dali.dali_available():
        return "nvidia.dali does not import"
    if backend == "dali_gpu" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    return None


def make_loader(backend: str, stream: Stream, workers: int, prefetch: int) -> Any:
    """A StreamLoader of `backend` over `stream` (seed 0, rank 0 of 1)."""
    if backend == "torch":
        from segadapt.data.torch_loader import StreamLoader

        return StreamLoader(stream, "source", 0, num_workers=workers, prefetch=prefetch)
    from segadapt.data.dali import StreamLoader as DaliStreamLoader

    device = "cuda" if backend == "dali_gpu" else "cpu"
    return DaliStreamLoader(stream, "source", 0, num_workers=workers, prefetch=prefetch, device=device)


def _percentile(samples: list[float], q: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def time_loader(loader: Any, warmup: int, batches: int, cuda: bool) -> dict[str, float]:
    """Latencies (ms) of `batches` consecutive batches after `warmup` untimed ones; images/s over the timed window."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    if cuda:
        torch.cuda.synchronize()
    latencies, images = [], 0
    start = last = time.perf_counter()
    for _ in range(batches):
        raw = next(iterator)
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        latencies.append((now - last) * 1e3)
        last = now
        images += raw["image"].shape[0]
    total = last - start
    return {
        "images_per_s": images / total,
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
    }


def measure(case: Case, backend: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row: the case's parameters, the backend, and its numbers (or the reason it was skipped)."""
    row: dict[str, Any] = {"case": case.name, **case.params, "backend": backend, "workers": workers}
    row.update({"images_per_s": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "skipped": None})
    reason = skip_reason(backend)
    if reason is not None:
        row["skipped"] = reason
        return row
    loader = make_loader(backend, _stream(case, ensure_data(case, args.cache)), workers, args.prefetch)
    try:
        row.update(time_loader(loader, args.warmup, args.batches, cuda=backend == "dali_gpu"))
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every case x backend x workers, print the table, write the JSON; returns the payload."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stamp = env_stamp(device)
    rows = []
    for case in make_cases(args.cases, args.batch_size, args.count):
        for backend in args.backends:
            for workers in args.workers:
                rows.append(measure(case, backend, workers, args))
    columns = ["case", "backend", "workers", "images_per_s", "p50_ms", "p90_ms", "p99_ms", "skipped"]
    print(markdown_table(rows, columns))
    payload = {
        **stamp,
        "bench": "loader",
        "cases": args.cases,
        "warmup": args.warmup,
        "batches": args.batches,
        "prefetch": args.prefetch,
        "results": rows,
    }
    out = args.out or result_path("loader", "uint8", "nhwc", stamp["device_name"])
    print(f"wrote {write_json(out, payload)}")
    return payload


def _csv_backends(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = sorted(set(values) - set(BACKENDS))
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"--backends: unknown {unknown}; expected a comma list of {list(BACKENDS)}")
    return values


def _csv_workers(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--workers: expected a comma list of integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--workers: expected integers >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench.loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="real", choices=["real", "tiny"], help="named case set")
    parser.add_argument("--backends", type=_csv_backends, default=list(BACKENDS), help="torch,dali_cpu,dali_gpu")
    parser.add_argument("--workers", type=_csv_workers, default=[2, 4, 8], help="worker processes / DALI threads")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    parser.add_argument("--count", type=int, default=16, help="synthshift images generated per case")
    parser.add_argument("--prefetch", type=int, default=2, help="batches prepared ahead")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where generated images are kept")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/loader-...json)")
    args = parser.parse_args(argv)
    check_counts(parser, args, ("batch_size", "count", "prefetch", "batches"))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
