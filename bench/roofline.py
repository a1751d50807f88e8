"""Predicted H100 time of every fused op from its bytes and its static instructions, against eager PyTorch's bytes.

`python -m segadapt.bench roofline [--aot PATH] [--device h100|h200|a100] [--json PATH]` prints one row per op at the
real training shapes: fused bytes, eager bytes, the instruction floor (warp instructions per output pixel, read
from bench/results/kernels-aot-sm90.json, x pixels / the device's warp-instruction issue rate), the byte floor
(fused bytes / peak HBM bandwidth), the atomic floor where the op scatters, and the predicted speedup over eager,
taking eager at its own byte floor (a generous model of eager: it assumes eager reaches peak bandwidth, so the
predicted speedup is a lower bound on that axis).

Eager bytes are counted, not estimated: the op's reference (the `*_ref` specification eager PyTorch runs, forward and
backward) is run on meta tensors of the real shapes under a dispatch mode that adds, for every aten op it issues, the
bytes of the distinct tensors that op reads and writes (`eager_census`; views and allocations move nothing, an
expanded operand counts its stored elements once, an in-place output counts once, nll_loss reads one class per
pixel and its backward does not read its input). A hand count of the same passes had left out the casts and masks
(upsample+BCE: 56 counted by hand against 117 bytes per pixel dispatched).

Model, stated so that bench/gpu_session.sh can check it: fused time = max(instruction floor, byte floor, atomic
floor). Issue rate = SMs x 4 schedulers x 1 warp instruction per clock x boost clock. The atomic rate is an
assumption (ATOMIC_RATE below, relaxed fp32 RED to distinct-ish L2 addresses) until a lent GPU measures it; the
gpu session's `bench kernels` rows give the measured time to compare with ("% of the roofline prediction").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segadapt.bench.aot import RESULT_PATH as AOT_PATH

# SMs, boost clock (GHz), HBM bytes/s. H100 SXM5: 132 SMs, 1.98 GHz, 3.35 TB/s; H200: same die, 4.8 TB/s.
DEVICES = {
    "h100": (132, 1.98, 3.35e12),
    "h200": (132, 1.98, 4.8e12),
    "a100": (108, 1.41, 2.04e12),
}
# Assumed relaxed fp32 atomic (RED) lane-operations per second at L2; to be replaced by a measurement.
ATOMIC_RATE = 1.5e11

BATCH, CLASSES, HEIGHT, WIDTH = 8, 19, 512, 1024
PIXELS = BATCH * HEIGHT * WIDTH
CE_LOW = BATCH * 65 * 129  # stride-8 logits of a 512x1024 crop
D_LOW = BATCH * 16 * 32  # 1/32 discriminator map


@dataclass(frozen=True)
class Row:
    """One op at its real shape: bytes of the fused kernels, the eager reference it replaces, and its AOT kernels."""

    op: str
    shape: str
    fused_bytes: int
    eager: Callable[[], object]  # runs the op's reference (forward and backward) on meta tensors of the real shape
    kernels: tuple[tuple[str, str, str], ...]  # (aot case, kernel name, variant substring)
    atomics_per_pixel: float = 0.0
    work: int = PIXELS  # the AOT's unit of work: output pixels, or rows for the queue


# ------------------------------------------------------------------------------------------------- eager census
# Ops that move no bytes: allocations (the first write is the op that fills them) and aliases.
_ALLOCATIONS = ("aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
                "aten::detach", "aten::alias", "aten::lift_fresh")  # fmt: skip


def _stored_bytes(tensor) -> int:
    """Bytes of the elements a tensor view stores: an expanded (stride-0) dimension is stored once."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride(), strict=True):
        elements *= size if stride != 0 else 1
    return elements * tensor.element_size() if tensor.numel() else 0


