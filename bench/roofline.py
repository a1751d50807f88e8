"""Predicted H100 time of every fused op from its bytes and its static instructions, against eager PyTorch's bytes.

`python -m segadapt.bench roofline [--aot PATH] [--device h100|h200|a100] [--json PATH]` prints one row per op at the
real training shapes: fused bytes, eager bytes, the instruction floor (warp instructions per output pixel, read
from bench/results/kernels-aot-sm90.json, x pixels / the device's warp-instruction issue rate), the byte floor
(fused bytes / peak HBM bandwidth), the atomic floor where the op scatters, and the predicted speedup over eager,
taking eager at its own byte floor (a generous model of eager: it assumes eager reaches peak bandwidth, so the
predicted speedup is a lower bound on that axis).

Model, stated so that bench/gpu_session.sh can check it: fused time = max(instruction floor, byte floor, atomic
floor). Issue rate = SMs x 4 schedulers x 1 warp instruction per clock x boost clock. The atomic rate is an
assumption (ATOMIC_RATE below, relaxed fp32 RED to distinct-ish L2 addresses) until a lent GPU measures it; the
gpu session's `bench kernels` rows give the measured time to compare with ("% of the roofline prediction").
"""

from __future__ import annotations

import argparse
import json
import sys
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
    """One op at its real shape: bytes of the fused kernels and of eager PyTorch, and the AOT kernels it runs."""

    op: str
    shape: str
    fused_bytes: int
    eager_bytes: int
    kernels: tuple[tuple[str, str, str], ...]  # (aot case, kernel name, variant substring)
    atomics_per_pixel: float = 0.0


