"""Supervised baselines: source-only (AdaptSegNet's "Source only" row) and the oracle trained on target labels.

Both train the segmenter alone with main + lambda_seg * aux cross-entropy on stride-8 logits upsampled to the label
size (the fused upsample + CE op), SGD with heads at 10x, the same schedule as the adaptation recipe they compare to.
"""

from __future__ import annotations

from torch import Tensor

from engine.config import Optim
from engine.config import SourceOnly as SourceOnlyConfig
from engine.config import Supervised as SupervisedConfig
from engine.methods.base import Method
from engine.methods.base import OptimizerSpec
from engine.methods.base import StepContext
from engine.methods.base import segmenter_optimizer
from engine.methods.losses import seg_loss


def supervised_loss(out: dict[str, Tensor], label: Tensor, lambda_seg: float, align_corners: bool) -> Tensor:
    """main CE + lambda_seg * aux CE (the aux term only when the model has the conv4 head and the weight is > 0)."""
    loss = seg_loss(out["main"], label, align_corners)
    if lambda_seg > 0 and "aux" in out:
        loss = loss + lambda_seg * seg_loss(out["aux"], label, align_corners)
    return loss


class Supervised(Method):
    """Cross-entropy on one labelled stream; `stream` = "target" is AdaptSegNet's oracle."""

    def __init__(self, model, cfg: SupervisedConfig | SourceOnlyConfig, stream: str):
        super().__init__(model)
        self.cfg = cfg
        self.streams = (stream,)
        self.stream = stream

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        return {"model": segmenter_optimizer(self.model, optim)}

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        data = batch[self.stream]
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
