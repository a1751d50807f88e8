"""The Method contract and the step context through which every method backpropagates and steps.

A method owns its extra networks (discriminators, teacher, generator) as submodules, so one `state_dict()` holds
everything a checkpoint needs. It never touches files or loaders: it receives a Batch (DESIGN.md) and a
`StepContext`, and returns detached 0-d tensors that the trainer reads only on logging steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch import nn

from segadapt.config import Optim


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """One optimizer a method asks the trainer for: parameter groups (each with an `lr_mult`) and hyper-parameters."""

    groups: list[dict]
    kind: str  # "sgd" | "adam"
    lr: float
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    scheduled: bool = True  # False: the learning rate stays constant (LSD-seg's G and D never decay)


class StepContext:
    """What a method may do in a step: autocast, scaled backward, and stepping a named optimizer.

    Gradient accumulation lives here: `backward` divides by `iter_size`, and `step` only steps (and clears the
    gradients of) its optimizer on the last micro-step, so a method is written once for any `iter_size`.
    """

    def __init__(
        self,
        device_type: str,
        amp_dtype: torch.dtype | None,
        scaler: torch.amp.GradScaler,
        optimizers: dict[str, torch.optim.Optimizer],
        iter_size: int = 1,
    ):
        self.device_type = device_type
        self.amp_dtype = amp_dtype
        self.scaler = scaler
        self.optimizers = optimizers
        self.iter_size = iter_size
        self.micro_step = 0
        self.step_index = 0
        self.log_step = True
        """Whether the trainer logs this step's dict: methods compute their `diag/*` curves only then (some cost a
        full-resolution upsample and argmax), so the other steps pay nothing for the diagnosis."""

    @property
    def last_micro_step(self) -> bool:
        return self.micro_step == self.iter_size - 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def backward(self, loss: Tensor, retain_graph: bool = False, inputs: list[Tensor] | None = None) -> None:
        """`inputs`: accumulate gradients into these tensors only (torch's backward(inputs=...))."""
        self.scaler.scale(loss / self.iter_size).backward(retain_graph=retain_graph, inputs=inputs)

    def step(self, name: str) -> None:
        if name not in self.optimizers:
            raise KeyError(f"ctx.step({name!r}): no such optimizer; the method declared {sorted(self.optimizers)}")
        if not self.last_micro_step:
            return
        optimizer = self.optimizers[name]
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Stop gradients from reaching these modules' parameters (the official `requires_grad = False` toggle)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def segmenter_groups(model: nn.Module, optim: Optim) -> list[dict]:
    """Backbone at the base lr, classifier heads at `head_lr_mult` (official: 10x), as `adjust_learning_rate` does.

    With `optim.official_repeated_groups` the backbone group repeats parameters as the official one does.
    """
    from segadapt.optim import official_repeated_backbone  # here: segadapt.optim imports this module

    backbone = official_repeated_backbone(model) if optim.official_repeated_groups else model.backbone_parameters()
    return [
        {"params": list(backbone), "lr_mult": 1.0, "name": "backbone"},
        {"params": list(model.head_parameters()), "lr_mult": optim.head_lr_mult, "name": "head"},
    ]


def segmenter_optimizer(model: nn.Module, optim: Optim) -> OptimizerSpec:
    return OptimizerSpec(
        groups=segmenter_groups(model, optim),
        kind=optim.name,
        lr=optim.lr,
        momentum=optim.momentum,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
    )


class Method(nn.Module):
    """Base class: `streams` names the Batch streams a step consumes; `optimizers()` what the trainer builds."""

    streams: tuple[str, ...] = ()
    # Attributes holding wrapped views (compiled, DDP) of modules registered elsewhere: kept out of `_modules`, so
    # state_dict() has each tensor once and the same keys in one process and under DDP.
    unregistered: tuple[str, ...] = ("net",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # The callable used for forward passes: the trainer replaces it by the compiled / DDP-wrapped segmenter.
        self.net: Callable[[Tensor], dict[str, Tensor]] = model

    def __setattr__(self, name: str, value) -> None:
        if name in type(self).unregistered:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The network periodic evaluation and best.pt use (U2PL: the EMA teacher once it exists); `model` here."""
        return self.model

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the modules whose gradients must be averaged over ranks (the trainer passes a DDP wrapper).

        The rule every method follows: a forward through a wrapped module is followed by exactly one backward that
        reaches its parameters in that step; a forward whose parameter gradients are not wanted (a discriminator
        inside `frozen(...)`) calls the raw module. The segmenter is wrapped here; methods add their own modules.
        """
        self.net = wrap(self.model)

    def param_groups(self, optim: Optim) -> dict[str, list[dict]]:
        return {name: spec.groups for name, spec in self.optimizers(optim).items()}

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        raise NotImplementedError
