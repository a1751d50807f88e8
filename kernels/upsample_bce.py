"""Adversarial loss of a one-channel discriminator map after bilinear upsampling, without the full-res map.

Math: z = bilinear_upsample(d_logits, (H, W))[:, 0]; "bce": max(z, 0) - z t + log(1 + exp(-|z|)) (binary cross
entropy with logits); "mse": (z - t)^2 (AdaptSegNet's LS-GAN, `--gan LS`). The loss is the mean over valid
pixels: every pixel for a constant target, pixels whose target is not 255 for a per-pixel target; 0 with a zero
gradient when none is valid. Optionally returns sigmoid(z), the confidence map AdvSemiSeg thresholds with T_semi
(detached, as the official code takes `.data`).

Shapes and dtypes: d_logits (N, 1, h, w) float32/bfloat16/float16, NCHW or channels-last; target a Python float
(domain label 0/1) or (N, H, W) uint8/int64/float32 with 255 = ignore -> loss 0-d float32 (and sigmoid (N, H, W)
float32). Bilinear weights are PyTorch's upsample_bilinear2d (see kernels/upsample_cross_entropy.py).

Used by AdaptSegNet (output-space discriminators, BCE or LS-GAN, constant domain label) and AdvSemiSeg (D output
upsampled to the input size, masked BCE against the one-hot map's label, T_semi confidence).

Traffic (P = N*H*W output pixels, p = N*h*w input pixels): forward reads p*e bytes of logits plus P*(1 or 8) bytes
of target and writes P*4 bytes of sigmoid only when asked; backward reads the target again (its window overlap
from L2) and writes the p*4-byte fp32 gradient once. Forward: one output pixel per lane.
Backward, gather form (default): a program owns a block of the discriminator map (6 x 6 at x32 with 256 x 256-output
tiles, chosen per axis by `_gather_axis`), recomputes z = Wy (X Wx^T) on the outputs that reach it, 16 rows per loop
trip, and writes dL/dX = Wy^T (G Wx): no atomics, one summation order on every run (the scatter form sent every
output pixel's 4 adds into only N x h x w addresses). Where the window cannot hold a source's outputs (beyond ~x83)
the scatter form runs (relaxed atomics, order not fixed).
Ahead of time (bench aot, sm_90, 8x1x16x32 -> 512x1024): forward 3.5-3.7 warp instructions per output pixel,
gather backward ~5 (constant target) and ~8 (uint8/int64 target map; runtime loop counted per trip), 74-80
registers, no spill, no atomic. Predicted H100 (`bench roofline`): ~3x eager on the map case (instruction-bound:
the x32 window recomputes ~1.8 outputs per owned one; eager's 117 bytes per output pixel are counted from the aten
ops the reference dispatches: the upsampled map, the mask, the target's where and float cast, the per-pixel loss and
their gradients); the scatter form was predicted at 0.63x against a hand count that had left out those casts.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from segadapt.kernels._dispatch import use_triton
from segadapt.kernels._launch import FLOAT_DTYPES
from segadapt.kernels._launch import GATHER_SRC
from segadapt.kernels._launch import bilinear_footprint
from segadapt.kernels._launch import bilinear_gather
from segadapt.kernels._launch import bilinear_scale
from segadapt.kernels._launch import bilinear_weights
from segadapt.kernels._launch import first_output
from segadapt.kernels._launch import gather_plan
from segadapt.kernels._launch import launch
from segadapt.kernels._launch import owned_block
from segadapt.kernels._launch import pixel_stride
from segadapt.kernels._launch import pixel_tile
from segadapt.kernels._launch import reaches
from segadapt.kernels._launch import tuned

_LOSSES = ("bce", "mse")
_TARGET_DTYPES = (torch.uint8, torch.int64, torch.float32)
IGNORE = 255


# ------------------------------------------------------------------------------------------------- reference
def upsample_bce_ref(
    d_logits: Tensor,
    size: tuple[int, int],
    target: float | Tensor,
    *,
    align_corners: bool,
    return_sigmoid: bool = False,
    loss: str = "bce",
    upcast: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Specification: `F.interpolate`, then masked BCE-with-logits (or MSE), mean over valid pixels.

    Args:
        d_logits: (N, 1, h, w) float32/bfloat16/float16 discriminator logits.
        size: (H, W) output size.
        target: a float (every pixel valid) or (N, H, W) uint8/int64/float32 with 255 = ignore.
        align_corners: bilinear convention, as in `F.interpolate`.
        return_sigmoid: also return sigmoid of the upsampled logits, detached.
        loss: "bce" or "mse".
        upcast: compute in float32 (the specification); False keeps d_logits' dtype.

    Returns:
        0-d float32 loss, and (N, H, W) float32 sigmoid when `return_sigmoid`.
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss={loss!r}: expected one of {_LOSSES}")
    source = d_logits.float() if upcast else d_logits
    upsampled = F.interpolate(source, size=tuple(size), mode="bilinear", align_corners=align_corners)[:, 0]
    if isinstance(target, Tensor):
        valid = target != IGNORE
        target_map = torch.where(valid, target, 0).to(upsampled.dtype)
    else:
        valid = torch.ones_like(upsampled, dtype=torch.bool)
        target_map = torch.full_like(upsampled, float(target))
    if loss == "bce":
        elementwise = F.binary_cross_entropy_with_logits(upsampled, target_map, reduction="none")
    else:
        elementwise = (upsampled - target_map).square()
    value = torch.where(valid, elementwise, 0).sum().float() / valid.sum().clamp_min(1).float()
    if return_sigmoid:
        return value, torch.sigmoid(upsampled.detach()).float()
    return value


# --------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _upsampled_logit_and_target(
    logits_ptr,
    target_ptr,
    n,
    offs_p,
    mask_p,
    stride_n,
    stride_p,
    stride_target_n,
    stride_target_h,
    stride_target_w,
    in_h,
    in_w,
    out_w,
    scale_h,
    scale_w,
    target_value,
    ALIGN_CORNERS: tl.constexpr,
    TARGET_IS_TENSOR: tl.constexpr,
):
    """Upsampled logit, target, validity and the 4 source offsets/weights of each output pixel."""
    out_row, out_col, pixels, lam = bilinear_footprint(offs_p, out_w, in_h, in_w, scale_h, scale_w, ALIGN_CORNERS)
    z = bilinear_gather(logits_ptr + n * stride_n, pixels, lam, stride_p, mask_p)
    if TARGET_IS_TENSOR:
        offs = n * stride_target_n + out_row.to(tl.int64) * stride_target_h + out_col.to(tl.int64) * stride_target_w
        target = tl.load(target_ptr + offs, mask=mask_p, other=255).to(tl.float32)
        valid = mask_p & (target != 255.0)
        target = tl.where(valid, target, 0.0)
    else:
        target = tl.zeros_like(z) + target_value
        valid = mask_p
    weights = (lam[0] * lam[2], lam[0] * lam[3], lam[1] * lam[2], lam[1] * lam[3])
    return z, target, valid, pixels, weights


@triton.jit
def _upsample_bce_fwd_kernel(
    logits_ptr,
    target_ptr,
    sigmoid_ptr,
    loss_partial_ptr,
    count_partial_ptr,
    stride_n,
    stride_p,
    stride_target_n,
    stride_target_h,
    stride_target_w,
    in_h,
    in_w,
    out_h,
    out_w,
    scale_h,
    scale_w,
    target_value,
    ALIGN_CORNERS: tl.constexpr,
    TARGET_IS_TENSOR: tl.constexpr,
    LOSS_MSE: tl.constexpr,
    STORE_SIGMOID: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    n, offs_p, mask_p = pixel_tile(out_h * out_w, BLOCK_P)
    z, target, valid, _, _ = _upsampled_logit_and_target(
        logits_ptr, target_ptr, n, offs_p, mask_p, stride_n, stride_p, stride_target_n, stride_target_h,
        stride_target_w, in_h, in_w, out_w, scale_h, scale_w, target_value, ALIGN_CORNERS, TARGET_IS_TENSOR,
    )  # fmt: skip
    if LOSS_MSE:
        loss = (z - target) * (z - target)
    else:
        loss = tl.maximum(z, 0.0) - z * target + tl.log(1.0 + tl.exp(-tl.abs(z)))
    loss = tl.where(valid, loss, 0.0)
    if STORE_SIGMOID:
        tl.store(sigmoid_ptr + n * out_h * out_w + offs_p, 1.0 / (1.0 + tl.exp(-z)), mask=mask_p)
    # Per-program partials, reduced on device afterwards: deterministic.
    partial = n * tl.num_programs(0) + tl.program_id(0)
    tl.store(loss_partial_ptr + partial, tl.sum(loss, axis=0))
    tl.store(count_partial_ptr + partial, tl.sum(valid.to(tl.int32), axis=0))


@triton.jit
def _upsample_bce_bwd_kernel(
    logits_ptr,
    target_ptr,
    grad_scale_ptr,
    grad_ptr,
    stride_n,
    stride_p,
    stride_grad_n,
    stride_grad_p,
    stride_target_n,
    stride_target_h,
    stride_target_w,
    in_h,
    in_w,
    out_h,
    out_w,
    scale_h,
    scale_w,
    target_value,
    ALIGN_CORNERS: tl.constexpr,
    TARGET_IS_TENSOR: tl.constexpr,
    LOSS_MSE: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    n, offs_p, mask_p = pixel_tile(out_h * out_w, BLOCK_P)
    z, target, valid, pixels, weights = _upsampled_logit_and_target(
        logits_ptr, target_ptr, n, offs_p, mask_p, stride_n, stride_p, stride_target_n, stride_target_h,
        stride_target_w, in_h, in_w, out_w, scale_h, scale_w, target_value, ALIGN_CORNERS, TARGET_IS_TENSOR,
    )  # fmt: skip
    if LOSS_MSE:
        grad_z = 2.0 * (z - target)
    else:
        grad_z = 1.0 / (1.0 + tl.exp(-z)) - target
    # grad_scale = d(loss)/d(loss_sum): the upstream gradient over the valid count.
    grad_z = tl.where(valid, grad_z * tl.load(grad_scale_ptr), 0.0)
    grad_base = grad_ptr + n * stride_grad_n
    # Neighbouring output pixels share source pixels, hence atomics; relaxed, as nothing is ordered against them
    # (the default acq_rel fences and invalidates L1 around each one).
    tl.atomic_add(grad_base + pixels[0] * stride_grad_p, grad_z * weights[0], mask=valid, sem="relaxed")
    tl.atomic_add(grad_base + pixels[1] * stride_grad_p, grad_z * weights[1], mask=valid, sem="relaxed")
    tl.atomic_add(grad_base + pixels[2] * stride_grad_p, grad_z * weights[2], mask=valid, sem="relaxed")
    tl.atomic_add(grad_base + pixels[3] * stride_grad_p, grad_z * weights[3], mask=valid, sem="relaxed")


@triton.jit
def _upsample_bce_bwd_gather_kernel(
    logits_ptr,
    target_ptr,
    grad_scale_ptr,
    grad_ptr,
    stride_n,
    stride_p,
    stride_grad_n,
    stride_grad_p,
    stride_target_n,
    stride_target_h,
    stride_target_w,
    in_h,
    in_w,
    out_h,
    out_w,
    scale_h,
    scale_w,
    inv_scale_h,
    inv_scale_w,
    target_value,
    own_h,
    own_w,
    tiles_w,
    ALIGN_CORNERS: tl.constexpr,
    TARGET_IS_TENSOR: tl.constexpr,
    LOSS_MSE: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    CHUNK_H: tl.constexpr,
    SRC: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    # Gather form (see kernels/upsample_cross_entropy.py's gather kernel): this program owns the source logits
    # [r0, r0 + own_h) x [c0, c0 + own_w), recomputes z = Wy (X Wx^T) on the outputs that reach them, and writes
    # dL/dX = Wy^T (G Wx) with G = dL/dz: no atomics (the scatter form's N x h x w target addresses, each hit by
    # ~4 scale^2 adds, were its bound) and one summation order on every run.
    n, r0, c0, in_map, owned, pixels = owned_block(own_h, own_w, tiles_w, in_h, in_w, SRC)
    y_first = first_output(r0, inv_scale_h, ALIGN_CORNERS)
    xs = first_output(c0, inv_scale_w, ALIGN_CORNERS) + tl.arange(0, TILE_W)
    x_ok = reaches(xs, scale_w, in_w, c0, own_w, out_w, ALIGN_CORNERS)
    weights_x = bilinear_weights(xs, x_ok, c0 - 1, SRC, scale_w, in_w, ALIGN_CORNERS)
    x = tl.load(logits_ptr + n * stride_n + pixels * stride_p, mask=in_map, other=0.0).to(tl.float32)
    # Columns first, then rows: bilinear_gather's association.
    x_cols = tl.dot(x, tl.trans(weights_x), input_precision=INPUT_PRECISION)  # (SRC, TILE_W)
    coef = tl.load(grad_scale_ptr)
    grad_x = tl.zeros([SRC, SRC], tl.float32)
    # The output rows in chunks of CHUNK_H: the (CHUNK_H, TILE_W) tiles stay in registers (a whole 128 x 128 tile
    # spilled); the chunks' partial sums add in a fixed order.
    for chunk in range(TILE_H // CHUNK_H):
        ys = y_first + chunk * CHUNK_H + tl.arange(0, CHUNK_H)
        y_ok = reaches(ys, scale_h, in_h, r0, own_h, out_h, ALIGN_CORNERS)
        weights_y = bilinear_weights(ys, y_ok, r0 - 1, SRC, scale_h, in_h, ALIGN_CORNERS)
        valid = y_ok[:, None] & x_ok[None, :]
        if TARGET_IS_TENSOR:
            offs = n * stride_target_n + ys[:, None].to(tl.int64) * stride_target_h + xs[None, :] * stride_target_w
            target = tl.load(target_ptr + offs, mask=valid, other=255).to(tl.float32)
            valid = valid & (target != 255.0)
        else:
            target = target_value
        z = tl.dot(weights_y, x_cols, input_precision=INPUT_PRECISION)
        if LOSS_MSE:
            grad_z = 2.0 * (z - target)
        else:
            grad_z = 1.0 / (1.0 + tl.exp(-z)) - target
        grad_z = tl.where(valid, grad_z * coef, 0.0)
        grad_x += tl.dot(tl.trans(weights_y), tl.dot(grad_z, weights_x, input_precision=INPUT_PRECISION),
                         input_precision=INPUT_PRECISION)  # fmt: skip
    tl.store(grad_ptr + n * stride_grad_n + pixels * stride_grad_p, grad_x, mask=owned)


# One pixel per lane at 256 x 8 warps, 2 or 4 per lane above: the per-pixel work is a few instructions.
_CONFIGS = [triton.Config({"BLOCK_P": block_p}, num_warps=warps) for block_p, warps in ((256, 8), (512, 4), (1024, 4))]
_FIXED_CONFIG = triton.Config({"BLOCK_P": 1024}, num_warps=4)
# Partial slots depend on BLOCK_P: zero them between autotune trials so no config's leftovers are summed.
_FWD = tuned(_upsample_bce_fwd_kernel, _CONFIGS, _FIXED_CONFIG, ["out_w", "TARGET_IS_TENSOR"],
             ["loss_partial_ptr", "count_partial_ptr"])  # fmt: skip
_BWD = tuned(_upsample_bce_bwd_kernel, _CONFIGS, _FIXED_CONFIG, ["out_w", "TARGET_IS_TENSOR"], ["grad_ptr"])
# Gather-form backward: output tile sizes per axis (the launcher takes, per axis, the one that recomputes the fewest
# outputs per owned output: 64 at x4, 256 at the discriminators' x32), the output rows per loop trip (whole tiles,
# or an unrolled loop, spilled) and warps. Its dots run as fp32 FMAs for every logits dtype: with one channel they
# are a few instructions per output pixel, and TF32 (tensor cores) spilled on sm_80.
_GATHER_TILES = (64, 128, 256)
_GATHER_CHUNK_H = 16
_GATHER_WARPS = 8


def _gather_axis(in_size: int, out_size: int, align_corners: bool) -> tuple[int, int] | None:
    """(tile, own) along one axis: the tile with the fewest computed outputs per owned output, or None."""
    best = None
    for tile in _GATHER_TILES:
        own = gather_plan(in_size, out_size, align_corners, tile)
        if own is None:
            continue
        cost = tile / min(own * out_size / in_size, out_size)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, tile, own)
    return None if best is None else best[1:]


# ------------------------------------------------------------------------------------------------- launchers
def _check_inputs(d_logits: Tensor, size, target: Tensor | None, loss: str) -> None:
    if not isinstance(d_logits, Tensor):
        raise TypeError(f"d_logits: expected a tensor, got {type(d_logits).__name__}")
    if d_logits.dim() != 4 or d_logits.shape[1] != 1:
        raise ValueError(f"d_logits: expected shape (N, 1, h, w), got {tuple(d_logits.shape)}")
    if d_logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"d_logits: expected dtype float32/bfloat16/float16, got {d_logits.dtype}")
    if len(size) != 2 or not all(isinstance(extent, int) and extent > 0 for extent in size):
        raise ValueError(f"size: expected (H, W) positive ints, got {size!r}")
    if target is not None:
        expected = (d_logits.shape[0], *size)
        if tuple(target.shape) != expected:
            raise ValueError(f"target: expected shape {expected}, got {tuple(target.shape)}")
        if target.dtype not in _TARGET_DTYPES:
            raise ValueError(f"target: expected dtype uint8/int64/float32, got {target.dtype}")
        if target.device != d_logits.device:
            raise ValueError(f"target: on {target.device}, expected d_logits' device {d_logits.device}")
    if loss not in _LOSSES:
        raise ValueError(f"loss={loss!r}: expected one of {_LOSSES}")
    pixel_stride(d_logits, "d_logits")


def _geometry(d_logits: Tensor, size, target: Tensor | None, target_value: float, align_corners: bool, loss: str):
    """Kernel arguments shared by forward and backward."""
    in_h, in_w = d_logits.shape[2], d_logits.shape[3]
    strides = target.stride() if target is not None else (0, 0, 0)
    return {
        "stride_target_n": strides[0],
        "stride_target_h": strides[1],
        "stride_target_w": strides[2],
        "in_h": in_h,
        "in_w": in_w,
        "out_h": size[0],
        "out_w": size[1],
        "scale_h": bilinear_scale(in_h, size[0], align_corners),
        "scale_w": bilinear_scale(in_w, size[1], align_corners),
        "target_value": float(target_value),
        "ALIGN_CORNERS": align_corners,
        "TARGET_IS_TENSOR": target is not None,
        "LOSS_MSE": loss == "mse",
    }


def _launch(kernel, args: tuple, geometry: dict, batch: int, num_pixels: int) -> None:
    grid = lambda meta: (triton.cdiv(num_pixels, meta["BLOCK_P"]), batch)
    launch(kernel, grid, *args, **geometry, work=batch * num_pixels)


def _upsample_bce_fwd(
    d_logits: Tensor,
    size: list[int],
    target: Tensor | None,
    target_value: float,
    align_corners: bool,
    loss: str,
    store_sigmoid: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel. Returns loss 0-d f32, sigmoid (N, H, W) f32 (or (0,)), valid count 0-d f32."""
    _check_inputs(d_logits, size, target, loss)
    batch, num_pixels = d_logits.shape[0], size[0] * size[1]
    # Sized for the smallest BLOCK_P so any autotune config fits; unused slots stay zero.
    num_partials = batch * triton.cdiv(num_pixels, min(config.kwargs["BLOCK_P"] for config in _CONFIGS))
    loss_partial = d_logits.new_zeros(num_partials, dtype=torch.float32)
    count_partial = d_logits.new_zeros(num_partials, dtype=torch.int32)
    sigmoid = d_logits.new_empty((batch, *size) if store_sigmoid else (0,), dtype=torch.float32)
    geometry = _geometry(d_logits, size, target, target_value, align_corners, loss)
    geometry["STORE_SIGMOID"] = store_sigmoid
    target_arg = target if target is not None else loss_partial  # never read when TARGET_IS_TENSOR is False
    args = (d_logits, target_arg, sigmoid, loss_partial, count_partial, d_logits.stride(0))
    args += (pixel_stride(d_logits, "d_logits"),)
    _launch(_FWD, args, geometry, batch, num_pixels)
    count = count_partial.sum(dtype=torch.int64).float()
    return loss_partial.sum() / count.clamp_min(1), sigmoid, count


