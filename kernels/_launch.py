"""Shared launcher scaffolding of the fused ops: input checks, pixel strides, bilinear geometry, one launch helper.

Every op's launcher checks its inputs with the `check_*` helpers here, builds its arguments, and calls `launch`
with a `Tuned` kernel (its autotune configs plus the fixed config used under the interpreter or with
SEGADAPT_AUTOTUNE=0) or a plain `@triton.jit` kernel. `launch` is also where `bench/aot.py` intercepts: inside
`record_launches()` nothing runs, and each launch is recorded with its exact arguments, so the launchers called on
meta tensors of the real shapes yield the very specialisations a GPU run would compile.

The `@triton.jit` helpers below hold the index math the forward and backward kernels share: pixel tiles (one pixel
per lane), PyTorch's bilinear source indices, and the one-exponential online log-sum-exp update.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

from segadapt.kernels._dispatch import interpreting

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Pinned, not left to TRITON_DEFAULT_FP_FUSION: triton <= 3.9 fuses a * b + c into FMA by default and 3.10 stops
# (its knob warns about the change). Every parity tolerance in tests/kernels was measured with fusion on, the
# behaviour of every triton the project supports, so every launch asks for it explicitly.
FP_FUSION = True


# ------------------------------------------------------------------------------------------------ jit helpers
@triton.jit
def pixel_tile(num_pixels, BLOCK_P: tl.constexpr):
    """Batch index (int64), this program's BLOCK_P pixel indices within the image and their in-range mask.

    Grid (cdiv(num_pixels, BLOCK_P), N); one pixel per lane, so every per-pixel operation runs once per pixel.
    Pixel indices stay int32 (H*W < 2^31; int64 division costs ~10x); offsets built from them widen through n.
    """
    n = tl.cast(tl.program_id(1), tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return n, offs_p, offs_p < num_pixels


@triton.jit
def bilinear_source_index(dst, scale, in_size, ALIGN_CORNERS: tl.constexpr):
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
def bilinear_footprint(offs_p, out_w, in_h, in_w, scale_h, scale_w, ALIGN_CORNERS: tl.constexpr):
    """Output row and column, the 4 source pixel indices (int64: 00, 01, 10, 11) and the weights (lh0, lh1, lw0, lw1)
    of output pixels `offs_p` of a row-major (out_h, out_w) map."""
    out_row = offs_p // out_w
    out_col = offs_p - out_row * out_w
    h0, h1, lh0, lh1 = bilinear_source_index(out_row, scale_h, in_h, ALIGN_CORNERS)
    w0, w1, lw0, lw1 = bilinear_source_index(out_col, scale_w, in_w, ALIGN_CORNERS)
    pixels = (
        (h0 * in_w + w0).to(tl.int64),
        (h0 * in_w + w1).to(tl.int64),
        (h1 * in_w + w0).to(tl.int64),
        (h1 * in_w + w1).to(tl.int64),
    )
    return out_row, out_col, pixels, (lh0, lh1, lw0, lw1)


@triton.jit
def first_output(first_src, inv_scale, ALIGN_CORNERS: tl.constexpr):
    """An output coordinate at or before the first one whose lower source index reaches `first_src` - 1 (two
    coordinates of slack for float rounding; 0 at the top). The gather-form backward passes start their window here;
    `gather_plan` checks on the host that the window holds every output that reaches the owned sources."""
    if ALIGN_CORNERS:
        start = (first_src - 1).to(tl.float32) * inv_scale
    else:
        start = (first_src.to(tl.float32) - 0.5) * inv_scale - 0.5
    return tl.maximum(tl.floor(start).to(tl.int32) - 2, 0)


@triton.jit
def bilinear_weights(dst, dst_mask, first_src, SRC: tl.constexpr, scale, in_size, ALIGN_CORNERS: tl.constexpr):
    """(len(dst), SRC) fp32 block of the interpolation matrix: the weight of source first_src + k in output `dst`
    (both neighbours of a clamped edge land on one source and add up, as upsample_bilinear2d's backward does);
    rows where `dst_mask` is off are 0."""
    index0, index1, weight0, weight1 = bilinear_source_index(dst, scale, in_size, ALIGN_CORNERS)
    src = first_src + tl.arange(0, SRC)
    weights = tl.where(index0[:, None] == src[None, :], weight0[:, None], 0.0)
    weights += tl.where(index1[:, None] == src[None, :], weight1[:, None], 0.0)
    return tl.where(dst_mask[:, None], weights, 0.0)


@triton.jit
def reaches(dst, scale, in_size, first_src, own, out_size, ALIGN_CORNERS: tl.constexpr):
    """Output coordinates `dst` (inside the map) with a bilinear neighbour among sources [first_src, first_src+own)."""
    index0, index1, _, _ = bilinear_source_index(dst, scale, in_size, ALIGN_CORNERS)
    hit0 = (index0 >= first_src) & (index0 < first_src + own)
    hit1 = (index1 >= first_src) & (index1 < first_src + own)
    return (dst < out_size) & (hit0 | hit1)


@triton.jit
def owned_block(own_h, own_w, tiles_w, in_h, in_w, SRC: tl.constexpr):
    """A gather-form backward program's block: batch index n (int64), first owned source row r0 and column c0, and
    over the SRC x SRC source window from (r0 - 1, c0 - 1): inside-the-map mask, owned mask, pixel indices (int64).

    Grid (tiles_h * tiles_w, N); program p owns rows [r0, r0 + own_h) x columns [c0, c0 + own_w) of every image.
    """
    n = tl.cast(tl.program_id(1), tl.int64)
    tile_row = tl.program_id(0) // tiles_w
    r0 = tile_row * own_h
    c0 = (tl.program_id(0) - tile_row * tiles_w) * own_w
    rows = r0 - 1 + tl.arange(0, SRC)
    cols = c0 - 1 + tl.arange(0, SRC)
    in_map = ((rows >= 0) & (rows < in_h))[:, None] & ((cols >= 0) & (cols < in_w))[None, :]
    owned = ((rows >= r0) & (rows < r0 + own_h))[:, None] & ((cols >= c0) & (cols < c0 + own_w))[None, :] & in_map
    pixels = (rows[:, None] * in_w + cols[None, :]).to(tl.int64)
    return n, r0, c0, in_map, owned, pixels


@triton.jit
def bilinear_gather(base, pixels, lam, stride_p, mask):
    """Bilinear value of base[pixel * stride_p] in fp32, associated as upsample_bilinear2d does:
    lh0 * (lw0 * x00 + lw1 * x01) + lh1 * (lw0 * x10 + lw1 * x11)."""
    x00 = tl.load(base + pixels[0] * stride_p, mask=mask, other=0.0).to(tl.float32)
    x01 = tl.load(base + pixels[1] * stride_p, mask=mask, other=0.0).to(tl.float32)
    x10 = tl.load(base + pixels[2] * stride_p, mask=mask, other=0.0).to(tl.float32)
    x11 = tl.load(base + pixels[3] * stride_p, mask=mask, other=0.0).to(tl.float32)
    return lam[0] * (lam[2] * x00 + lam[3] * x01) + lam[1] * (lam[2] * x10 + lam[3] * x11)


@triton.jit
def online_lse_update(running_max, running_sum, x):
    """Fold x into (max, sum of exp(. - max)) with one exponential: rescale the sum only when x is the new max."""
    delta = x - running_max
    scale = tl.exp(-tl.abs(delta))
    grows = delta > 0
    return tl.where(grows, x, running_max), tl.where(grows, running_sum * scale + 1.0, running_sum + scale)


# ---------------------------------------------------------------------------------------------- host helpers
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


GATHER_SRC = 16  # source window of the gather-form backward passes: owned sources plus a 1-source halo each side


@functools.lru_cache(maxsize=256)
def gather_plan(in_size: int, out_size: int, align_corners: bool, tile: int) -> int | None:
    """Sources one program of a gather-form backward owns along one axis, or None when no count fits.

    A program owns `own` consecutive sources [r0, r0 + own) (r0 = tile index x own), reads the window of
    GATHER_SRC sources from r0 - 1 and the `tile` outputs from `first_output(r0)`, recomputes the loss gradient there
    and reduces it onto its owned sources: every source is written by exactly one program, no atomics, the same
    summation order on every run. The largest own <= GATHER_SRC - 2 is taken for which, on every tile, the outputs
    reaching the owned sources lie inside the output window with two coordinates of margin each side (the kernel's
    float32 index math, for the window start and for the outputs' source indices, may each differ from this float64
    check by one at a boundary). Shapes only: no device access.
    """
    scale = bilinear_scale(in_size, out_size, align_corners)
    inv = float(np.float32(1.0 / scale)) if scale > 0 else 0.0
    dst = np.arange(out_size, dtype=np.float64)
    src = scale * dst if align_corners else np.maximum(scale * (dst + 0.5) - 0.5, 0.0)
    index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    index1 = np.where(index0 < in_size - 1, index0 + 1, index0)
    for own in range(GATHER_SRC - 2, 0, -1):
        fits = True
        for first in range(0, in_size, own):
            hit = ((index0 >= first) & (index0 < first + own)) | ((index1 >= first) & (index1 < first + own))
            if not hit.any():
                continue
            lo, hi = int(np.argmax(hit)), int(out_size - 1 - np.argmax(hit[::-1]))
            raw = (first - 1) * inv if align_corners else (first - 0.5) * inv - 0.5
            start = max(int(np.floor(raw)) - 2, 0)
            if not ((start == 0 or start <= lo - 2) and hi <= start + tile - 3):
                fits = False
                break
        if fits:
            return own
    return None


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


def check_logits(logits: Tensor, name: str = "logits") -> None:
    """A rank-4 (N, C, H, W) float tensor whose H and W merge into one pixel index."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32/bfloat16/float16, got {logits.dtype}")
    if logits.dim() != 4:
        raise ValueError(f"{name}: expected rank 4 (N, C, H, W), got shape {tuple(logits.shape)}")
    pixel_stride(logits, name)


