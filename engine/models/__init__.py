"""Segmenters and discriminators, built from the `[model]` config section through an explicit registry.

Every segmenter follows DESIGN.md's contract: `forward(image) -> dict` with "main" logits at output stride 8 and
"aux" (conv4 level) where it has one, plus `head_parameters()` (the 10x learning-rate group) and
`backbone_parameters()`, which together cover every trainable parameter exactly once.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import torch
from torch import nn

from segadapt.config import Model
from segadapt.models.deeplabv2 import ASPP
from segadapt.models.deeplabv2 import DeepLabV2
from segadapt.models.discriminator import FCDiscriminator
from segadapt.models.resnet import DEPTHS
from segadapt.models.toy import ToySegmenter
from segadapt.models.weights import LoadReport
from segadapt.models.weights import load_pretrained

__all__ = [
    "ASPP",
    "DeepLabV2",
    "FCDiscriminator",
    "LoadReport",
    "MODELS",
    "ToySegmenter",
    "build_discriminator",
    "build_segmenter",
    "load_pretrained",
]

logger = logging.getLogger(__name__)


def _deeplabv2(cfg: Model) -> nn.Module:
    if cfg.backbone not in DEPTHS:
        raise ValueError(f"model.backbone = {cfg.backbone!r} is not supported; choices: {', '.join(sorted(DEPTHS))}")
    return DeepLabV2(
        cfg.num_classes,
        backbone=cfg.backbone,
        width=cfg.width,
        multi_level=cfg.multi_level,
        aspp_rates=cfg.aspp_rates,
        sum_first_two_only=cfg.aspp_sum_first_two_only,
    )


def _toy(cfg: Model) -> nn.Module:
    return ToySegmenter(cfg.num_classes, width=cfg.width, multi_level=cfg.multi_level)


def _lazy(module: str) -> Callable[[Model], nn.Module]:
    """A builder `module.build(cfg)` imported on first use."""

    def build(cfg: Model) -> nn.Module:
        return importlib.import_module(module).build(cfg)

    return build


MODELS: dict[str, Callable[[Model], nn.Module]] = {
    "deeplabv2": _deeplabv2,
    "toy": _toy,
    "deeplabv3plus": _lazy("segadapt.models.deeplabv3plus"),
    "fcn8s": _lazy("segadapt.models.fcn8s"),
    "hypercolumn": _lazy("segadapt.models.hypercolumn"),
}


def build_segmenter(cfg: Model) -> nn.Module:
    """Build the segmenter named by `cfg.name`, load `cfg.pretrained` if set, and set its memory format.

    Compilation (`cfg.compile`) is left to the trainer, which knows the device.

    Raises:
        ValueError: unknown `model.name` or `model.backbone`, or weights that do not fit (see `load_pretrained`).
    """
    if cfg.name not in MODELS:
        raise ValueError(f"model.name = {cfg.name!r} is not a segmenter; choices: {', '.join(sorted(MODELS))}")
    model = MODELS[cfg.name](cfg)
    if cfg.pretrained:
        report = load_pretrained(model, cfg.pretrained)
        logger.info("model.pretrained: %s", report.summary())
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_discriminator(num_classes: int, ndf: int = 64) -> FCDiscriminator:
    """The official AdaptSegNet / AdvSemiSeg FCDiscriminator (logits, no sigmoid)."""
    return FCDiscriminator(num_classes, ndf)