def rows() -> list[Row]:
    """The ops at N=8, C=19, 512x1024 (bf16 channels-last logits), with the byte counts spelled out."""
    elements = PIXELS * CLASSES  # full-resolution class scores
    return [
        # fused: fwd reads labels (8 B) and writes lse (4 B); bwd reads labels and lse again (the ~1.3x window overlap
        # of the gather form hits L2); the low-res logits (bf16, read twice) and the fp32 gradient (written once,
        # cast to bf16) are small. The default backward is the gather form: no atomics.
        # eager (fp32 as the spec): upsample write, log_softmax read+write, nll; backward: nll grad write,
        # log_softmax backward 2 reads + write, upsample backward read: 8 full-resolution fp32 passes + labels.
        Row("upsample_cross_entropy fwd+bwd", f"{BATCH}x{CLASSES}x65x129 bf16 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (2 + 2 + 4 + 4 + 2),
            8 * elements * 4 + 2 * PIXELS * 8,
            (("ce_cs_bf16_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_bf16_cl", "_upsample_cross_entropy_bwd_gather_kernel", ""))),
        # fp32 logits (the paper recipes train in fp32): fp32 FMA dots at a 64 x 32 tile (64 x 64 spilled).
        Row("upsample_cross_entropy fwd+bwd fp32", f"{BATCH}x{CLASSES}x65x129 fp32 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (4 + 4 + 4 + 4),
            8 * elements * 4 + 2 * PIXELS * 8,
            (("ce_cs_fp32_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_fp32_cl", "_upsample_cross_entropy_bwd_gather_kernel", ""))),
        # The scatter backward (SEGADAPT_CE_BACKWARD=scatter, and the fallback where the gather plan does not fit):
        # 4 relaxed atomics per class and output pixel into a zeroed fp32 accumulator.
        Row("upsample_cross_entropy fwd+bwd scatter", f"{BATCH}x{CLASSES}x65x129 bf16 cl -> 512x1024",
            PIXELS * (8 + 4 + 8 + 4) + CE_LOW * CLASSES * (2 + 2 + 4 + 4 + 4 + 2),
            8 * elements * 4 + 2 * PIXELS * 8,
            (("ce_cs_bf16_cl", "_upsample_cross_entropy_fwd_kernel", "STORE_LSE=True"),
             ("ce_cs_bf16_cl", "_upsample_cross_entropy_bwd_kernel", "")),
            atomics_per_pixel=4 * CLASSES),
        # fused: logits once (bf16) + entropy write, 4 radix passes over entropy bits + ignore, split pass.
        # eager: log_softmax write/read, exp, product, sum (fp32 full-size passes ~5), a full sort of P floats
        # (radix sort: ~8 passes of 8 bytes key+index), masks.
        Row("entropy_percentile", f"{BATCH}x{CLASSES}x512x1024 bf16 cl",
            elements * 2 + PIXELS * 4 + 4 * PIXELS * 5 + PIXELS * (4 + 1 + 2),
            elements * 2 + 5 * elements * 4 + PIXELS * 4 * 2 + 8 * PIXELS * 16 + PIXELS * (4 + 1 + 2),
            (("entropy_bf16_cl", "_entropy_fwd_kernel", ""), ("entropy_bf16_cl", "_radix_histogram_kernel", ""),
             ("entropy_bf16_cl", "_radix_histogram_kernel", ""), ("entropy_bf16_cl", "_radix_histogram_kernel", ""),
             ("entropy_bf16_cl", "_radix_histogram_kernel", ""), ("entropy_bf16_cl", "_split_kernel", ""))),
        # fused: logits once, ignore, label (8 B) and conf (4 B) out. eager: argmax pass, softmax write + read for
        # amax, masks and a masked_fill: ~4 full-size passes.
        Row("pseudo_label", f"{BATCH}x{CLASSES}x512x1024 bf16 cl",
            elements * 2 + PIXELS * (1 + 8 + 4),
            elements * 2 * 2 + elements * 4 * 2 + PIXELS * (1 + 8 + 4 + 8 + 8),
            (("pseudo_cs_bf16_cl", "_pseudo_label_fwd_kernel", ""),)),
        # fused: labels in, one-hot out. eager: one_hot (int64 P*C), float cast, permute copy.
        Row("one_hot_labels", f"{BATCH}x512x1024 -> {CLASSES} ch fp32",
            PIXELS * 8 + elements * 4,
            PIXELS * 8 + elements * 8 + elements * (8 + 4) + elements * 4 * 2,
            (("pseudo_cs_bf16_cl", "_one_hot_fwd_kernel", ""),)),
        # fused: target map (int64) read twice (the gather backward's window overlap hits L2), the tiny map and its
        # gradient. eager: upsample write, BCE elementwise write, mask, where, sum; backward about as many passes.
        Row("upsample_bce fwd+bwd", f"{BATCH}x1x16x32 -> 512x1024, target map",
            2 * PIXELS * 8 + D_LOW * (4 * 3),
            2 * PIXELS * 8 + 10 * PIXELS * 4,
            (("bce_map_bf16", "_upsample_bce_fwd_kernel", ""),
             ("bce_map_bf16", "_upsample_bce_bwd_gather_kernel", ""))),
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
        instruction_ms = instructions * PIXELS / issue_rate * 1e3
        byte_ms = row.fused_bytes / bandwidth * 1e3
        atomic_ms = row.atomics_per_pixel * PIXELS / ATOMIC_RATE * 1e3
        fused_ms = max(instruction_ms, byte_ms, atomic_ms)
        eager_ms = row.eager_bytes / bandwidth * 1e3
        table.append({
            "op": row.op, "shape": row.shape, "fused_MB": round(row.fused_bytes / 1e6, 1),
            "eager_MB": round(row.eager_bytes / 1e6, 1), "instr_per_px": round(instructions, 1),
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
          f"assumed {ATOMIC_RATE:.1e} relaxed atomics/s; eager taken at its byte floor")  # fmt: skip
    print(markdown_table(table, COLUMNS))
    if args.json is not None:
        write_json(args.json, {"bench": "roofline", "device_model": args.device, "results": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
