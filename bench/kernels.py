"""Kernel benchmark: every op of kernels/ against its PyTorch reference, eager and compiled.

    python -m segadapt.bench kernels --device cuda --cases real --modes fwd,full --providers ref,ref_compiled,triton

Each op has one `setup(case, provider, mode) -> fn` and one `bytes_moved(case, mode)`. GB/s is the op's
compulsory traffic over the median time, the same byte count for every provider (the Triton softmax tutorial's
"effective bandwidth"): "fwd" reads the inputs once and writes the outputs once; "full" (forward + backward) reads
the inputs twice, because the backward recomputes from them, and writes the gradient once. References are imported
from kernels/, never copied. Providers: `ref` (eager `<op>_ref`), `ref_compiled` (`torch.compile(<op>_ref)`),
`triton` (the public op, which must dispatch to Triton: CUDA, or CPU under TRITON_INTERPRET=1). Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from segadapt.bench.common import Case
from segadapt.bench.common import Result
from segadapt.bench.common import device_peak_bandwidth
from segadapt.bench.common import env_stamp
from segadapt.bench.common import markdown_table
from segadapt.bench.common import peak_memory
from segadapt.bench.common import result_path
from segadapt.bench.common import time_fn
from segadapt.bench.common import write_json

PROVIDERS = ("ref", "ref_compiled", "triton", "triton_scatter", "triton_gather")
# triton_scatter / triton_gather: the op's Triton kernels with the backward forced to its scatter (atomic) or gather
# (deterministic) form, timed beside the default on the ops that have both (both default to gather where it fits).
_BACKWARD_ENV = {"upsample_cross_entropy": "SEGADAPT_CE_BACKWARD", "upsample_bce": "SEGADAPT_BCE_BACKWARD"}
MODES = ("fwd", "full")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
_ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class KernelOp:
    """A benchmarked op: how to build a timed closure, its compulsory bytes, and what it supports."""

    setup: Callable[[Case, str, str], Callable[[], Any]]
    bytes_moved: Callable[[Case, str], int]
    modes: tuple[str, ...] = MODES
    providers: tuple[str, ...] = PROVIDERS


# --------------------------------------------------------------------------------------------------- cases
def make_cases(name: str, device: str, precision: str, layout: str) -> list[Case]:
    """Named case sets. "real": N 1..8, C 19/21, 1280x720 and 1024x512 labels, stride-8 logits; "tiny": CPU smoke."""
    common = {"device": device, "precision": precision, "layout": layout}
    if name == "tiny":
        sizes, batches, classes, queue_length = [(33, 65)], [1], [19], 64
    elif name == "real":
        sizes, batches, classes, queue_length = [(720, 1280), (512, 1024)], [1, 2, 4, 8], [19, 21], None
    else:
        raise ValueError(f"--cases {name!r}: expected 'real' or 'tiny'")
    return [
        Case(
            name=f"N{batch}-C{num_classes}-{height}x{width}",
            params={
                "batch": batch,
                "classes": num_classes,
                "height": height,
                "width": width,
                "stride": 8,
                "disc_stride": 32,
                "queue_length": queue_length,
                "feature_dim": 256,
                **common,
            },
        )  # fmt: skip
        for height, width in sizes
        for batch in batches
        for num_classes in classes
    ]


def _low_res(case: Case, stride: int) -> tuple[int, int]:
    return math.ceil(case["height"] / stride), math.ceil(case["width"] / stride)


def _float_map(case: Case, channels: int, size: tuple[int, int], requires_grad: bool) -> torch.Tensor:
    shape = (case["batch"], channels, *size)
    tensor = torch.randn(shape, device=case["device"]).to(_DTYPES[case["precision"]])
    return tensor.to(memory_format=_LAYOUTS[case["layout"]]).requires_grad_(requires_grad)


def _label_map(case: Case, high: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    shape = (case["batch"], case["height"], case["width"])
    labels = torch.randint(0, high, shape, device=case["device"])
    labels[torch.rand(shape, device=case["device"]) < 0.1] = 255  # some ignore, as real labels have
    return labels.to(dtype)


def _pick(reference: Callable, public: Callable, provider: str, probe: torch.Tensor) -> Callable:
    """The callable a provider times; `triton` must really reach the kernel, not fall back to the reference."""
    if provider == "ref":
        return reference
    if provider == "ref_compiled":
        return torch.compile(reference)
    from segadapt.kernels._dispatch import use_triton

    if not use_triton(probe):
        raise ValueError(
            f"provider {provider!r} on {probe.device}: the op would run its reference; use CUDA or TRITON_INTERPRET=1"
        )
    if provider in ("triton_scatter", "triton_gather"):
        variable, form = _BACKWARD_ENV[public.__name__], provider.removeprefix("triton_")

        def forced(*args, **kwargs):
            # The launchers read the switch at call time, so it is set around each call only.
            saved, os.environ[variable] = os.environ.get(variable), form
            try:
                return public(*args, **kwargs)
            finally:
                os.environ.pop(variable) if saved is None else os.environ.__setitem__(variable, saved)

        return forced
    return public


def _timed(fn: Callable[[], torch.Tensor], leaf: torch.Tensor, mode: str) -> Callable[[], Any]:
    if mode == "fwd":
        return fn

    def forward_backward():
        leaf.grad = None
        fn().backward()

    return forward_backward


# ------------------------------------------------------------------------------------------------- my ops
def _setup_upsample_cross_entropy(case: Case, provider: str, mode: str) -> Callable[[], Any]:
    from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy
    from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy_ref

    logits = _float_map(case, case["classes"], _low_res(case, case["stride"]), requires_grad=True)
    labels = _label_map(case, case["classes"])
    op = _pick(upsample_cross_entropy_ref, upsample_cross_entropy, provider, logits)
    return _timed(lambda: op(logits, labels, align_corners=True), logits, mode)


def _bytes_upsample_cross_entropy(case: Case, mode: str) -> int:
    height, width = _low_res(case, case["stride"])
    logits = case["batch"] * case["classes"] * height * width * _ELEMENT_BYTES[case["precision"]]
    labels = case["batch"] * case["height"] * case["width"] * 8
    return logits + labels if mode == "fwd" else 3 * logits + 2 * labels


def _setup_upsample_bce(case: Case, provider: str, mode: str) -> Callable[[], Any]:
    from segadapt.kernels.upsample_bce import upsample_bce
    from segadapt.kernels.upsample_bce import upsample_bce_ref

    d_logits = _float_map(case, 1, _low_res(case, case["disc_stride"]), requires_grad=True)
    target = _label_map(case, 2, torch.uint8)  # AdvSemiSeg: per-pixel 0/1 with 255 = ignore
    op = _pick(upsample_bce_ref, upsample_bce, provider, d_logits)
    size = (case["height"], case["width"])
    return _timed(lambda: op(d_logits, size, target, align_corners=True), d_logits, mode)


def _bytes_upsample_bce(case: Case, mode: str) -> int:
    height, width = _low_res(case, case["disc_stride"])
    d_logits = case["batch"] * height * width * _ELEMENT_BYTES[case["precision"]]
    target = case["batch"] * case["height"] * case["width"]
    return d_logits + target if mode == "fwd" else 3 * d_logits + 2 * target


# ------------------------------------------------------------------------- the other engineer's ops (U2PL, AdvSemiSeg)
def _setup_entropy_percentile(case: Case, provider: str, mode: str) -> Callable[[], Any]:
    from segadapt.kernels.entropy_percentile import entropy_percentile
    from segadapt.kernels.entropy_percentile import entropy_percentile_ref

    logits = _float_map(case, case["classes"], (case["height"], case["width"]), requires_grad=False)
    ignore = _label_map(case, 2) == 255
    op = _pick(entropy_percentile_ref, entropy_percentile, provider, logits)
    return lambda: op(logits, ignore, 80.0)


def _bytes_entropy_percentile(case: Case, mode: str) -> int:
    pixels = case["batch"] * case["height"] * case["width"]
    return pixels * case["classes"] * _ELEMENT_BYTES[case["precision"]] + pixels * (1 + 4 + 2)


def _setup_pseudo_label(case: Case, provider: str, mode: str) -> Callable[[], Any]:
    from segadapt.kernels.pseudo_label import pseudo_label
    from segadapt.kernels.pseudo_label import pseudo_label_ref

    logits = _float_map(case, case["classes"], (case["height"], case["width"]), requires_grad=False)
    confidence = torch.rand(logits.shape[0], *logits.shape[2:], device=case["device"])
    op = _pick(pseudo_label_ref, pseudo_label, provider, logits)
    return lambda: op(logits, confidence_mask=confidence, threshold=0.2)


def _bytes_pseudo_label(case: Case, mode: str) -> int:
    pixels = case["batch"] * case["height"] * case["width"]
    return pixels * case["classes"] * _ELEMENT_BYTES[case["precision"]] + pixels * (4 + 8 + 4)


def _queue(case: Case):
    from segadapt.kernels.memory_queue import MemoryQueue
    from segadapt.kernels.memory_queue import u2pl_lengths

    lengths = case["queue_length"] or u2pl_lengths(case["classes"])
    queue = MemoryQueue(case["classes"], case["feature_dim"], lengths, device=case["device"])
    return queue


def _enqueue_rows(case: Case) -> int:
    return 1024 * case["batch"]


def _setup_memory_queue_enqueue(case: Case, provider: str, mode: str) -> Callable[[], Any]:
    from segadapt.kernels.memory_queue import memory_queue_enqueue
    from segadapt.kernels.memory_queue import memory_queue_enqueue_ref

    queue = _queue(case)
    features = torch.randn(_enqueue_rows(case), case["feature_dim"], device=case["device"])
    classes = torch.randint(0, case["classes"], (features.shape[0],), device=case["device"])
    op = _pick(memory_queue_enqueue_ref, memory_queue_enqueue, provider, features)
    state = (queue.storage, queue.offsets, queue.lengths, queue.write_ptr, queue.count)
    return lambda: op(*state, features, classes)


def _bytes_memory_queue_enqueue(case: Case, mode: str) -> int:
    return 2 * _enqueue_rows(case) * case["feature_dim"] * 4 + _enqueue_rows(case) * 8


def _setup_memory_queue_sample(case: Case, provider: str, mode: str) -> Callable[[], Any]:
    queue = _queue(case)
    features = torch.randn(_enqueue_rows(case), case["feature_dim"], device=case["device"])
    queue.enqueue(features, torch.randint(0, case["classes"], (features.shape[0],), device=case["device"]))
    queries = torch.arange(case["classes"], device=case["device"]).repeat_interleave(256)  # U2PL: 256 per class
    generator = torch.Generator(device=case["device"]).manual_seed(0)
    sample = queue.sample if provider == "ref" else torch.compile(queue.sample)
    return lambda: sample(queries, 50, generator)  # U2PL num_negatives = 50


def _bytes_memory_queue_sample(case: Case, mode: str) -> int:
    return 2 * case["classes"] * 256 * 50 * case["feature_dim"] * 4


OPS: dict[str, KernelOp] = {
    "upsample_cross_entropy": KernelOp(_setup_upsample_cross_entropy, _bytes_upsample_cross_entropy),
    "upsample_bce": KernelOp(_setup_upsample_bce, _bytes_upsample_bce),
    "entropy_percentile": KernelOp(
        _setup_entropy_percentile, _bytes_entropy_percentile, modes=("fwd",), providers=PROVIDERS[:3]
    ),
    "pseudo_label": KernelOp(_setup_pseudo_label, _bytes_pseudo_label, modes=("fwd",), providers=PROVIDERS[:3]),
    "memory_queue_enqueue": KernelOp(
        _setup_memory_queue_enqueue, _bytes_memory_queue_enqueue, modes=("fwd",), providers=PROVIDERS[:3]
    ),
    "memory_queue_sample": KernelOp(
        _setup_memory_queue_sample, _bytes_memory_queue_sample, modes=("fwd",), providers=("ref", "ref_compiled")
    ),
}
"""Op name -> benchmark; an op whose kernels/ module is missing is skipped with a note (imports are lazy)."""


# -------------------------------------------------------------------------------------------------- running
def measure(name: str, case: Case, provider: str, mode: str, warmup: int, rep: int, peak_gbps: float | None):
    """Time one (op, case, provider, mode) and return its Result."""
    op = OPS[name]
    fn = op.setup(case, provider, mode)
    median, p20, p80 = time_fn(fn, warmup=warmup, rep=rep, device=case["device"])
    gbps = op.bytes_moved(case, mode) / (median * 1e-3) / 1e9
    metrics = {"gbps": gbps, "percent_of_peak": 100 * gbps / peak_gbps if peak_gbps else None}
    memory = peak_memory(fn, device=case["device"])
    return Result("kernels", name, case, provider, mode, median, p20, p80, memory, metrics)


def _available(names: list[str]) -> list[str]:
    import importlib.util

    modules = {"memory_queue_enqueue": "memory_queue", "memory_queue_sample": "memory_queue"}
    present = []
    for name in names:
        if importlib.util.find_spec(f"segadapt.kernels.{modules.get(name, name)}") is None:
            print(f"skipping {name}: kernels/{modules.get(name, name)}.py not found")
        else:
            present.append(name)
    return present


def _roofline_ms(stamp: dict[str, Any], precision: str = "bf16") -> dict[tuple[str, str], float]:
    """Predicted ms of the roofline model (bench/roofline.py) for its shape, keyed (op, mode); {} when unavailable.

    Per op the row of the default form at this precision: "upsample_cross_entropy fwd+bwd fp32" for fp32 inputs (the
    process's default matmul precision), the unqualified row otherwise; never the scatter or matmul=high rows, which
    this bench does not run."""
    try:
        from segadapt.bench import roofline

        name = (stamp.get("device_name") or "").upper()
        device = "h200" if "H200" in name else "a100" if "A100" in name else "h100"
        table = roofline.predict(device)
    except (SystemExit, Exception):  # noqa: BLE001 - no AOT results or no model: the column stays empty
        return {}
    modes = {"upsample_cross_entropy": "full", "upsample_bce": "full"}
    want = {"fp32"} if precision == "fp32" else set()
    out, fallback = {}, {}
    for row in table:
        op, *rest = row["op"].split()
        if op == "memory_queue_enqueue":  # modelled at the recipe's 1.19M gathered rows; this bench enqueues 1024 x N
            continue
        qualifiers = {word for word in rest if word != "fwd+bwd"}
        key = (op, modes.get(op, "fwd"))
        if qualifiers == want:
            out[key] = row["predicted_ms"]
        elif not qualifiers:
            fallback[key] = row["predicted_ms"]
    return {**fallback, **out}


def _roofline_case(case: Case) -> bool:
    """The shape bench/roofline.py models: N=8, C=19, 512x1024."""
    return (case["batch"], case["classes"], case["height"], case["width"]) == roofline_shape()


def roofline_shape() -> tuple[int, int, int, int]:
    from segadapt.bench import roofline

    return roofline.BATCH, roofline.CLASSES, roofline.HEIGHT, roofline.WIDTH


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every requested combination, writing the JSON after every row (a cut-off run keeps what it has)."""
    stamp = env_stamp(args.device)
    peak_gbps = device_peak_bandwidth(stamp["device_name"])
    predicted = _roofline_ms(stamp, args.precision)
    cases = make_cases(args.cases, args.device, args.precision, args.layout)
    if args.batches:
        cases = [case for case in cases if case["batch"] in args.batches]
    payload = {
        **stamp,
        "bench": "kernels",
        "cases": args.cases,
        "precision": args.precision,
        "layout": args.layout,
        "peak_bandwidth_gbps": peak_gbps,
        "warmup": args.warmup,
        "rep": args.rep,
        "results": [],
    }
    out = args.out or result_path("kernels", args.precision, args.layout, stamp["device_name"])
    rows = payload["results"]
    for name in _available(args.ops):
        op = OPS[name]
        for case in cases:
            for provider in [provider for provider in args.providers if provider in op.providers]:
                for mode in [mode for mode in args.modes if mode in op.modes]:
                    row = measure(name, case, provider, mode, args.warmup, args.rep, peak_gbps).row()
                    prediction = predicted.get((name, mode)) if _roofline_case(case) else None
                    row["roofline_ms"] = prediction
                    row["percent_of_roofline"] = 100 * prediction / row["median_ms"] if prediction else None
                    rows.append(row)
                    write_json(out, payload)
    columns = ["name", "case", "provider", "mode", "median_ms", "p20_ms", "p80_ms", "gbps", "percent_of_peak"]
    print(markdown_table(rows, [*columns, "percent_of_roofline", "peak_memory_mib"]))
    print(f"wrote {write_json(out, payload)}")
    return payload


def _csv(choices: tuple[str, ...] | list[str], flag: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        unknown = sorted(set(values) - set(choices))
        if unknown:
            raise argparse.ArgumentTypeError(f"{flag}: unknown {unknown}; expected a comma list of {list(choices)}")
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--cases", default="real", choices=["real", "tiny"], help="named case set")
    parser.add_argument("--modes", type=_csv(MODES, "--modes"), default=list(MODES), help="fwd,full")
    parser.add_argument("--providers", type=_csv(PROVIDERS, "--providers"), default=list(PROVIDERS))
    parser.add_argument("--ops", type=_csv(list(OPS), "--ops"), default=list(OPS), help="comma list of op names")
    parser.add_argument("--precision", default="bf16", choices=sorted(_DTYPES), help="dtype of float inputs")
    parser.add_argument("--layout", default="channels_last", choices=sorted(_LAYOUTS), help="layout of 4-D inputs")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    parser.add_argument("--rep", type=int, default=50, help="timed calls (CUDA: window of rep x call time)")
    parser.add_argument("--batches", type=_ints("--batches"), default=None, help="keep only these N, e.g. 8")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/kernels-...json)")
    return parser.parse_args(argv)


def _ints(flag: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            return [int(value) for value in text.split(",") if value.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected comma-separated integers, got {text!r}") from None

    return parse


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cpu" and not torch.cuda.is_available():
        # Triton on CPU only through its interpreter; must be set before kernels/ imports triton.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return run(args)


if __name__ == "__main__":
    main()