def _upsample_bce_bwd(
    grad_scale: Tensor,
    d_logits: Tensor,
    size: list[int],
    target: Tensor | None,
    target_value: float,
    align_corners: bool,
    loss: str,
) -> Tensor:
    """Launch the backward kernel. `grad_scale` is a 0-d f32 d(loss)/d(loss_sum). Returns grad of d_logits.

    The gather form (deterministic, no atomics) wherever `gather_plan` fits the shape (upsampling up to ~x83 at the
    256-output tile: the discriminators' x32 owns 6 x 6 sources per program); the scatter form (relaxed atomic adds)
    otherwise, or with SEGADAPT_BCE_BACKWARD=scatter.
    """
    geometry = _geometry(d_logits, size, target, target_value, align_corners, loss)
    plan_h = _gather_axis(d_logits.shape[2], size[0], align_corners)
    plan_w = _gather_axis(d_logits.shape[3], size[1], align_corners)
    if plan_h is not None and plan_w is not None and os.environ.get("SEGADAPT_BCE_BACKWARD", "gather") != "scatter":
        (tile_h, own_h), (tile_w, own_w) = plan_h, plan_w
        batch = d_logits.shape[0]
        tiles_h, tiles_w = triton.cdiv(d_logits.shape[2], own_h), triton.cdiv(d_logits.shape[3], own_w)
        grad = torch.empty_like(d_logits, dtype=torch.float32)  # every source is written by one program
        inverse = [float(np.float32(1.0 / s)) if s > 0 else 0.0 for s in (geometry["scale_h"], geometry["scale_w"])]
        target_arg = target if target is not None else grad  # never read when TARGET_IS_TENSOR is False
        launch(
            _upsample_bce_bwd_gather_kernel, lambda meta: (tiles_h * tiles_w, batch), d_logits, target_arg,
            grad_scale, grad, d_logits.stride(0), pixel_stride(d_logits, "d_logits"), grad.stride(0),
            pixel_stride(grad, "grad"), **geometry, inv_scale_h=inverse[0], inv_scale_w=inverse[1], own_h=own_h,
            own_w=own_w, tiles_w=tiles_w, TILE_H=tile_h, TILE_W=tile_w, CHUNK_H=_GATHER_CHUNK_H, SRC=GATHER_SRC,
            INPUT_PRECISION="ieee", num_warps=_GATHER_WARPS, work=batch * size[0] * size[1],
        )  # fmt: skip
        return grad.to(d_logits.dtype)
    grad = torch.zeros_like(d_logits, dtype=torch.float32)  # keeps d_logits' memory format
    target_arg = target if target is not None else grad  # never read when TARGET_IS_TENSOR is False
    args = (d_logits, target_arg, grad_scale, grad, d_logits.stride(0), pixel_stride(d_logits, "d_logits"))
    args += (grad.stride(0), pixel_stride(grad, "grad"))
    _launch(_BWD, args, geometry, d_logits.shape[0], size[0] * size[1])
    return grad.to(d_logits.dtype)