def check_pixel_map(name: str, tensor: Tensor, shape: tuple[int, ...], device: torch.device, dtypes: tuple) -> None:
    """An (N, H, W) map of one of `dtypes` on `device` whose H and W merge into one pixel index."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (N, H, W), got {tuple(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name}: expected device {device}, got {tensor.device}")
    if tensor.dim() == 3 and tensor.stride(1) != tensor.shape[2] * tensor.stride(2):
        raise ValueError(f"{name}: H and W must merge into one pixel index, got strides {tensor.stride()}")


def map_strides(tensor: Tensor | None) -> tuple[int, int]:
    """(batch stride, pixel stride) of an (N, H, W) map; (0, 0) for an absent one."""
    return (0, 0) if tensor is None else (tensor.stride(0), tensor.stride(2))


# ------------------------------------------------------------------------------------------------ the launch
@dataclass(frozen=True)
class Tuned:
    """A kernel with its autotune configs and the fixed config used when autotuning is off."""

    kernel: Callable
    configs: tuple
    fixed: triton.Config
    autotuner: Callable
    interpret: triton.Config | None = None


def tuned(
    kernel,
    configs: list,
    fixed: triton.Config,
    key: list[str],
    reset_to_zero: list[str] | None = None,
    interpret: triton.Config | None = None,
):
    """Wrap `kernel` for `launch`: autotuned over `configs` on a GPU, `fixed` when autotuning is off.

    `reset_to_zero` names buffers a kernel accumulates into: autotuning replays the kernel, and every replay would
    otherwise add into the same accumulator. `interpret`, where given, replaces `fixed` under TRITON_INTERPRET only:
    the interpreter runs programs one after another in Python, so its cost is per program and per operation, and a
    one-pixel-per-lane kernel with a loop over classes runs ~15x faster with a 4096-pixel tile than with the GPU's
    256 (upsample+CE at the demo's 192x96, batch 4: 66 s -> 7 s a forward+backward). Never compiled for a GPU.
    """
    autotuner = triton.autotune(configs, key=key, reset_to_zero=reset_to_zero)(kernel)
    return Tuned(kernel, tuple(configs), fixed, autotuner, interpret)


@dataclass
class LaunchRecord:
    """One intercepted launch: what `bench/aot.py` compiles ahead of time."""

    kernel: Callable
    configs: tuple
    grid: Callable
    args: tuple
    kwargs: dict
    work: int
    tag: str = ""
    extra: dict = field(default_factory=dict)


_RECORDS: list[LaunchRecord] | None = None
_RECORD_CAPABILITY: int | None = None


@contextlib.contextmanager
def record_launches(capability: int = 90) -> Iterator[list[LaunchRecord]]:
    """Within the block, `launch` records instead of running (launchers then work on meta tensors), and
    `device_capability` answers `capability` (e.g. 90 for sm_90), so launchers pick that target's tiles."""
    global _RECORDS, _RECORD_CAPABILITY
    previous, _RECORDS = _RECORDS, []
    previous_capability, _RECORD_CAPABILITY = _RECORD_CAPABILITY, capability
    try:
        yield _RECORDS
    finally:
        _RECORDS, _RECORD_CAPABILITY = previous, previous_capability


def device_capability(device: torch.device) -> int:
    """Compute capability as major * 10 + minor (90 for an H100) of a CUDA device; while recording, the target's;
    90 elsewhere (CPU interpreter, meta tensors: the value only picks GPU tiles). Cached by torch, no sync."""
    if _RECORD_CAPABILITY is not None:
        return _RECORD_CAPABILITY
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def launch(kernel, grid: Callable[[dict], tuple], *args, work: int, **kwargs) -> None:
    """Launch a `Tuned` or plain jit kernel; `grid(meta)` maps the launch's keyword and config values to a grid.

    Args:
        kernel: a `Tuned` (autotuned on a GPU, its fixed config otherwise) or a `@triton.jit` function.
        grid: callable of the meta-parameters (kwargs plus the config's) returning the grid tuple.
        args: positional kernel arguments.
        work: output pixels (or rows) the launch covers; bench/aot.py divides instruction counts by it.
        kwargs: keyword kernel arguments, constexprs included.
    """
    if not interpreting():
        kwargs = {**kwargs, "enable_fp_fusion": FP_FUSION}
    if _RECORDS is not None:
        if isinstance(kernel, Tuned):
            configs = kernel.configs + tuple(c for c in (kernel.fixed,) if c not in kernel.configs)
            _RECORDS.append(LaunchRecord(kernel.kernel, configs, grid, args, kwargs, work))
        else:
            _RECORDS.append(LaunchRecord(kernel, (None,), grid, args, kwargs, work))
        return
    if not isinstance(kernel, Tuned):
        kernel[grid(kwargs)](*args, **kwargs)
    elif autotune_enabled():
        kernel.autotuner[lambda meta: grid(meta)](*args, **kwargs)
    else:
        fixed = kernel.interpret if kernel.interpret is not None and interpreting() else kernel.fixed
        meta = {**kwargs, **fixed.kwargs}
        kernel.kernel[grid(meta)](
            *args, **meta, num_warps=fixed.num_warps, num_stages=fixed.num_stages
        )  # fmt: skip
