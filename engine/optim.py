"""Optimizers and learning-rate schedules, built from the specs methods declare."""

from __future__ import annotations

import torch

from segadapt.config import Schedule
from segadapt.methods.base import OptimizerSpec


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


POLICIES = ("poly", "constant", "step", "multistep")


def lr_factor(schedule: Schedule, step: int) -> float:
    """The schedule's multiplier at the start of `step` (0-based).

    poly (official `lr_poly`): (1 - step / total_steps) ** power; step: gamma ** (step // step_size); multistep:
    gamma ** (number of milestones <= step), as Caffe's "multistep" counts them.
    """
    if schedule.policy == "constant":
        return 1.0
    if schedule.policy == "poly":
        return (1.0 - step / schedule.total_steps) ** schedule.power
    if schedule.policy == "step":
        if schedule.step_size < 1:
            raise ValueError(f"schedule.step_size = {schedule.step_size}: the step policy needs a positive step_size")
        return schedule.gamma ** (step // schedule.step_size)
    if schedule.policy == "multistep":
        if list(schedule.milestones) != sorted(schedule.milestones) or not schedule.milestones:
            raise ValueError(f"schedule.milestones = {schedule.milestones}: expected increasing steps, at least one")
        return schedule.gamma ** sum(1 for milestone in schedule.milestones if step >= milestone)
    raise ValueError(f"schedule.policy = {schedule.policy!r}: expected one of {', '.join(POLICIES)}")


def set_lr(optimizers: dict[str, torch.optim.Optimizer], specs: dict[str, OptimizerSpec], factor: float,
           scale: float = 1.0) -> None:  # fmt: skip
    """lr = spec.lr * group lr_mult * scale, times the schedule `factor` for specs that follow the schedule."""
    for name, optimizer in optimizers.items():
        spec = specs[name]
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * group["lr_mult"] * scale * (factor if spec.scheduled else 1.0)
