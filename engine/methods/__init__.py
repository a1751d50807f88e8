"""Method registry: one explicit entry per paper (plus the supervised baselines)."""

from __future__ import annotations

import importlib

from torch import nn

from segadapt.config import Config
from segadapt.methods.adaptsegnet import AdaptSegNet
from segadapt.methods.base import Method
from segadapt.methods.base import StepContext
from segadapt.methods.supervised import build_sourceonly
from segadapt.methods.supervised import build_supervised


def _lazy(module: str):
    """A builder `module.build(model, cfg)` imported on first use, so one method's imports never slow another's."""

    def build(model: nn.Module, cfg: Config) -> Method:
        return importlib.import_module(module).build(model, cfg)

    return build


METHODS = {
    "sourceonly": lambda model, cfg: build_sourceonly(model, cfg.method),
    "supervised": lambda model, cfg: build_supervised(model, cfg.method),
    "adaptsegnet": lambda model, cfg: AdaptSegNet(model, cfg.method, cfg.model.num_classes),
    "advsemiseg": _lazy("segadapt.methods.advsemiseg"),
    "u2pl": _lazy("segadapt.methods.u2pl"),
    "lsdseg": _lazy("segadapt.methods.lsdseg"),
    "colorization": _lazy("segadapt.methods.mixmatch"),
    "mixmatch": _lazy("segadapt.methods.mixmatch"),
}


def build_method(model: nn.Module, cfg: Config) -> Method:
    """Build the method named by `cfg.method.name` around the segmenter."""
    if cfg.method.name not in METHODS:
        raise ValueError(f"method.name = {cfg.method.name!r}: expected one of {sorted(METHODS)}")
    return METHODS[cfg.method.name](model, cfg)


__all__ = ["METHODS", "Method", "StepContext", "build_method"]