# --------------------------------------------------------------------------------------------- custom ops
# Launchers are opaque torch.library custom ops with fake implementations, so torch.compile(fullgraph=True)
# never traces host-side checks or the autotuner; the autograd.Function below calls only these ops.
# (Same choice as kernels/upsample_cross_entropy.py; checked on GPU by tests/kernels/test_compile.py.)
@torch.library.custom_op("segadapt::upsample_bce_fwd", mutates_args=())
def _fwd_op(
    d_logits: Tensor,
    size: list[int],
    target: Tensor | None,
    target_value: float,
    align_corners: bool,
    loss: str,
    store_sigmoid: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _upsample_bce_fwd(d_logits, size, target, target_value, align_corners, loss, store_sigmoid)


@_fwd_op.register_fake
def _(d_logits, size, target, target_value, align_corners, loss, store_sigmoid):
    _check_inputs(d_logits, size, target, loss)
    sigmoid = d_logits.new_empty((d_logits.shape[0], *size) if store_sigmoid else (0,), dtype=torch.float32)
    return d_logits.new_empty((), dtype=torch.float32), sigmoid, d_logits.new_empty((), dtype=torch.float32)


@torch.library.custom_op("segadapt::upsample_bce_bwd", mutates_args=())
def _bwd_op(
    grad_scale: Tensor,
    d_logits: Tensor,
    size: list[int],
    target: Tensor | None,
    target_value: float,
    align_corners: bool,
    loss: str,
) -> Tensor:
    return _upsample_bce_bwd(grad_scale, d_logits, size, target, target_value, align_corners, loss)


@_bwd_op.register_fake
def _(grad_scale, d_logits, size, target, target_value, align_corners, loss):
    return torch.empty_like(d_logits)


class _UpsampleBCEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d_logits, size, target, target_value, align_corners, loss, store_sigmoid):
        value, sigmoid, count = _fwd_op(d_logits, size, target, target_value, align_corners, loss, store_sigmoid)
        ctx.save_for_backward(d_logits, target, count)
        ctx.arguments = (size, target_value, align_corners, loss)
        ctx.mark_non_differentiable(sigmoid)
        return value, sigmoid

    @staticmethod
    def backward(ctx, grad_loss, grad_sigmoid):
        d_logits, target, count = ctx.saved_tensors
        size, target_value, align_corners, loss = ctx.arguments
        grad_scale = (grad_loss.float() / count.clamp_min(1)).reshape(())
        grad = _bwd_op(grad_scale, d_logits, size, target, target_value, align_corners, loss)
        return grad, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------------------ public
