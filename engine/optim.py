"""Optimizers and learning-rate schedules, built from the specs methods declare.

`optim.official_repeated_groups` reproduces the segmenter optimizer of AdaptSegNet and AdvSemiSeg as their official
code builds it: `get_1x_lr_params_NOscale` (AdaptSegNet model/deeplab_multi.py, AdvSemiSeg model/deeplab.py) walks
`block.modules()` of conv1, bn1, layer1..4 and yields the recursive `parameters()` of each module, so the backbone
group lists every Bottleneck conv 3 times (layer, Bottleneck, conv), each downsample conv 4 times (layer,
Bottleneck, downsample Sequential, conv) and the stem conv once (pytorch/pytorch#40967; speedinghzl/Pytorch-Deeplab#18
reports the same function). torch.optim.SGD updates a parameter once per occurrence; its single-tensor path (the one
a CPU run and every official run took), occurrence after occurrence, with weight decay read from the parameter as
the previous occurrence left it and, from the second step on, one momentum buffer shared by the occurrences
(`_init_group` reads `state[p]` before the loop and stores the last occurrence's buffer after it). That is exactly
what `RepeatedGroupSGD` runs: torch.optim.SGD itself over the official lists, held to the single-tensor path.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from segadapt.config import Schedule
from segadapt.methods.base import OptimizerSpec

OFFICIAL_BACKBONE_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def official_repeated_backbone(model: nn.Module) -> list[nn.Parameter]:
    """The backbone list of the official `get_1x_lr_params_NOscale`, repetitions included.

    For each of conv1, bn1, layer1..4: for each module of `block.modules()`, every trainable parameter of that
    module's recursive `parameters()`. A parameter appears once per module on its path from the block down: 3x for
    a Bottleneck conv, 4x for a downsample conv, 1x for the stem conv (BatchNorm affine is frozen, so absent).
    """
    missing = [name for name in OFFICIAL_BACKBONE_BLOCKS if not isinstance(getattr(model, name, None), nn.Module)]
    if missing:
        raise ValueError(
            f"optim.official_repeated_groups = true walks the official DeepLab-v2 blocks "
            f"{', '.join(OFFICIAL_BACKBONE_BLOCKS)}; {type(model).__name__} has no {', '.join(missing)}"
        )
    return [
        parameter
        for name in OFFICIAL_BACKBONE_BLOCKS
        for module in getattr(model, name).modules()
        for parameter in module.parameters()
        if parameter.requires_grad
    ]


def has_repeats(groups: list[dict]) -> bool:
    """True when a group lists some parameter more than once (the official repeated backbone group)."""
    return any(len({id(p) for p in group["params"]}) != len(group["params"]) for group in groups)


class RepeatedGroupSGD(torch.optim.SGD):
    """torch.optim.SGD over groups that list a parameter several times, on its single-tensor path.

    Its step is torch.optim.SGD's (one update per occurrence, see the module docstring). Only the gradient scaler
    needs care: GradScaler.unscale_ walks `param_groups` and would divide a repeated parameter's gradient once per
    occurrence, so this optimizer takes the scale itself (`_step_supports_amp_scaling`, the fused optimizers' path):
    each distinct gradient is unscaled once and a step with an inf/NaN gradient is skipped, as GradScaler.step would.
    """

    _step_supports_amp_scaling = True

    def __init__(self, groups: list[dict], **settings) -> None:
        super().__init__(groups, foreach=False, fused=False, **settings)

    def add_param_group(self, param_group: dict) -> None:
        with warnings.catch_warnings():  # the repetition is the point: silence "duplicate parameters" (#40967)
            warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
            super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf):  # note: a CPU-GPU sync, the one GradScaler.step makes too
            return None
        if grad_scale is not None:
            unique = {id(p): p.grad for group in self.param_groups for p in group["params"] if p.grad is not None}
            torch._foreach_div_(list(unique.values()), grad_scale)
        if grad_scale is None and found_inf is None:
            return _sgd_step(self, closure)
        self.grad_scale = self.found_inf = None  # SGD's own step refuses them off its fused path
        try:
            return _sgd_step(self, closure)
        finally:  # GradScaler deletes the attributes it set after the step
            self.grad_scale, self.found_inf = grad_scale, found_inf


def _sgd_step(optimizer: torch.optim.SGD, closure):
    """torch.optim.SGD's step without its hook wrapper.

    The first SGD built in a process wraps `SGD.step` in place with the code that runs the step hooks
    (`Optimizer._patch_step_function`), and `RepeatedGroupSGD.step` is wrapped the same way: through `super().step`
    every registered step pre-/post-hook (a logger, an EMA update, the parity scripts' gradient recorder) ran twice
    per step once any plain SGD existed. The wrapper keeps the function it wraps as `__wrapped__`.
    """
    step = torch.optim.SGD.step
    while getattr(step, "hooked", False):  # functools.wraps copies `hooked` onto any wrapper above the hook runner
        step = step.__wrapped__
    return step(optimizer, closure)


def make_optimizer(spec: OptimizerSpec, device: torch.device, fused: str) -> torch.optim.Optimizer:
    """SGD or Adam with fused kernels where the device has them (nanoGPT picks fused AdamW the same way).

    Groups that repeat a parameter (`optim.official_repeated_groups`) get `RepeatedGroupSGD`, whatever `fused` says:
    the fused and foreach kernels would update the occurrences of one parameter from the same stale values (or
    race on them), not one after the other as the official single-tensor SGD does.
    """
    if fused not in ("auto", "on", "off"):
        raise ValueError(f"optim.fused = {fused!r}: expected 'auto', 'on' or 'off'")
    use_fused = fused == "on" or (fused == "auto" and device.type == "cuda")
    groups = [{**group, "lr": spec.lr * group["lr_mult"]} for group in spec.groups if group["params"]]
    if has_repeats(groups):
        if spec.kind != "sgd":
            raise ValueError(
                f"optim.official_repeated_groups = true reproduces the official SGD; optim.name = {spec.kind!r}"
            )
        return RepeatedGroupSGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
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
