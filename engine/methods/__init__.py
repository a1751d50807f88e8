"""Method registry: one explicit entry per paper (plus the supervised baselines)."""

from __future__ import annotations

from torch import nn

from engine.config import Config
from engine.methods.adaptsegnet import AdaptSegNet
from engine.methods.base import Method
from engine.methods.base import StepContext
from engine.methods.supervised import build_sourceonly
from engine.methods.supervised import build_supervised

METHODS = {
    "sourceonly": lambda model, cfg: build_sourceonly(model, cfg.method),
    "supervised": lambda model, cfg: build_supervised(model, cfg.method),
    "adaptsegnet": lambda model, cfg: AdaptSegNet(model, cfg.method, cfg.model.num_classes),
}


def build_method(model: nn.Module, cfg: Config) -> Method:
    """Build the method named by `cfg.method.name` around the segmenter."""
    if cfg.method.name not in METHODS:
        raise ValueError(f"method.name = {cfg.method.name!r}: expected one of {sorted(METHODS)}")
    return METHODS[cfg.method.name](model, cfg)


__all__ = ["METHODS", "Method", "StepContext", "build_method"]