def upsample_bce(
    d_logits: Tensor,
    size: tuple[int, int],
    target: float | Tensor,
    *,
    align_corners: bool,
    return_sigmoid: bool = False,
    loss: str = "bce",
) -> Tensor | tuple[Tensor, Tensor]:
    """BCE-with-logits (or LS-GAN MSE) of `d_logits` upsampled to `size`, mean over valid pixels.

    Args:
        d_logits: (N, 1, h, w) float32/bfloat16/float16, NCHW-contiguous or channels-last.
        size: (H, W) output size.
        target: a float domain label, or (N, H, W) uint8/int64/float32 per-pixel labels with 255 = ignore.
        align_corners: bilinear convention, as in `F.interpolate`.
        return_sigmoid: also return sigmoid of the upsampled logits (detached).
        loss: "bce" or "mse".

    Returns:
        0-d float32 loss (0 when no pixel is valid), and (N, H, W) float32 sigmoid when `return_sigmoid`.
    """
    target_tensor = target if isinstance(target, Tensor) else None
    tensors = (d_logits,) if target_tensor is None else (d_logits, target_tensor)
    if not use_triton(*tensors):
        return upsample_bce_ref(
            d_logits, size, target, align_corners=align_corners, return_sigmoid=return_sigmoid, loss=loss
        )
    if not isinstance(target, (Tensor, float, int)):
        raise TypeError(f"target: expected a float or a tensor, got {type(target).__name__}")
    target_value = 0.0 if target_tensor is not None else float(target)
    arguments = (d_logits, [int(extent) for extent in size], target_tensor, target_value, align_corners, loss)
    if torch.is_grad_enabled() and d_logits.requires_grad:
        value, sigmoid = _UpsampleBCEFunction.apply(*arguments, return_sigmoid)
    else:
        value, sigmoid, _ = _fwd_op(*arguments, return_sigmoid)
    return (value, sigmoid) if return_sigmoid else value


def main() -> None:
    """Tiny CPU demo: `TRITON_INTERPRET=1 python -m segadapt.kernels.upsample_bce` (set before triton is imported)."""
    torch.manual_seed(0)
    d_logits = torch.randn(2, 1, 5, 9, requires_grad=True)
    target = torch.randint(0, 2, (2, 33, 65), dtype=torch.uint8)
    target[:, :4] = IGNORE
    value, sigmoid = upsample_bce(d_logits, (33, 65), target, align_corners=True, return_sigmoid=True)
    value.backward()
    reference = upsample_bce_ref(d_logits.detach(), (33, 65), target, align_corners=True)
    path = "triton" if use_triton(d_logits) else "reference (set TRITON_INTERPRET=1)"
    numbers = (value.item(), reference.item(), sigmoid.mean().item())  # host sync: CPU demo main(), no training step
    print(f"{path} {numbers[0]:.6f}  reference {numbers[1]:.6f}  mean sigmoid {numbers[2]:.4f}")


if __name__ == "__main__":
    main()
