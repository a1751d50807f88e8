"""Optimizers and learning-rate schedules, built from the specs methods declare."""

from __future__ import annotations

import torch

from engine.config import Schedule
from engine.methods.base import OptimizerSpec


def make_optimizer(spec: OptimizerSpec, device: torch.device, fused: str) -> torch.optim.Optimizer:
    """SGD or Adam with fused kernels where the device has them (nanoGPT picks fused AdamW the same way)."""
    if fused not in ("auto", "on", "off"):
        raise ValueError(f"optim.fused = {fused!r}: expected 'auto', 'on' or 'off'")
    use_fused = fused == "on" or (fused == "auto" and device.type == "cuda")
    groups = [{**group, "lr": spec.lr * group["lr_mult"]} for group in spec.groups if group["params"]]
    extra = {"fused": True} if use_fused else {"foreach": device.type == "cuda"}
    if spec.kind == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, **extra)
    if spec.kind == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, **extra)
    raise ValueError(f"optim.name = {spec.kind!r}: expected 'sgd' or 'adam'")


def lr_factor(schedule: Schedule, step: int) -> float:
    """Poly decay (official `lr_poly`): (1 - step / total_steps) ** power, evaluated at the start of the step."""
    if schedule.policy == "constant":
        return 1.0
    if schedule.policy != "poly":
        raise ValueError(f"schedule.policy = {schedule.policy!r}: expected 'poly' or 'constant'")
    return (1.0 - step / schedule.total_steps) ** schedule.power


def set_lr(optimizers: dict[str, torch.optim.Optimizer], specs: dict[str, OptimizerSpec], factor: float) -> None:
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = specs[name].lr * group["lr_mult"] * factor