def eager_census(run: Callable[[], object]) -> tuple[int, list[tuple[str, int]]]:
    """Bytes eager PyTorch moves running `run` (on meta tensors: nothing is computed), total and per aten op.

    Per op: the distinct tensors it reads or writes, each at its stored bytes (an in-place output that is also an
    input counts once; 0-d tensors are ignored). Two ops touch only part of an argument: nll_loss forward reads one
    class per pixel of its input (counted as the target's element count at the input's element size) and nll_loss
    backward never reads its input (only its shape). A floor for eager's traffic in that each op reads and writes its
    tensors once, with no extra passes inside an op (a sort counts once); not in that no cache reuse between ops is
    assumed (a tensor that fits the L2, as upsample+BCE's 16-33 MB ones partly do on an H100, may not reach HBM).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    ops: list[tuple[str, int]] = []

    class _Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func._schema.name
            if func.is_view or name in _ALLOCATIONS:
                return out
            operands = list(args)
            if name in ("aten::nll_loss_forward", "aten::nll_loss2d_forward"):
                source, target = operands[0], operands[1]
                operands[0] = torch.empty(target.numel(), dtype=source.dtype, device="meta")
            elif name in ("aten::nll_loss_backward", "aten::nll_loss2d_backward"):
                operands[1] = None
            distinct = {}
            for tensor in tree_leaves((operands, kwargs, out)):
                if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
                    key = (tensor.untyped_storage()._cdata, tensor.storage_offset(), tuple(tensor.shape),
                           tuple(tensor.stride()), tensor.dtype)  # fmt: skip
                    distinct[key] = _stored_bytes(tensor)
            ops.append((str(func), sum(distinct.values())))
            return out

    with _Census():
        run()
    return sum(moved for _, moved in ops), ops


def _meta(*shape, dtype=None, channels_last: bool = False, grad: bool = False):
    import torch

    tensor = torch.empty(*shape, dtype=dtype or torch.float32, device="meta")
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor.requires_grad_(grad)


def _eager_ce(dtype_name: str) -> Callable[[], object]:
    def run():
        import torch

        from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy_ref

        logits = _meta(BATCH, CLASSES, 65, 129, dtype=getattr(torch, dtype_name), channels_last=True, grad=True)
        labels = _meta(BATCH, HEIGHT, WIDTH, dtype=torch.int64)
        upsample_cross_entropy_ref(logits, labels, align_corners=False).backward()

    return run


def _eager_entropy() -> None:
    import torch

    from segadapt.kernels.entropy_percentile import entropy_percentile_ref

    logits = _meta(BATCH, CLASSES, HEIGHT, WIDTH, dtype=torch.bfloat16, channels_last=True)
    entropy_percentile_ref(logits, _meta(BATCH, HEIGHT, WIDTH, dtype=torch.bool), 80.0)


def _eager_pseudo_label() -> None:
    import torch

    from segadapt.kernels.pseudo_label import pseudo_label_ref

    logits = _meta(BATCH, CLASSES, HEIGHT, WIDTH, dtype=torch.bfloat16, channels_last=True)
    pseudo_label_ref(logits, ignore=_meta(BATCH, HEIGHT, WIDTH, dtype=torch.bool))


def _eager_one_hot() -> None:
    import torch

    from segadapt.kernels.pseudo_label import one_hot_labels_ref

    one_hot_labels_ref(_meta(BATCH, HEIGHT, WIDTH, dtype=torch.int64), CLASSES, memory_format=torch.channels_last)


def _eager_bce() -> None:
    import torch

    from segadapt.kernels.upsample_bce import upsample_bce_ref

    d_logits = _meta(BATCH, 1, 16, 32, dtype=torch.bfloat16, grad=True)
    target = _meta(BATCH, HEIGHT, WIDTH, dtype=torch.int64)
    upsample_bce_ref(d_logits, (HEIGHT, WIDTH), target, align_corners=False).backward()


# U2PL's enqueue at the Cityscapes recipe (u2pl_cityscapes_*: 2 unlabelled images per rank, official one-hot maps):
# each rank's first unlabelled image's teacher representation, 193 x 193 at stride 4 of a 769 crop, all-gathered over
# 8 ranks in bf16 (AMP) and expanded to min(C, 2) = 2 class slots per pixel, 256-d, into 19 rings of 50,000 / 30,000.
# (With method.onehot = "true" both unlabelled images go, one slot each: the same row count.)
QUEUE_ROWS, QUEUE_DIM = 8 * 2 * 193 * 193, 256


def _queue_inputs():
    import torch

    from segadapt.kernels.memory_queue import u2pl_lengths

    state = [_meta(CLASSES, dtype=torch.int64) for _ in range(4)]  # offsets, lengths, write_ptr, count
    storage = _meta(sum(u2pl_lengths(CLASSES)), QUEUE_DIM)
    features = _meta(QUEUE_ROWS, QUEUE_DIM, dtype=torch.bfloat16)
    return storage, *state, features, _meta(QUEUE_ROWS, dtype=torch.int64)


def _eager_queue() -> None:
    from segadapt.kernels.memory_queue import memory_queue_enqueue_ref

    memory_queue_enqueue_ref(*_queue_inputs())


def _queue_fused_bytes() -> int:
    """The fused enqueue: its launcher's torch ops (the stable sort and per-class ranks), counted like eager's, plus
    the kernel's own traffic, by hand: class and rank per row (16 B), and for the rows a ring keeps (at most the rings'
    total length; every row taken as a negative, the worst case) the bf16 feature row read and the float32 storage row
    written."""
    from segadapt.kernels._launch import record_launches
    from segadapt.kernels.memory_queue import _memory_queue_enqueue
    from segadapt.kernels.memory_queue import u2pl_lengths

    with record_launches():  # the kernel is recorded, not run: only the launcher's torch ops are counted
        launcher, _ = eager_census(lambda: _memory_queue_enqueue(*_queue_inputs()))
    kept = min(QUEUE_ROWS, sum(u2pl_lengths(CLASSES)))
    return launcher + QUEUE_ROWS * 16 + kept * QUEUE_DIM * (2 + 4)  # bf16 row read, float32 row written


def rows() -> list[Row]:
    """The ops at N=8, C=19, 512x1024 (bf16 channels-last logits), with the fused byte counts spelled out."""
    elements = PIXELS * CLASSES  # full-resolution class scores
    return [
        # fused: fwd reads labels (8 B) and writes lse (4 B); bwd reads labels and lse again (the ~1.3x window overlap
        # of the gather form hits L2); the low-res logits (bf16, read twice) and the fp32 gradient (written once,
        # cast to bf16) are small. The default backward is the gather form: no atomics.
        Row("upsample_cross_entropy fwd+bwd", f"{BATCH}x{CLASSES}x65x129 bf16 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (2 + 2 + 4 + 4 + 2), _eager_ce("bfloat16"),
            (("ce_cs_bf16_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_bf16_cl", "_upsample_cross_entropy_bwd_gather_kernel", ""))),
        # fp32 logits (the paper recipes train in fp32) at PyTorch's default matmul precision "highest": fp32 FMA dots
        # at a 64 x 32 tile (64 x 64 spilled).
        Row("upsample_cross_entropy fwd+bwd fp32", f"{BATCH}x{CLASSES}x65x129 fp32 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (4 + 4 + 4 + 4), _eager_ce("float32"),
            (("ce_cs_fp32_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_fp32_cl", "_upsample_cross_entropy_bwd_gather_kernel", "INPUT_PRECISION=ieee"))),
        # fp32 logits under torch.set_float32_matmul_precision("high"): TF32 reduction dots at 64 x 64 on sm_90.
        Row("upsample_cross_entropy fwd+bwd fp32 matmul=high", f"{BATCH}x{CLASSES}x65x129 fp32 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (4 + 4 + 4 + 4), _eager_ce("float32"),
            (("ce_cs_fp32_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_fp32_cl", "_upsample_cross_entropy_bwd_gather_kernel", "INPUT_PRECISION=tf32"))),
        # The scatter backward (SEGADAPT_CE_BACKWARD=scatter, and the fallback where the gather plan does not fit):
        # 4 relaxed atomics per class and output pixel into a zeroed fp32 accumulator.
        Row("upsample_cross_entropy fwd+bwd scatter", f"{BATCH}x{CLASSES}x65x129 bf16 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (2 + 2 + 4 + 4 + 4 + 2), _eager_ce("bfloat16"),
            (("ce_cs_bf16_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_bf16_cl", "_upsample_cross_entropy_bwd_kernel", "")),
            atomics_per_pixel=4 * CLASSES),
        # fused: logits once (bf16) + entropy write, 4 radix passes over entropy bits + ignore, split pass.
        Row("entropy_percentile", f"{BATCH}x{CLASSES}x512x1024 bf16 cl",
            elements * 2 + PIXELS * 4 + 4 * PIXELS * 5 + PIXELS * (4 + 1 + 2), _eager_entropy,
            (("entropy_bf16_cl", "_entropy_fwd_kernel", ""), ("entropy_bf16_cl", "_radix_histogram_kernel", ""),
             ("entropy_bf16_cl", "_radix_histogram_kernel", ""), ("entropy_bf16_cl", "_radix_histogram_kernel", ""),
             ("entropy_bf16_cl", "_radix_histogram_kernel", ""), ("entropy_bf16_cl", "_split_kernel", ""))),
        # fused: logits once, ignore, label (8 B) and conf (4 B) out.
        Row("pseudo_label", f"{BATCH}x{CLASSES}x512x1024 bf16 cl",
            elements * 2 + PIXELS * (1 + 8 + 4), _eager_pseudo_label,
            (("pseudo_cs_bf16_cl", "_pseudo_label_fwd_kernel", ""),)),
        # fused: labels in, one-hot out.
        Row("one_hot_labels", f"{BATCH}x512x1024 -> {CLASSES} ch fp32",
            PIXELS * 8 + elements * 4, _eager_one_hot,
            (("pseudo_cs_bf16_cl", "_one_hot_fwd_kernel", ""),)),
        # fused: target map (int64) read twice (the gather backward's window overlap hits L2), the tiny map and its
        # gradient.
        Row("upsample_bce fwd+bwd", f"{BATCH}x1x16x32 -> 512x1024, target map",
            2 * PIXELS * 8 + D_LOW * (4 * 3), _eager_bce,
            (("bce_map_bf16", "_upsample_bce_fwd_kernel", ""),
             ("bce_map_bf16", "_upsample_bce_bwd_gather_kernel", ""))),
        # U2PL's memory-queue enqueue (work = rows, instructions per row from the AOT's 256-d case).
        Row("memory_queue_enqueue", f"{QUEUE_ROWS} x {QUEUE_DIM} rows -> 19 rings", _queue_fused_bytes(), _eager_queue,
            (("queue_256_bf16", "_memory_queue_enqueue_kernel", ""),), work=QUEUE_ROWS),
    ]  # fmt: skip


def _aot_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"bench roofline: {path} not found; run `python -m segadapt.bench aot` first")
    return json.loads(path.read_text())["results"]


def instructions_per_pixel(aot: list[dict], case: str, kernel: str, variant: str) -> float | None:
    """The best (fewest) sm_90 warp instructions per output pixel over the autotune configs of one kernel."""
    values = [
        row["instructions_per_pixel"] for row in aot
        if row["case"] == case and row["kernel"] == kernel and row["target"] == "sm_90" and row.get("compiled")
        and variant in (row.get("variant") or "")
    ]  # fmt: skip
    return min(values) if values else None


def predict(device: str = "h100", aot_path: Path = AOT_PATH) -> list[dict]:
    """One dict per op: bytes, floors in ms, predicted fused and eager ms and the speedup."""
    sms, clock_ghz, bandwidth = DEVICES[device]
    issue_rate = sms * 4 * clock_ghz * 1e9
    aot = _aot_rows(aot_path)
    table = []
    for row in rows():
        per_pixel = [instructions_per_pixel(aot, *kernel) for kernel in row.kernels]
        missing = [kernel[1] for kernel, value in zip(row.kernels, per_pixel, strict=True) if value is None]
        instructions = sum(value or 0.0 for value in per_pixel)
        instruction_ms = instructions * row.work / issue_rate * 1e3
        byte_ms = row.fused_bytes / bandwidth * 1e3
        atomic_ms = row.atomics_per_pixel * row.work / ATOMIC_RATE * 1e3
        fused_ms = max(instruction_ms, byte_ms, atomic_ms)
        eager_bytes, _ = eager_census(row.eager)
        eager_ms = eager_bytes / bandwidth * 1e3
        table.append({
            "op": row.op, "shape": row.shape, "fused_MB": round(row.fused_bytes / 1e6, 1),
            "eager_MB": round(eager_bytes / 1e6, 1), "instr_per_px": round(instructions, 1),
            "instr_floor_ms": round(instruction_ms, 3), "byte_floor_ms": round(byte_ms, 3),
            "atomic_floor_ms": round(atomic_ms, 3), "predicted_ms": round(fused_ms, 3),
            "eager_ms": round(eager_ms, 3), "speedup": round(eager_ms / fused_ms, 2),
            "missing_aot": ",".join(missing) or None,
        })  # fmt: skip
    return table


COLUMNS = ["op", "shape", "fused_MB", "eager_MB", "instr_per_px", "instr_floor_ms", "byte_floor_ms",
           "atomic_floor_ms", "predicted_ms", "eager_ms", "speedup"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench roofline", description=__doc__.splitlines()[0])
    parser.add_argument("--aot", type=Path, default=AOT_PATH, help=f"AOT result JSON (default {AOT_PATH})")
    parser.add_argument("--device", choices=sorted(DEVICES), default="h100", help="device model (default h100)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    from segadapt.bench.common import markdown_table
    from segadapt.bench.common import write_json

    table = predict(args.device, args.aot)
    sms, clock, bandwidth = DEVICES[args.device]
    print(f"{args.device}: {sms} SMs x 4 warp-instr/clk x {clock} GHz, {bandwidth / 1e12} TB/s HBM, "
          f"assumed {ATOMIC_RATE:.1e} relaxed atomics/s; eager taken at its byte floor, its bytes counted "
          f"from the aten ops its reference dispatches")  # fmt: skip
    print(markdown_table(table, COLUMNS))
    if args.json is not None:
        write_json(args.json, {"bench": "roofline", "device_model": args.device, "results": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
