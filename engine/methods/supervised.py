"""Supervised baselines: source-only (AdaptSegNet's "Source only" row) and the oracle trained on target labels.

Both train the segmenter alone with main + lambda_seg * aux cross-entropy on stride-8 logits upsampled to the label
size (the fused upsample + CE op), SGD with heads at 10x, the same schedule as the adaptation recipe they compare to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segadapt.config import Optim
from segadapt.config import SourceOnly as SourceOnlyConfig
from segadapt.config import Supervised as SupervisedConfig
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.base import segmenter_optimizer
from segadapt.methods.losses import seg_loss


def supervised_loss(out: dict[str, Tensor], label: Tensor, lambda_seg: float, align_corners: bool) -> Tensor:
    """main CE + lambda_seg * aux CE (the aux term only when the model has the conv4 head and the weight is > 0)."""
    loss = seg_loss(out["main"], label, align_corners)
    if lambda_seg > 0 and "aux" in out:
        loss = loss + lambda_seg * seg_loss(out["aux"], label, align_corners)
    return loss


def draw_points(label: Tensor, count: int, margin: float) -> Tensor:
    """`count` random pixel centres per image, uniform over the image minus `margin` of each side, on the device.

    Args:
        label: (N, H, W), for the shape and device.

    Returns:
        (N, count, 2) int64 pixel coordinates (x, y).
    """
    n, height, width = label.shape
    low = torch.tensor([int(margin * width), int(margin * height)], device=label.device)
    high = torch.tensor([width - int(margin * width), height - int(margin * height)], device=label.device)
    unit = torch.rand(n, count, 2, device=label.device)
    return (low + unit * (high - low)).long().minimum(high - 1)


def sparse_point_loss(net, image: Tensor, label: Tensor, points: Tensor) -> Tensor:
    """Cross-entropy of the segmenter's logits at `points` (N, P, 2) against the labels there (ignore 255)."""
    logits = net(image, output="point_logits", points=points.to(image.dtype))["main"]  # (N, K, P)
    width = label.shape[-1]
    target = label.flatten(1).gather(1, points[..., 1] * width + points[..., 0])  # (N, P)
    return F.cross_entropy(logits.float(), target, ignore_index=255)


class Supervised(Method):
    """Cross-entropy on one labelled stream; `stream` = "target" is AdaptSegNet's oracle."""

    def __init__(self, model, cfg: SupervisedConfig | SourceOnlyConfig, stream: str):
        super().__init__(model)
        self.cfg = cfg
        self.streams = (stream,)
        self.stream = stream
        self.sparse_points = getattr(cfg, "sparse_points", 0)
        if self.sparse_points < 0 or not 0.0 <= getattr(cfg, "sparse_margin", 0.0) < 0.5:
            raise ValueError(f"method.sparse_points = {self.sparse_points} must be >= 0 and method.sparse_margin "
                             f"= {cfg.sparse_margin} in [0, 0.5)")  # fmt: skip
        if self.sparse_points and not hasattr(model, "point_hypercolumn"):
            raise ValueError(
                f"method.sparse_points = {self.sparse_points} needs a segmenter with a sparse head "
                f'(`point_logits` output): model.name = "hypercolumn"'
            )

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        return {"model": segmenter_optimizer(self.model, optim)}

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        data = batch[self.stream]
        if self.sparse_points:
            points = draw_points(data["label"], self.sparse_points, self.cfg.sparse_margin)
            with ctx.autocast():
                loss = sparse_point_loss(self.net, data["image"], data["label"], points)
            ctx.backward(loss)
            ctx.step("model")
            return {"loss/seg": loss.detach()}
        with ctx.autocast():
            out = self.net(data["image"])
        loss = supervised_loss(out, data["label"], self.cfg.lambda_seg, self.cfg.align_corners)
        ctx.backward(loss)
        ctx.step("model")
        return {"loss/seg": loss.detach()}


def build_sourceonly(model, cfg: SourceOnlyConfig) -> Supervised:
    return Supervised(model, cfg, "source")


def build_supervised(model, cfg: SupervisedConfig) -> Supervised:
    if cfg.stream not in ("source", "target", "labeled"):
        raise ValueError(f"method.stream = {cfg.stream!r}: expected 'source', 'target' or 'labeled'")
    return Supervised(model, cfg, cfg.stream)
