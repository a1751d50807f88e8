"""What every benchmark shares: cases and results, timing, peak memory, the environment stamp and output.

Timing follows the Triton tutorials (`triton.testing.do_bench` with median/p20/p80 on CUDA) and a plain
`perf_counter` loop on CPU; warm-up calls are never timed. Results are printed as a GitHub-markdown table and
written as JSON, atomically, to `bench/results/<bench>-<precision>-<layout>-pt<ver>-cu<ver>-<device>.json`
(timm's naming), stamped with device and versions. A benchmark never asserts a time.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Peak DRAM bandwidth in GB/s from vendor datasheets, matched by the tokens of torch's device name (first match
# wins, so the more specific entries come first).
_PEAK_BANDWIDTH_GBPS: list[tuple[tuple[str, ...], float]] = [
    (("H200",), 4800.0),
    (("H100", "PCIE"), 2000.0),
    (("H100", "NVL"), 3900.0),
    (("H100",), 3350.0),  # SXM5 80GB HBM3
    (("GH200",), 4000.0),
    (("A100", "PCIE", "80GB"), 1935.0),
    (("A100", "80GB"), 2039.0),  # SXM4
    (("A100",), 1555.0),  # 40GB
    (("L40S",), 864.0),
    (("A10G",), 600.0),
    (("L4",), 300.0),
    (("V100",), 900.0),
    (("RTX", "4090"), 1008.0),
    (("RTX", "3090"), 936.0),
    (("T4",), 320.0),
]


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: a name for tables and the parameters a setup function reads."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key not in self.params:
            raise KeyError(f"case {self.name!r} has no parameter {key!r}; it has {sorted(self.params)}")
        return self.params[key]


@dataclass(frozen=True)
class Result:
    """One measured row. Times are milliseconds; `metrics` holds benchmark-specific numbers (GB/s, images/s)."""

    bench: str
    name: str
    case: Case
    provider: str
    mode: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_memory_mib: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Flat dict for tables and JSON: case parameters and metrics side by side with the timings."""
        flat = {key: value for key, value in dataclasses.asdict(self).items() if key not in ("case", "metrics")}
        return {"case": self.case.name, **self.case.params, **flat, **self.metrics}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def _cpuinfo_field(key: str, cpuinfo: Path) -> str:
    """The first non-empty `key` line's value in /proc/cpuinfo's format ("" where there is none or no file)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            name, colon, value = line.partition(":")
            if colon and name.strip() == key and value.strip():
                return value.strip()
    except OSError:
        pass
    return ""


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (first "model name" of /proc/cpuinfo; platform.processor() where there is none)."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (first "flags" line of /proc/cpuinfo; empty where there is none)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def _package_version(*distributions: str) -> str | None:
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _git_sha() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


def env_stamp(device: str = "cuda") -> dict[str, Any]:
    """Device, software versions and CPU thread count every result JSON carries (`dali`/`triton` None if absent)."""
    return {
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "dali": _package_version("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),  # intra-op threads: CPU timings depend on it
        # The CPU and the kernels torch picks for it (AVX2, AVX512; oneDNN uses AMX where the flags show it): both move
        # timings, and from-scratch training on CPU rounds differently from one to another, so the same seeds give
        # other mIoU (issue 18); a result says which machine it came from.
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_amx": "amx_tile" in cpu_flags(),
        "git_sha": _git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _quantiles(samples_ms: Sequence[float]) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile (inclusive method: defined for a single sample too)."""
    if len(samples_ms) == 1:
        return samples_ms[0], samples_ms[0], samples_ms[0]
    cuts = statistics.quantiles(samples_ms, n=10, method="inclusive")  # deciles: cuts[1] = p20, cuts[7] = p80
    return statistics.median(samples_ms), cuts[1], cuts[7]


def time_fn(fn: Callable[[], Any], warmup: int = 3, rep: int = 10, device: str = "cpu") -> tuple[float, float, float]:
    """Median, p20 and p80 milliseconds of `fn()`, warm-up calls excluded.

    Args:
        fn: the work to time, called with no arguments.
        warmup: number of untimed calls first (compilation, autotuning, allocator warm-up).
        rep: number of timed calls on CPU; on CUDA the timed window is rep times the estimated call time,
            handed to `triton.testing.do_bench`, which synchronises and flushes L2 between calls.
        device: "cpu" or a CUDA device.
    """
    if warmup < 0 or rep < 1:
        raise ValueError(f"time_fn: warmup must be >= 0 and rep >= 1, got warmup={warmup}, rep={rep}")
    if device.startswith("cuda"):
        import triton.testing

        fn()  # first call outside any estimate: compilation and autotuning
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        estimate_ms = max((time.perf_counter() - start) * 1e3, 1e-3)
        median, p20, p80 = triton.testing.do_bench(
            fn, warmup=warmup * estimate_ms, rep=rep * estimate_ms, quantiles=[0.5, 0.2, 0.8]
        )
        return float(median), float(p20), float(p80)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rep):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return _quantiles(samples)


def peak_memory(fn: Callable[[], Any], device: str = "cuda") -> float | None:
    """Peak memory (MiB) that one call of `fn` allocates above what was allocated before; None on CPU."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def device_peak_bandwidth(device_name: str) -> float | None:
    """Datasheet DRAM bandwidth in GB/s for a torch device name such as "NVIDIA H100 80GB HBM3"; None if unknown."""
    tokens = re.sub(r"[^A-Z0-9]+", " ", device_name.upper()).split()
    for required, gbps in _PEAK_BANDWIDTH_GBPS:
        if all(token in tokens for token in required):
            return gbps
    return None


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """GitHub-markdown table of `columns` from dict rows; floats to 4 significant digits, missing as "-"."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write `payload` as JSON atomically: a temporary file in the same folder, fsync, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; results are meant to be read and committed
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def result_path(bench: str, precision: str, layout: str, device: str, root: str | Path = RESULTS_DIR) -> Path:
    """`<root>/<bench>-<precision>-<layout>-pt<ver>-cu<ver>-<device>.json`; `device` is a device name."""
    torch_version = torch.__version__.split("+")[0]
    cuda_version = torch.version.cuda or "none"
    name = f"{bench}-{precision}-{layout}-pt{torch_version}-cu{cuda_version}-{_slug(device)}.json"
    return Path(root) / name


def check_counts(parser, args, positive: tuple[str, ...], non_negative: tuple[str, ...] = ("warmup",)) -> None:
    """argparse error naming the flag when a count that must be >= 1 (or >= 0) is not."""
    for name, low in [(n, 1) for n in positive] + [(n, 0) for n in non_negative]:
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
