"""Loss helpers shared by the methods; each calls a fused op from kernels/ (Triton or its reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segadapt.kernels.upsample_bce import upsample_bce
from segadapt.kernels.upsample_cross_entropy import strictly_channels_last
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy


def seg_loss(logits: Tensor, label: Tensor, align_corners: bool) -> Tensor:
    """Cross-entropy of stride-8 logits upsampled to the label's size, ignore 255, mean over valid pixels.

    Args:
        logits: (N, C, h, w) logits at stride 8.
        label: (N, H, W) int64 trainIds, 255 = ignore.
    """
    return upsample_cross_entropy(logits, label, align_corners=align_corners)


def upsample(logits: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    """Bilinear upsampling of logits to (H, W), the official `interp` layer.

    For channels-last CPU logits the gradient arriving at the upsampled map (NCHW from softmax's backward) is made
    channels-last first: the same values, and the CPU upsample backward takes its fast path (4x19x96x192 from 13x25,
    one thread, torch 2.13: 1.2 ms instead of 5.9 ms, plus a 0.5 ms copy). Not done on CUDA, where it was not measured.
    """
    out = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    if out.requires_grad and out.device.type == "cpu" and strictly_channels_last(logits):
        out.register_hook(lambda grad: grad.contiguous(memory_format=torch.channels_last))
    return out


def channel_softmax(x: Tensor) -> Tensor:
    """`torch.softmax(x, dim=1)`, returned channels-last when `x` is a channels-last CPU tensor (the same values).

    The CPU softmax over dim 1 of a channels-last map writes an NCHW result, and the discriminator that reads it
    (channels-last weights) copies it back to channels-last in its first convolution's forward and again in its
    backward. Made channels-last once here, the same bits reach the same convolution, with one copy instead of two
    (`bench/results/softmax-sbs/`: the AdaptSegNet and AdvSemiSeg demo steps, bit-identical checkpoints). Not done on
    CUDA, where it was not measured.
    """
    out = torch.softmax(x, dim=1)
    if x.device.type == "cpu" and strictly_channels_last(x):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def adversarial_loss(d_out: Tensor, label: int, gan: str, upsample_to: tuple[int, int] | None = None) -> Tensor:
    """GAN loss of discriminator logits against a constant domain label.

    Args:
        d_out: (N, 1, h, w) discriminator logits.
        label: domain label (0 source, 1 target in AdaptSegNet).
        gan: "vanilla" (BCE with logits) or "ls" (least squares, MSE on the raw output).
        upsample_to: (H, W) to bilinearly upsample the map to first (the paper's form), fused with the loss.
    """
    kind = "bce" if gan == "vanilla" else "mse"
    if upsample_to is not None:
        return upsample_bce(d_out, upsample_to, float(label), align_corners=True, loss=kind)
    d_out = d_out.float()
    target = torch.full_like(d_out, float(label))
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(d_out, target)
    return F.mse_loss(d_out, target)


# ------------------------------------------------------------------------------------------------------ diagnosis
# `diag/*` entries of a method's step dict: detached device tensors (no host read in the step; the trainer reads them
# with the losses on logging steps only), plotted apart from the losses by `segadapt report`. Labels the method never
# trains on (a UDA target batch's, an unlabelled batch's) may be read here, for diagnosis only: on data without such
# labels (all 255) the accuracies read 0 over no pixel.


@torch.no_grad()
def label_agreement(pred: Tensor, label: Tensor, mask: Tensor | None = None) -> Tensor:
    """Share of labelled pixels (label != 255), within `mask` where given, at which `pred` equals the label.

    Args:
        pred: (N, H, W) int64 class map; label: (N, H, W) int64 trainIds, 255 = unlabelled; mask: (N, H, W) bool.

    Returns:
        0-d float32 in [0, 1] (0 when no pixel counts).
    """
    valid = label != 255
    if mask is not None:
        valid = valid & mask
    return ((pred == label) & valid).sum().float() / valid.sum().clamp_min(1).float()


@torch.no_grad()
def domain_accuracy(d_out: Tensor, label: int, gan: str = "vanilla") -> Tensor:
    """Share of a discriminator's map cells that name `label` (0/1): logits > 0 mean 1 for a vanilla GAN, outputs
    > 0.5 for a least-squares one. 0-d float32."""
    says_one = d_out.float() > (0.0 if gan == "vanilla" else 0.5)
    return (says_one == bool(label)).float().mean()
