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
P*4 bytes of log-sum-exp; backward reads the labels and log-sum-exp again and scatters into a p*C*4-byte fp32
accumulator. The reference writes and reads the P*C*4-byte upsampled logits, their log-softmax and the gradient
of both, i.e. roughly 6*P*C*4 bytes and 2*P*C*4 bytes of peak memory.

Gradient scatter uses fp32 atomic adds: the summation order of the up-to-(4 * scale^2) contributions to one
source logit is not fixed, so gradients are not bitwise deterministic run to run (differences ~1 ulp).
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

_REDUCTIONS = ("mean", "sum")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------------------------------- reference
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
    loss_sum = F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="sum").float()
    if reduction == "sum":
        return loss_sum
    # sum / count instead of reduction="mean": identical where count > 0, and 0 (not NaN) when all is ignored.
    count = (labels != ignore_index).sum()
    return loss_sum / count.clamp_min(1).float()


# --------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _bilinear_source_index(dst, scale, in_size, ALIGN_CORNERS: tl.constexpr):
    """Lower/upper source index and their weights for output coordinates `dst`, as upsample_bilinear2d does."""
    dst_f = dst.to(tl.float32)
    if ALIGN_CORNERS:
        src = scale * dst_f
    else:
        # PyTorch clamps negative source coordinates to 0 for linear modes (area_pixel_compute_source_index).
        src = tl.maximum(scale * (dst_f + 0.5) - 0.5, 0.0)
    # src >= 0, so truncation is floor.
    index0 = tl.minimum(src.to(tl.int32), in_size - 1)
    lambda1 = tl.minimum(tl.maximum(src - index0.to(tl.float32), 0.0), 1.0)
    index1 = tl.where(index0 < in_size - 1, index0 + 1, index0)
    return index0, index1, 1.0 - lambda1, lambda1


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
    BLOCK_C: tl.constexpr,
):
    tile = tl.program_id(0)
    # int64 batch index: N*H*W and N*C*h*w offsets can pass 2^31 for large batches.
    n = tl.program_id(1).to(tl.int64)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < out_h * out_w
    out_row = offs_p // out_w
    out_col = offs_p % out_w
    h0, h1, lh0, lh1 = _bilinear_source_index(out_row, scale_h, in_h, ALIGN_CORNERS)
    w0, w1, lw0, lw1 = _bilinear_source_index(out_col, scale_w, in_w, ALIGN_CORNERS)
    label_offs = n * stride_label_n + out_row.to(tl.int64) * stride_label_h + out_col.to(tl.int64) * stride_label_w
    label = tl.load(labels_ptr + label_offs, mask=mask_p, other=ignore_index)
    valid = mask_p & (label != ignore_index)

    base = logits_ptr + n * stride_n
    off00 = (h0 * in_w + w0).to(tl.int64)[:, None] * stride_p
    off01 = (h0 * in_w + w1).to(tl.int64)[:, None] * stride_p
    off10 = (h1 * in_w + w0).to(tl.int64)[:, None] * stride_p
    off11 = (h1 * in_w + w1).to(tl.int64)[:, None] * stride_p
    lh0 = lh0[:, None]
    lh1 = lh1[:, None]
    lw0 = lw0[:, None]
    lw1 = lw1[:, None]

    # Online log-sum-exp over class blocks: one pass over the logits whatever C is.
    running_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_P], tl.float32)
    label_logit = tl.zeros([BLOCK_P], tl.float32)
    for c_start in range(0, C, BLOCK_C):
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        off_c = offs_c.to(tl.int64)[None, :] * stride_c
        mask = mask_p[:, None] & mask_c[None, :]
        x00 = tl.load(base + off00 + off_c, mask=mask, other=0.0).to(tl.float32)
        x01 = tl.load(base + off01 + off_c, mask=mask, other=0.0).to(tl.float32)
        x10 = tl.load(base + off10 + off_c, mask=mask, other=0.0).to(tl.float32)
        x11 = tl.load(base + off11 + off_c, mask=mask, other=0.0).to(tl.float32)
        z = lh0 * (lw0 * x00 + lw1 * x01) + lh1 * (lw0 * x10 + lw1 * x11)
        z = tl.where(mask_c[None, :], z, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(z, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        running_max = new_max
        label_logit += tl.sum(tl.where(offs_c[None, :] == label[:, None], z, 0.0), axis=1)
    lse = running_max + tl.log(running_sum)
    loss = tl.where(valid, lse - label_logit, 0.0)
    if STORE_LSE:
        tl.store(lse_ptr + n * out_h * out_w + offs_p, lse, mask=mask_p)
    # Per-program partials reduced on device afterwards: deterministic, no atomics on a single scalar.
    partial = n * tl.num_programs(0) + tile
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
    BLOCK_C: tl.constexpr,
):
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < out_h * out_w
    out_row = offs_p // out_w
    out_col = offs_p % out_w
    h0, h1, lh0, lh1 = _bilinear_source_index(out_row, scale_h, in_h, ALIGN_CORNERS)
    w0, w1, lw0, lw1 = _bilinear_source_index(out_col, scale_w, in_w, ALIGN_CORNERS)
    label_offs = n * stride_label_n + out_row.to(tl.int64) * stride_label_h + out_col.to(tl.int64) * stride_label_w
    label = tl.load(labels_ptr + label_offs, mask=mask_p, other=ignore_index)
    valid = mask_p & (label != ignore_index)
    lse = tl.load(lse_ptr + n * out_h * out_w + offs_p, mask=valid, other=0.0)
    # grad_scale = d(loss)/d(loss_sum): upstream gradient, divided by the valid count for "mean".
    coef = tl.where(valid, tl.load(grad_scale_ptr), 0.0)[:, None]

    base = logits_ptr + n * stride_n
    pix00 = (h0 * in_w + w0).to(tl.int64)[:, None]
    pix01 = (h0 * in_w + w1).to(tl.int64)[:, None]
    pix10 = (h1 * in_w + w0).to(tl.int64)[:, None]
    pix11 = (h1 * in_w + w1).to(tl.int64)[:, None]
    lh0 = lh0[:, None]
    lh1 = lh1[:, None]
    lw0 = lw0[:, None]
    lw1 = lw1[:, None]
    grad_base = grad_ptr + n * stride_grad_n
    for c_start in range(0, C, BLOCK_C):
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        off_c = offs_c.to(tl.int64)[None, :] * stride_c
        mask = valid[:, None] & mask_c[None, :]
        x00 = tl.load(base + pix00 * stride_p + off_c, mask=mask, other=0.0).to(tl.float32)
        x01 = tl.load(base + pix01 * stride_p + off_c, mask=mask, other=0.0).to(tl.float32)
        x10 = tl.load(base + pix10 * stride_p + off_c, mask=mask, other=0.0).to(tl.float32)
        x11 = tl.load(base + pix11 * stride_p + off_c, mask=mask, other=0.0).to(tl.float32)
        z = lh0 * (lw0 * x00 + lw1 * x01) + lh1 * (lw0 * x10 + lw1 * x11)
        onehot = tl.where(offs_c[None, :] == label[:, None], 1.0, 0.0)
        grad_z = (tl.exp(z - lse[:, None]) - onehot) * coef
        grad_c = offs_c.to(tl.int64)[None, :] * stride_grad_c
        # Scatter to the 4 source pixels; neighbouring output pixels share sources, hence atomics.
        tl.atomic_add(grad_base + pix00 * stride_grad_p + grad_c, grad_z * (lh0 * lw0), mask=mask)
        tl.atomic_add(grad_base + pix01 * stride_grad_p + grad_c, grad_z * (lh0 * lw1), mask=mask)
        tl.atomic_add(grad_base + pix10 * stride_grad_p + grad_c, grad_z * (lh1 * lw0), mask=mask)
        tl.atomic_add(grad_base + pix11 * stride_grad_p + grad_c, grad_z * (lh1 * lw1), mask=mask)


_CONFIGS = [triton.Config({"BLOCK_P": block_p}, num_warps=warps) for block_p in (64, 128, 256) for warps in (4, 8)]
_FIXED_CONFIG = {"BLOCK_P": 256, "num_warps": 4}
# Partial slots depend on BLOCK_P: zero them between autotune trials so no config's leftovers are summed.
_fwd_kernel_tuned = triton.autotune(
    _CONFIGS, key=["C", "out_w"], reset_to_zero=["loss_partial_ptr", "count_partial_ptr"]
)(_upsample_cross_entropy_fwd_kernel)
# reset_to_zero: autotuning replays the kernel, and every replay would add into the same gradient accumulator.
_bwd_kernel_tuned = triton.autotune(_CONFIGS, key=["C", "out_w"], reset_to_zero=["grad_ptr"])(
    _upsample_cross_entropy_bwd_kernel
)


# ------------------------------------------------------------------------------------------------- launchers
def autotune_enabled() -> bool:
    """Autotuning is off under the interpreter (slow and meaningless) or with SEGADAPT_AUTOTUNE=0."""
    return not interpreting() and os.environ.get("SEGADAPT_AUTOTUNE", "1") != "0"


def bilinear_scale(in_size: int, out_size: int, align_corners: bool) -> float:
    """`area_pixel_compute_scale` of upsample_bilinear2d, rounded to float32 the way PyTorch computes it."""
    if align_corners:
        if out_size <= 1:
            return 0.0
        return float(np.float32(in_size - 1) / np.float32(out_size - 1))
    return float(np.float32(in_size) / np.float32(out_size))


def pixel_stride(x: Tensor, name: str) -> int:
    """Stride between consecutive pixels of a (N, C, H, W) tensor whose H and W merge into one index.

    Raises:
        ValueError: naming `name` when H and W do not merge (neither NCHW-contiguous nor channels-last).
    """
    height, width = x.shape[2], x.shape[3]
    if height == 1 or width == 1:
        return x.stride(2) if width == 1 else x.stride(3)
    if x.stride(2) != width * x.stride(3):
        raise ValueError(
            f"{name}: strides {tuple(x.stride())} for shape {tuple(x.shape)} do not merge H and W into one pixel "
            f"index (need stride(2) == shape[3] * stride(3)); expected an NCHW-contiguous or channels-last layout"
        )
    return x.stride(3)


def _check_inputs(logits: Tensor, labels: Tensor, reduction: str) -> None:
    if not isinstance(logits, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"logits and labels must be tensors, got {type(logits).__name__}, {type(labels).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits: expected rank 4 (N, C, h, w), got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOAT_DTYPES:
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


def _launch_geometry(logits: Tensor, labels: Tensor, align_corners: bool) -> dict:
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
        "C": logits.shape[1],
        "ALIGN_CORNERS": align_corners,
        "BLOCK_C": min(triton.next_power_of_2(logits.shape[1]), 32),
    }


def _launch(kernel, tuned, args: tuple, geometry: dict, batch: int, num_pixels: int) -> None:
    if autotune_enabled():
        tuned[lambda meta: (triton.cdiv(num_pixels, meta["BLOCK_P"]), batch)](*args, **geometry)
    else:
        grid = (triton.cdiv(num_pixels, _FIXED_CONFIG["BLOCK_P"]), batch)
        kernel[grid](*args, **geometry, **_FIXED_CONFIG)


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
    geometry = _launch_geometry(logits, labels, align_corners)
    args = (logits, labels, lse, loss_partial, count_partial, logits.stride(0), logits.stride(1))
    args += (pixel_stride(logits, "logits"),)
    geometry.update(ignore_index=ignore_index, STORE_LSE=store_lse)
    _launch(_upsample_cross_entropy_fwd_kernel, _fwd_kernel_tuned, args, geometry, batch, num_pixels)
    count = count_partial.sum(dtype=torch.int64).float()
    loss = loss_partial.sum()
    if reduction == "mean":
        loss = loss / count.clamp_min(1)
    return loss, lse, count


def _upsample_cross_entropy_bwd(
    grad_scale: Tensor, logits: Tensor, labels: Tensor, lse: Tensor, align_corners: bool, ignore_index: int
) -> Tensor:
    """Launch the backward kernel. `grad_scale` is a 0-d f32 d(loss)/d(loss_sum). Returns grad of logits."""
    grad = torch.zeros_like(logits, dtype=torch.float32)  # keeps logits' memory format
    geometry = _launch_geometry(logits, labels, align_corners)
    geometry["ignore_index"] = ignore_index
    args = (logits, labels, lse, grad_scale, grad, logits.stride(0), logits.stride(1))
    args += (pixel_stride(logits, "logits"), grad.stride(0), grad.stride(1), pixel_stride(grad, "grad"))
    num_pixels = labels.shape[1] * labels.shape[2]
    _launch(_upsample_cross_entropy_bwd_kernel, _bwd_kernel_tuned, args, geometry, labels.shape[0], num_pixels)
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
    # host reads: CPU demo in main(), never in a training step
    print(f"{path} {loss.item():.6f}  reference {reference.item():.6f}  |grad| {logits.grad.norm().item():.6f}")


if __name__ == "__main__":
    main()
