"""Launched by tests/engine/test_distributed.py under torchrun (gloo, CPU): trains K steps of a config and writes
what every rank ended with, so the test can compare ranks with each other and with a single process.

Usage: python -m torch.distributed.run --nproc-per-node N tests/engine/ddp_worker.py CONFIG.json STEPS OUT.pt
CONFIG.json is one config tree, or {"methods": {name: tree}} for one step of each (STEPS is then ignored).
`ddp_worker.py --cli ARGS...` runs `segadapt ARGS...` and fails if a process-group thread outlives it.
Environment: FAIL_RANK=r raises a RuntimeError on rank r at step 1; NAN_RANK=r makes rank r's losses NaN.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from segadapt import config
from segadapt import distributed
from segadapt.train import NullLogger
from segadapt.train import build_everything
from segadapt.train import check_finite
from segadapt.train import maybe_evaluate
from segadapt.train import train_step


def flat_state(module: torch.nn.Module) -> torch.Tensor:
    """Every parameter of the method (segmenter, discriminators, generator, teacher), flattened in order.

    BatchNorm running statistics are left out: without SyncBatchNorm each rank's follow its own images between
    forwards (DDP re-broadcasts rank 0's at the start of every forward), so they are not expected to agree.
    """
    return torch.cat([p.detach().float().reshape(-1) for p in module.parameters()])


def one_step_each(trees: dict[str, dict], out: str) -> None:
    """One optimizer step of every config in `trees`; rank 0 saves each method's gathered states before and after."""
    world = distributed.init("gloo", "cpu", 120.0)
    results = {}
    for name, tree in trees.items():
        run = build_everything(config.load_dict(tree, f"{name}.json"), world)
        before = distributed.all_gather_cat(flat_state(run.method)[None])
        losses = train_step(run, 0)
        check_finite(losses, 1)
        results[name] = {"before": before, "after": distributed.all_gather_cat(flat_state(run.method)[None])}
        run.streams.close()
    if world.is_main:
        torch.save(results, out)


def cli_then_check_threads(argv: list[str]) -> None:
    """`segadapt train` as torchrun runs it; should the CLI return, a thread of the process group still running here
    has outlived the job and will race the interpreter's teardown (a rank aborted that way under load)."""
    from segadapt.cli import main as cli_main

    code = cli_main(argv)
    tasks = [open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")]
    alive = sorted(name for name in tasks if "gloo" in name)
    if alive:
        print(f"rank {os.environ.get('RANK')}: process-group threads outlive the job: {alive}", flush=True)
        sys.exit(1)
    sys.exit(code)


def main() -> None:
    if sys.argv[1] == "--cli":
        cli_then_check_threads(sys.argv[2:])
    cfg_path, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tree = json.loads(open(cfg_path).read())
    if "methods" in tree:
        one_step_each(tree["methods"], out)
        leave()
    cfg = config.load_dict(tree, cfg_path)
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
    leave()


def leave() -> None:
    """End a finished worker as `segadapt train` ends under torchrun (cli.cmd_train): barrier, destroy the group,
    then exit without C++ static destructors. Returning instead let the gloo threads DDP keeps alive race the
    interpreter's teardown: rank 1 of a good job aborted ("terminate called without an active exception", exit -6)
    in test_two_ranks_match_each_other_and_one_process_with_the_global_batch[sourceonly] while CI shared the cores."""
    distributed.shutdown()
    distributed.exit_process(0)


if __name__ == "__main__":
    main()
