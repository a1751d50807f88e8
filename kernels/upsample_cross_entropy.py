"""Cross-entropy of bilinearly upsampled logits, without materialising the full-resolution logits.

Math: z = bilinear_upsample(logits, (H, W)); loss_i = logsumexp_c z_ic - z_i,label_i over pixels whose label is
not `ignore_index`; "mean" divides the sum by the number of valid pixels, "sum" does not. When every pixel is
ignored the mean is defined as 0 with a zero gradient (plain `F.cross_entropy` returns NaN there).

Shapes and dtypes: logits (N, C, h, w) float32/bfloat16/float16, NCHW or channels-last; labels (N, H, W) int64
with 255 (= `ignore_index`) for ignored pixels -> 0-d float32. The gradient has logits' dtype and layout.
Bilinear weights follow PyTorch's `upsample_bilinear2d` exactly: scale (h - 1) / (H - 1) with `align_corners`,
h / H without, source coordinate scale * (dst + 0.5) - 0.5 clamped at 0, upper neighbour clamped to h - 1.

Used by every method's supervised loss (AdaptSegNet, AdvSemiSeg, U2PL, LSD-seg, Mix-and-Match): 1280x720 labels
against stride-8 160x90 logits, every step.

Traffic per step (C classes, P = N*H*W label pixels, p = N*h*w logit pixels, e bytes per logit element):
forward reads P*8 label bytes and the logits (4 gathers per pixel, cache-resident: ~p*C*e from DRAM) and writes
P*4 bytes of log-sum-exp; backward reads the labels and log-sum-exp again (plus the ~1.3x window overlap, from L2)
and writes the p*C*4-byte fp32 gradient once. The reference writes and reads the P*C*4-byte upsampled logits, their
log-softmax and the gradient of both, i.e. roughly 6*P*C*4 bytes and 2*P*C*4 bytes of peak memory.

Forward: one output pixel per lane, the C classes in compile-time loops (max, then 8 interleaved partial sums of
exp), so every per-pixel instruction runs once per pixel (the class-across-lanes layout ran each one 32 times and
reduced across lanes per pixel).

Backward, gather form (default wherever `gather_plan` fits the shape: upsampling up to ~x19 at sm_90's bf16 tile, ~x9
at the 64 x 32 tile of fp32 logits and of sm_80): a program owns a block of source logits (6 x 6 at x8 with 64 x
64-output tiles), recomputes z on the outputs that reach them exactly as the forward did (the 4 neighbours, the same
expression: the same bits), the softmax from the forward's log-sum-exp, and reduces (softmax - onehot) * coef through
the interpolation matrices, Wy^T (G Wx), over a 16 x 16 source window: no atomics, bitwise-deterministic gradients,
TF32 dots for bf16 / fp16 logits; for fp32 logits fp32 FMAs, or TF32 dots where torch.get_float32_matmul_precision() is
"high" / "medium" (`train.matmul_precision`), as PyTorch's own fp32 matmuls do. z must be the forward's bits: an earlier
version recomputed z by dots too, Wy (X Wx^T), which rounds in another association (and TF32 rounds the weights); exp(z
- lse) - 1 on a confident pixel is a difference of nearly equal numbers, so that rounding became an error of the
gradient's own size (the 2-rank-vs-1-process DDP test drifted 1.4e-4 on a weight after 3 steps, tolerance 1e-5; against
a float64 reference on confident logits 3.8x the scatter form's error). Now both forms compute the same dL/dz per output
pixel and differ only in how they sum it.

Backward, scatter form (SEGADAPT_CE_BACKWARD=scatter, and wherever the gather plan does not fit): one output pixel per
lane recomputes z exactly as the forward did, consistent with the stored log-sum-exp, and adds into the 4 source
logits with relaxed fp32 atomics (plain RED in SASS): the summation order is not fixed (~1 ulp run to run), and the
atomics bound it.

Ahead of time (`python -m segadapt.bench aot`, sm_90, N=8, C=19 channels-last 65x129 -> 512x1024;
bench/results/kernels-aot-sm90.json has every config and sm_80): forward ~21 warp instructions per output pixel;
gather backward ~63 for bf16 logits (TF32 dots, 64 x 64 tile, runtime class loop, 225 registers, no spill; sm_80
takes 64 x 32), ~154 for fp32 (FMA dots, 64 x 32) and ~74 for fp32 under torch.set_float32_matmul_precision("high")
(TF32 dots at 64 x 64, 255 registers, no spill); the scatter backward's 34 plus 4 REDs per class per pixel are bound
by the atomics (~2.1 ms predicted at an assumed 1.5e11 atomics/s). Predicted H100 (`python -m segadapt.bench
roofline`) against ~0.81 ms for eager fp32 at its byte floor (2.7 GB counted from the aten ops the reference
dispatches): the default (gather) 0.34 ms bf16 (2.4x); fp32 0.69 ms (1.17x) at PyTorch's default matmul precision,
0.37 ms (2.2x) at "high"; scatter 2.1 ms (0.38x). Unmeasured until a GPU runs bench/gpu_session.sh.
Labels outside [0, C) other than `ignore_index` are not checked on the Triton path (the check would need a host
sync); they contribute logsumexp(z) to the loss instead of raising.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from segadapt.kernels._dispatch import interpreting
from segadapt.kernels._dispatch import use_triton
from segadapt.kernels._launch import FLOAT_DTYPES
from segadapt.kernels._launch import GATHER_SRC
from segadapt.kernels._launch import autotune_enabled  # noqa: F401  (re-exported: bench and older callers)
from segadapt.kernels._launch import bilinear_footprint
from segadapt.kernels._launch import bilinear_gather
from segadapt.kernels._launch import bilinear_scale
from segadapt.kernels._launch import bilinear_source_index
from segadapt.kernels._launch import bilinear_weights
from segadapt.kernels._launch import device_capability
from segadapt.kernels._launch import first_output
from segadapt.kernels._launch import gather_plan
from segadapt.kernels._launch import launch
from segadapt.kernels._launch import owned_block
from segadapt.kernels._launch import pixel_stride
from segadapt.kernels._launch import pixel_tile
from segadapt.kernels._launch import reaches
from segadapt.kernels._launch import tuned

_REDUCTIONS = ("mean", "sum")


# ------------------------------------------------------------------------------------------------- reference
def strictly_channels_last(x: Tensor) -> bool:
    """A 4-D tensor laid out channels-last and not also NCHW-contiguous (C = 1 or H = W = 1 are both)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def cross_entropy_sum(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """`F.cross_entropy(logits, labels, ignore_index, reduction="sum")` for NCHW-contiguous or channels-last logits.

    Channels-last logits are read as the (N*H*W, C) matrix they already are in memory: the same sum, without the
    NCHW copy `log_softmax` over dim 1 makes of them and with a channels-last gradient, which the bilinear upsample's
    backward before it needs for its fast path (CPU, torch 2.13, 4x19x96x192 from 13x25, one thread: 1.2 ms instead of
    5.9 ms for the upsample, and 4.5 ms instead of 5.4 ms for the fp32 cross-entropy, forward and backward).
    """
    if strictly_channels_last(logits):
        rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        return F.cross_entropy(rows, labels.reshape(-1), ignore_index=ignore_index, reduction="sum")
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")


def upsample_cross_entropy_ref(
    logits: Tensor,
    labels: Tensor,
    *,
    align_corners: bool,
    ignore_index: int = 255,
    reduction: str = "mean",
    upcast: bool = True,
) -> Tensor:
    """Specification: `F.interpolate` then `F.cross_entropy`, with the all-ignored mean defined as 0.

    Args:
        logits: (N, C, h, w) float32/bfloat16/float16.
        labels: (N, H, W) int64, `ignore_index` marks ignored pixels.
        align_corners: passed to `F.interpolate(mode="bilinear")`.
        ignore_index: label value that contributes neither loss nor count.
        reduction: "mean" (over valid pixels) or "sum".
        upcast: compute in float32 (the specification); False keeps logits' dtype (the same-precision baseline).

    Returns:
        0-d float32 loss.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {_REDUCTIONS}")
    source = logits.float() if upcast else logits
    upsampled = F.interpolate(source, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=align_corners)
    loss_sum = cross_entropy_sum(upsampled, labels, ignore_index).float()
    if reduction == "sum":
        return loss_sum
    # sum / count instead of reduction="mean": identical where count > 0, and 0 (not NaN) when all is ignored.
    count = (labels != ignore_index).sum()
    return loss_sum / count.clamp_min(1).float()


# --------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _upsample_cross_entropy_fwd_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    loss_partial_ptr,
    count_partial_ptr,
    stride_n,
    stride_c,
    stride_p,
    stride_label_n,
    stride_label_h,
    stride_label_w,
    in_h,
    in_w,
    out_h,
    out_w,
    scale_h,
    scale_w,
    ignore_index,
    C: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr,
    STORE_LSE: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # One output pixel per lane and the classes in a loop: every per-pixel instruction runs once, not once per lane.
    n, offs_p, mask_p = pixel_tile(out_h * out_w, BLOCK_P)
    out_row, out_col, pixels, lam = bilinear_footprint(offs_p, out_w, in_h, in_w, scale_h, scale_w, ALIGN_CORNERS)
    label_offs = n * stride_label_n + out_row.to(tl.int64) * stride_label_h + out_col.to(tl.int64) * stride_label_w
    label = tl.load(labels_ptr + label_offs, mask=mask_p, other=ignore_index)
    valid = mask_p & (label != ignore_index)

    base = logits_ptr + n * stride_n
    # Two passes over the classes, the logits re-read from L1: the max, then the sum of exp(z - max) into 8
    # interleaved partial sums combined pairwise. The partials break the add dependency chain, and the order is
    # NumPy's pairwise reduction (what the interpreter's tl.sum over a class block did), so results keep their bits.
    running_max = bilinear_gather(base, pixels, lam, stride_p, mask_p)
    label_logit = tl.where(label == 0, running_max, 0.0)
    for c in tl.static_range(1, C):
        z = bilinear_gather(base + c * stride_c, pixels, lam, stride_p, mask_p)
        running_max = tl.maximum(running_max, z)
        label_logit = tl.where(label == c, z, label_logit)
    s0 = tl.zeros([BLOCK_P], tl.float32)
    s1 = tl.zeros([BLOCK_P], tl.float32)
    s2 = tl.zeros([BLOCK_P], tl.float32)
    s3 = tl.zeros([BLOCK_P], tl.float32)
    s4 = tl.zeros([BLOCK_P], tl.float32)
    s5 = tl.zeros([BLOCK_P], tl.float32)
    s6 = tl.zeros([BLOCK_P], tl.float32)
    s7 = tl.zeros([BLOCK_P], tl.float32)
    for c in tl.static_range(C):
        e = tl.exp(bilinear_gather(base + c * stride_c, pixels, lam, stride_p, mask_p) - running_max)
        if c % 8 == 0:
            s0 += e
        elif c % 8 == 1:
            s1 += e
        elif c % 8 == 2:
            s2 += e
        elif c % 8 == 3:
            s3 += e
        elif c % 8 == 4:
            s4 += e
        elif c % 8 == 5:
            s5 += e
        elif c % 8 == 6:
            s6 += e
        else:
            s7 += e
    running_sum = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    lse = running_max + tl.log(running_sum)
    loss = tl.where(valid, lse - label_logit, 0.0)
    if STORE_LSE:
        tl.store(lse_ptr + n * out_h * out_w + offs_p, lse, mask=mask_p)
    # Per-program partials reduced on device afterwards: deterministic, no atomics on a single scalar.
    partial = n * tl.num_programs(0) + tl.program_id(0)
    tl.store(loss_partial_ptr + partial, tl.sum(loss, axis=0))
    tl.store(count_partial_ptr + partial, tl.sum(valid.to(tl.int32), axis=0))


@triton.jit
def _upsample_cross_entropy_bwd_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    grad_scale_ptr,
    grad_ptr,
    stride_n,
    stride_c,
    stride_p,
    stride_grad_n,
    stride_grad_c,
    stride_grad_p,
    stride_label_n,
    stride_label_h,
    stride_label_w,
    in_h,
    in_w,
    out_h,
    out_w,
    scale_h,
    scale_w,
    ignore_index,
    C: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    n, offs_p, mask_p = pixel_tile(out_h * out_w, BLOCK_P)
    out_row, out_col, pixels, lam = bilinear_footprint(offs_p, out_w, in_h, in_w, scale_h, scale_w, ALIGN_CORNERS)
    label_offs = n * stride_label_n + out_row.to(tl.int64) * stride_label_h + out_col.to(tl.int64) * stride_label_w
    label = tl.load(labels_ptr + label_offs, mask=mask_p, other=ignore_index)
    valid = mask_p & (label != ignore_index)
    lse = tl.load(lse_ptr + n * out_h * out_w + offs_p, mask=valid, other=0.0)
    # grad_scale = d(loss)/d(loss_sum): upstream gradient, divided by the valid count for "mean".
    coef = tl.where(valid, tl.load(grad_scale_ptr), 0.0)
    weight00 = lam[0] * lam[2]
    weight01 = lam[0] * lam[3]
    weight10 = lam[1] * lam[2]
    weight11 = lam[1] * lam[3]
    base = logits_ptr + n * stride_n
    grad_base = grad_ptr + n * stride_grad_n
    for c in tl.static_range(C):
        z = bilinear_gather(base + c * stride_c, pixels, lam, stride_p, valid)
        grad_z = (tl.exp(z - lse) - tl.where(label == c, 1.0, 0.0)) * coef
        grad_c = grad_base + c * stride_grad_c
        # Scatter to the 4 source pixels; neighbouring output pixels share sources, hence atomics. Relaxed: the
        # default acq_rel puts a GPU-wide fence and an L1 invalidate around every one (MEMBAR + CCTL in SASS), and
        # nothing here orders other memory against these adds.
        tl.atomic_add(grad_c + pixels[0] * stride_grad_p, grad_z * weight00, mask=valid, sem="relaxed")
        tl.atomic_add(grad_c + pixels[1] * stride_grad_p, grad_z * weight01, mask=valid, sem="relaxed")
        tl.atomic_add(grad_c + pixels[2] * stride_grad_p, grad_z * weight10, mask=valid, sem="relaxed")
        tl.atomic_add(grad_c + pixels[3] * stride_grad_p, grad_z * weight11, mask=valid, sem="relaxed")


@triton.jit
def _gather_label_lse(label_ptrs, lse_ptrs, out_mask, ignore_index):
    """Labels as int32 (-1 where not valid: the mask is then label >= 0, no third tensor held across the class loop)
    and the forward's log-sum-exp (+inf where not valid, so that exp(z - lse) - onehot is exactly 0 there)."""
    label = tl.load(label_ptrs, mask=out_mask, other=ignore_index)
    valid = out_mask & (label != ignore_index)
    lse = tl.load(lse_ptrs, mask=valid, other=float("inf"))
    return tl.where(valid, label, -1).to(tl.int32), lse


@triton.jit
def _upsample_cross_entropy_bwd_gather_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    grad_scale_ptr,
    grad_ptr,
    stride_n,
    stride_c,
    stride_p,
    stride_grad_n,
    stride_grad_c,
    stride_grad_p,
    stride_label_n,
    stride_label_h,
    stride_label_w,
    in_h,
    in_w,
    out_h,
    out_w,
    scale_h,
    scale_w,
    inv_scale_h,
    inv_scale_w,
    ignore_index,
    own_h,
    own_w,
    tiles_w,
    C: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    SRC: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    # Gather form: this program owns source logits [r0, r0 + own_h) x [c0, c0 + own_w) of every class and writes
    # their whole gradient, so nothing is added atomically and the summation order is fixed. On the output window
    # that reaches its sources it recomputes z exactly as the forward did (bilinear_gather from the 4 neighbours, the
    # same expression and association, so the same bits), takes the softmax from the forward's log-sum-exp, and
    # reduces dL/dz = (softmax - onehot) * coef through the separable interpolation matrices:
    #   dL/dX = Wy^T (G Wx),  Wy: (TILE_H, SRC), Wx: (TILE_W, SRC), over the SRC x SRC source window.
    # z must be the forward's: on a confident pixel exp(z - lse) - 1 is a difference of nearly equal numbers, and z
    # from dots (Wy X Wx^T, another association; TF32 also rounds the weights) against the forward's lse made an error
    # of the gradient's own size there (the 2-rank-vs-1-process DDP test drifted 1.4e-4 after 3 steps, tol 1e-5).
    n, r0, c0, in_map, owned, pixels_src = owned_block(own_h, own_w, tiles_w, in_h, in_w, SRC)
    ys = first_output(r0, inv_scale_h, ALIGN_CORNERS) + tl.arange(0, TILE_H)
    xs = first_output(c0, inv_scale_w, ALIGN_CORNERS) + tl.arange(0, TILE_W)
    # Outputs that reach an owned source; the others may need sources outside the window and are left out.
    y_ok = reaches(ys, scale_h, in_h, r0, own_h, out_h, ALIGN_CORNERS)
    x_ok = reaches(xs, scale_w, in_w, c0, own_w, out_w, ALIGN_CORNERS)
    weights_y_t = tl.trans(bilinear_weights(ys, y_ok, r0 - 1, SRC, scale_h, in_h, ALIGN_CORNERS))
    weights_x = bilinear_weights(xs, x_ok, c0 - 1, SRC, scale_w, in_w, ALIGN_CORNERS)

    out_mask = y_ok[:, None] & x_ok[None, :]
    label_offs = ys[:, None].to(tl.int64) * stride_label_h + xs[None, :] * stride_label_w
    lse_offs = ys[:, None] * out_w + xs[None, :]
    labels_n = labels_ptr + n * stride_label_n
    lse_n = lse_ptr + n * out_h * out_w
    label, lse = _gather_label_lse(labels_n + label_offs, lse_n + lse_offs, out_mask, ignore_index)
    coef = tl.load(grad_scale_ptr)
    # The forward's bilinear footprint (bilinear_footprint on the flat index), separable here: source rows per output
    # row and columns per output column, as element offsets of the logits within the image (int32, as the forward's
    # pixel indices times stride_p). The 2-D offsets are formed inside the class loop (with the class's offset, so
    # the compiler cannot hoist four 2-D int tensors out of it: holding them spilled).
    h0, h1, lh0, lh1 = bilinear_source_index(ys, scale_h, in_h, ALIGN_CORNERS)
    w0, w1, lw0, lw1 = bilinear_source_index(xs, scale_w, in_w, ALIGN_CORNERS)
    row0, row1 = (h0 * in_w * stride_p)[:, None], (h1 * in_w * stride_p)[:, None]
    col0, col1 = (w0 * stride_p)[None, :], (w1 * stride_p)[None, :]
    lam = (lh0[:, None], lh1[:, None], lw0[None, :], lw1[None, :])
    logits_n = logits_ptr + n * stride_n
    grad_n = grad_ptr + n * stride_grad_n + pixels_src * stride_grad_p
    # A runtime loop over the classes: unrolled, the compiler overlaps classes and the registers spill.
    for c in range(C):
        class_row0, class_row1 = row0 + c * stride_c, row1 + c * stride_c
        pixels = (class_row0 + col0, class_row0 + col1, class_row1 + col0, class_row1 + col1)
        z = bilinear_gather(logits_n, pixels, lam, 1, label >= 0)
        grad_z = (tl.exp(z - lse) - tl.where(label == c, 1.0, 0.0)) * coef
        grad_x = tl.dot(weights_y_t, tl.dot(grad_z, weights_x, input_precision=INPUT_PRECISION),
                        input_precision=INPUT_PRECISION)  # fmt: skip
        tl.store(grad_n + c * stride_grad_c, grad_x, mask=owned)


# One pixel per lane: BLOCK_P = 32 * num_warps * (pixels per lane).
_CONFIGS = [triton.Config({"BLOCK_P": block_p}, num_warps=warps) for block_p, warps in ((128, 4), (256, 8), (512, 8))]
# The fixed config (autotuning off): 256 pixels per program, as before the one-pixel-per-lane redesign.
_FIXED_CONFIG = triton.Config({"BLOCK_P": 256}, num_warps=4)
_INTERPRET_CONFIG = triton.Config({"BLOCK_P": 4096}, num_warps=4)  # CPU interpreter only (see `tuned`)
# Gather-form backward: (TILE_H, TILE_W) outputs per program and warps, by the dots' input precision and whether the
# target is sm_90+ (bench aot, registers per thread at N=8, 65x129 -> 512x1024): TF32 at 64 x 64 fits sm_90's
# wgmma (225, no spill) but spills on sm_80's mma.sync (64 B), where 64 x 32 fits (154); fp32 FMA dots spill at
# 64 x 64 on both (16 B), so they take 64 x 32 (190).
_GATHER_TILE = {("tf32", True): (64, 64, 8), ("tf32", False): (64, 32, 8),
                ("ieee", True): (64, 32, 8), ("ieee", False): (64, 32, 8)}  # fmt: skip
# CPU interpreter only: its cost is per program and per op, and a 128-output tile owns 14 sources at the demo's x8
# (1.2 s against 4.2 s for the scatter form's backward at 2x19x24x48 -> 192x384). Never compiled for a GPU.
_GATHER_TILE_INTERPRET = (128, 128, 4)
# The dots' input precision by logits dtype. bf16 / fp16 logits are exact in TF32 (8 / 10 mantissa bits), so
# tensor cores round only the bilinear weights and the softmax gradient to TF32's 10 bits (relative 2^-11, under
# the 2^-8 / 2^-11 rounding the gradient gets when cast back to the logits' dtype). fp32 logits keep fp32 FMAs
# ("ieee"); "tf32x3" (fp32-accurate on tensor cores) spills at this tile.
#
# fp32 logits follow PyTorch's own switch for fp32 matmuls, `torch.set_float32_matmul_precision`: "highest" (its
# default) keeps fp32 FMAs; "high" / "medium" let the reduction dots round to TF32 as every fp32 matmul then does. The
# z the softmax is taken from is never rounded (it is the forward's expression, not a dot); only the terms of the
# reduction dL/dX = Wy^T (G Wx) are (relative 2^-11 each, summed in fp32). The paper recipes run fp32 with cuDNN's
# TF32 convolutions (PyTorch's default, as the official code ran), which round this gradient to TF32 as they consume
# it. Tried for "highest" and dropped (bench aot, sm_90): fp32 FMA dots at 64 x 64, 97 instructions/px and a 16 B
# spill; 3xTF32 by hand (G and Wx split into TF32 high and low parts, three dots) at 64 x 64, 87 and a 24 B spill
# (16 warps: 116 and 256 B).
_GATHER_PRECISION = {torch.float32: "ieee", torch.bfloat16: "tf32", torch.float16: "tf32"}


def _gather_precision(dtype: torch.dtype) -> str:
    """The backward dots' input precision for logits of `dtype` (fp32: per torch.get_float32_matmul_precision())."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return _GATHER_PRECISION[dtype]


# Partial slots depend on BLOCK_P: zero them between autotune trials so no config's leftovers are summed.
_FWD = tuned(_upsample_cross_entropy_fwd_kernel, _CONFIGS, _FIXED_CONFIG, ["C", "out_w"],
             ["loss_partial_ptr", "count_partial_ptr"], interpret=_INTERPRET_CONFIG)  # fmt: skip
_BWD = tuned(_upsample_cross_entropy_bwd_kernel, _CONFIGS, _FIXED_CONFIG, ["C", "out_w"], ["grad_ptr"],
             interpret=_INTERPRET_CONFIG)  # fmt: skip


# ------------------------------------------------------------------------------------------------- launchers
def _check_inputs(logits: Tensor, labels: Tensor, reduction: str) -> None:
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"logits and labels must be tensors, got {type(logits).__name__}, {type(labels).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits: expected rank 4 (N, C, h, w), got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"logits: expected dtype float32/bfloat16/float16, got {logits.dtype}")
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels: expected shape (N={logits.shape[0]}, H, W), got {tuple(labels.shape)}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels: expected dtype int64, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"labels: on {labels.device}, expected logits' device {logits.device}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {_REDUCTIONS}")
    pixel_stride(logits, "logits")


def _launch_geometry(logits: Tensor, labels: Tensor, align_corners: bool, ignore_index: int) -> dict:
    """Kernel arguments shared by forward and backward."""
    in_h, in_w = logits.shape[2], logits.shape[3]
    out_h, out_w = labels.shape[1], labels.shape[2]
    return {
        "stride_label_n": labels.stride(0),
        "stride_label_h": labels.stride(1),
        "stride_label_w": labels.stride(2),
        "in_h": in_h,
        "in_w": in_w,
        "out_h": out_h,
        "out_w": out_w,
        "scale_h": bilinear_scale(in_h, out_h, align_corners),
        "scale_w": bilinear_scale(in_w, out_w, align_corners),
        "ignore_index": ignore_index,
        "C": logits.shape[1],
        "ALIGN_CORNERS": align_corners,
    }


def _grid(batch: int, num_pixels: int):
    return lambda meta: (triton.cdiv(num_pixels, meta["BLOCK_P"]), batch)


def _upsample_cross_entropy_fwd(
    logits: Tensor, labels: Tensor, align_corners: bool, ignore_index: int, reduction: str, store_lse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel. Returns loss 0-d f32, lse (N, H, W) f32 (or (0,) unless `store_lse`), count."""
    _check_inputs(logits, labels, reduction)
    batch, num_pixels = labels.shape[0], labels.shape[1] * labels.shape[2]
    # Sized for the smallest BLOCK_P so any autotune config fits; unused slots stay zero.
    num_partials = batch * triton.cdiv(num_pixels, min(config.kwargs["BLOCK_P"] for config in _CONFIGS))
    loss_partial = logits.new_zeros(num_partials, dtype=torch.float32)
    count_partial = logits.new_zeros(num_partials, dtype=torch.int32)
    lse = logits.new_empty(labels.shape if store_lse else (0,), dtype=torch.float32)
    launch(
        _FWD, _grid(batch, num_pixels), logits, labels, lse, loss_partial, count_partial,
        logits.stride(0), logits.stride(1), pixel_stride(logits, "logits"),
        **_launch_geometry(logits, labels, align_corners, ignore_index), STORE_LSE=store_lse, work=batch * num_pixels,
    )  # fmt: skip
    count = count_partial.sum(dtype=torch.int64).float()
    loss = loss_partial.sum()
    if reduction == "mean":
        loss = loss / count.clamp_min(1)
    return loss, lse, count


# fp32 logits with TF32 dots (matmul precision "high") hold their 4 neighbours at 32 bits, not 16: at 64 x 64 on sm_90
# triton 3.9 fits them (255 registers, no spill) and triton 3.6 spills (104 B; bench aot under the floor triton), so
# below 3.9 they take the 64 x 32 tile.
_TF32_FP32_WIDE_FROM = (3, 9)


def _triton_version() -> tuple[int, int]:
    return tuple(int(part) for part in triton.__version__.split(".")[:2])


def _gather_tile(logits: Tensor) -> tuple[int, int, int]:
    """(TILE_H, TILE_W, warps) of the gather-form backward for these logits' dtype and device."""
    if interpreting():
        return _GATHER_TILE_INTERPRET
    precision, sm90 = _gather_precision(logits.dtype), device_capability(logits.device) >= 90
    if precision == "tf32" and logits.dtype == torch.float32 and _triton_version() < _TF32_FP32_WIDE_FROM:
        return _GATHER_TILE[(precision, False)]
    return _GATHER_TILE[(precision, sm90)]


def _gather_geometry(logits: Tensor, labels: Tensor, align_corners: bool) -> tuple[int, int] | None:
    """(own_h, own_w) of the gather-form backward at this shape, or None (the scatter form then runs)."""
    if os.environ.get("SEGADAPT_CE_BACKWARD", "gather") == "scatter":
        return None
    tile_h, tile_w, _ = _gather_tile(logits)
    own_h = gather_plan(logits.shape[2], labels.shape[1], align_corners, tile_h)
    own_w = gather_plan(logits.shape[3], labels.shape[2], align_corners, tile_w)
    return None if own_h is None or own_w is None else (own_h, own_w)


def _upsample_cross_entropy_bwd(
    grad_scale: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, align_corners: bool, ignore_index: int
) -> Tensor:
    """Launch the backward kernel. `grad_scale` is a 0-d f32 d(loss)/d(loss_sum). Returns grad of logits.

    The gather form (deterministic, no atomics) wherever `gather_plan` fits the shape; the scatter form (relaxed
    atomic adds) otherwise or with SEGADAPT_CE_BACKWARD=scatter. Both recompute z exactly as the forward did, so the
    softmax is consistent with the forward's `lse`.
    """
    batch, num_pixels = labels.shape[0], labels.shape[1] * labels.shape[2]
    plan = _gather_geometry(logits, labels, align_corners)
    if plan is not None:
        own_h, own_w = plan
        tile_h, tile_w, warps = _gather_tile(logits)
        geometry = _launch_geometry(logits, labels, align_corners, ignore_index)
        tiles_h, tiles_w = triton.cdiv(logits.shape[2], own_h), triton.cdiv(logits.shape[3], own_w)
        grad = torch.empty_like(logits, dtype=torch.float32)  # every source is written by one program
        inverse = [float(np.float32(1.0 / s)) if s > 0 else 0.0 for s in (geometry["scale_h"], geometry["scale_w"])]
        launch(
            _upsample_cross_entropy_bwd_gather_kernel, lambda meta: (tiles_h * tiles_w, batch), logits, labels, lse,
            grad_scale, grad, logits.stride(0), logits.stride(1), pixel_stride(logits, "logits"),
            grad.stride(0), grad.stride(1), pixel_stride(grad, "grad"),
            **geometry, inv_scale_h=inverse[0], inv_scale_w=inverse[1], own_h=own_h, own_w=own_w, tiles_w=tiles_w,
            TILE_H=tile_h, TILE_W=tile_w, SRC=GATHER_SRC, INPUT_PRECISION=_gather_precision(logits.dtype),
            num_warps=warps,
            work=batch * num_pixels,
        )  # fmt: skip
        return grad.to(logits.dtype)
    grad = torch.zeros_like(logits, dtype=torch.float32)  # keeps logits' memory format
    launch(
        _BWD, _grid(batch, num_pixels), logits, labels, lse, grad_scale, grad,
        logits.stride(0), logits.stride(1), pixel_stride(logits, "logits"),
        grad.stride(0), grad.stride(1), pixel_stride(grad, "grad"),
        **_launch_geometry(logits, labels, align_corners, ignore_index), work=batch * num_pixels,
    )  # fmt: skip
    return grad.to(logits.dtype)


# --------------------------------------------------------------------------------------------- custom ops
# The launchers are registered as torch.library custom ops and the autograd.Function calls only those, so
# torch.compile(fullgraph=True) sees two opaque ops with fake (meta) implementations instead of tracing into
# host-side checks, numpy scale rounding and the autotuner, which Dynamo cannot always follow. Not verified on a
# GPU when written; tests/kernels/test_compile.py checks it there.
@torch.library.custom_op("segadapt::upsample_cross_entropy_fwd", mutates_args=())
def _fwd_op(
    logits: Tensor, labels: Tensor, align_corners: bool, ignore_index: int, reduction: str, store_lse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _upsample_cross_entropy_fwd(logits, labels, align_corners, ignore_index, reduction, store_lse)


@_fwd_op.register_fake
def _(logits, labels, align_corners, ignore_index, reduction, store_lse):
    _check_inputs(logits, labels, reduction)
    scalar = logits.new_empty((), dtype=torch.float32)
    lse = logits.new_empty(labels.shape if store_lse else (0,), dtype=torch.float32)
    return scalar, lse, logits.new_empty((), dtype=torch.float32)


@torch.library.custom_op("segadapt::upsample_cross_entropy_bwd", mutates_args=())
def _bwd_op(
    grad_scale: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, align_corners: bool, ignore_index: int
) -> Tensor:
    return _upsample_cross_entropy_bwd(grad_scale, logits, labels, lse, align_corners, ignore_index)


@_bwd_op.register_fake
def _(grad_scale, logits, labels, lse, align_corners, ignore_index):
    return torch.empty_like(logits)


class _UpsampleCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, align_corners, ignore_index, reduction):
        loss, lse, count = _fwd_op(logits, labels, align_corners, ignore_index, reduction, True)
        ctx.save_for_backward(logits, labels, lse, count)
        ctx.align_corners, ctx.ignore_index, ctx.reduction = align_corners, ignore_index, reduction
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels, lse, count = ctx.saved_tensors
        grad_scale = grad_loss.float()
        if ctx.reduction == "mean":
            grad_scale = grad_scale / count.clamp_min(1)
        grad = _bwd_op(grad_scale.reshape(()), logits, labels, lse, ctx.align_corners, ctx.ignore_index)
        return grad, None, None, None, None


# ------------------------------------------------------------------------------------------------------ public
def upsample_cross_entropy(
    logits: Tensor, labels: Tensor, *, align_corners: bool, ignore_index: int = 255, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of `logits` bilinearly upsampled to the labels' size, never materialised at full resolution.

    Args:
        logits: (N, C, h, w) float32/bfloat16/float16, NCHW-contiguous or channels-last.
        labels: (N, H, W) int64; `ignore_index` pixels count neither in the loss nor in the mean.
        align_corners: bilinear convention, as in `F.interpolate`.
        ignore_index: ignored label value (255 for trainIds).
        reduction: "mean" over valid pixels (0 when none is valid) or "sum".

    Returns:
        0-d float32 loss; differentiable with respect to `logits`.
    """
    if not use_triton(logits, labels):
        return upsample_cross_entropy_ref(
            logits, labels, align_corners=align_corners, ignore_index=ignore_index, reduction=reduction
        )
    if torch.is_grad_enabled() and logits.requires_grad:
        return _UpsampleCrossEntropyFunction.apply(logits, labels, align_corners, ignore_index, reduction)
    return _fwd_op(logits, labels, align_corners, ignore_index, reduction, False)[0]


def main() -> None:
    """Tiny CPU demo: `TRITON_INTERPRET=1 python -m segadapt.kernels.upsample_cross_entropy` (the variable must be set
    before triton is imported); without it and without a GPU the reference runs on both sides."""
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 5, 9, requires_grad=True)
    labels = torch.randint(0, 19, (2, 33, 65))
    labels[:, :4] = 255
    loss = upsample_cross_entropy(logits, labels, align_corners=False)
    loss.backward()
    reference = upsample_cross_entropy_ref(logits.detach(), labels, align_corners=False)
    path = "triton" if use_triton(logits) else "reference (set TRITON_INTERPRET=1)"
    numbers = (loss.item(), reference.item(), logits.grad.norm().item())  # host sync: CPU demo main(), no training step
    print(f"{path} {numbers[0]:.6f}  reference {numbers[1]:.6f}  |grad| {numbers[2]:.6f}")


if __name__ == "__main__":
    main()
