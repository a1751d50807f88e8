"""Launched by tests/engine/test_distributed.py under torchrun (gloo, CPU): trains K steps of a config and writes
what every rank ended with, so the test can compare ranks with each other and with a single process.

Usage: python -m torch.distributed.run --nproc-per-node N tests/engine/ddp_worker.py CONFIG.json STEPS OUT.pt
Environment: FAIL_RANK=r raises a RuntimeError on rank r at step 1; NAN_RANK=r makes rank r's losses NaN.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from engine import config
from engine import distributed
from engine.train import build_everything
from engine.train import check_finite
from engine.train import maybe_evaluate
from engine.train import NullLogger
from engine.train import train_step


def flat_state(module: torch.nn.Module) -> torch.Tensor:
    """Every floating-point tensor of the method's state_dict, flattened in key order."""
    return torch.cat([v.detach().float().reshape(-1) for v in module.state_dict().values() if v.is_floating_point()])


def main() -> None:
    cfg_path, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cfg = config.load_dict(json.loads(open(cfg_path).read()), cfg_path)
    world = distributed.init("gloo", "cpu", 120.0)
    run = build_everything(cfg, world)
    losses: dict[str, torch.Tensor] = {}
    for step in range(steps):
        if os.environ.get("FAIL_RANK") == str(world.rank) and step == 1:
            raise RuntimeError(f"injected failure on rank {world.rank} at step {step}")
        losses = train_step(run, step)
        if os.environ.get("NAN_RANK") == str(world.rank):
            losses = {k: v * float("nan") for k, v in losses.items()}
        check_finite(losses, step + 1)
    run.step = steps
    evaluation = maybe_evaluate(run, NullLogger(), print) if cfg.data.val.dataset else {}
    ranks = distributed.all_gather_cat(flat_state(run.method)[None])
    if world.is_main:
        torch.save(
            {
                "ranks": ranks,
                "state": {k: v.detach().clone() for k, v in run.method.state_dict().items()},
                "miou": evaluation.get("miou"),
                "losses": {k: float(v) for k, v in losses.items()},
                "world_size": world.world_size,
            },
            out,
        )
    run.streams.close()


if __name__ == "__main__":
    main()
