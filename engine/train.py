"""The training loop: a plain, readable loop in nanoGPT's spirit.

`train(cfg)` builds everything, then runs steps; periodic work (log, evaluate, checkpoint) is `if step % N == 0`.
Every host synchronisation is marked and sits inside a logging, evaluation or checkpoint branch. AMP, gradient
scaling and accumulation live in `StepContext`; methods only call `ctx.backward` / `ctx.step`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch

from segadapt import checkpoint
from segadapt import distributed
from segadapt.config import MATMUL_PRECISIONS
from segadapt.config import Config
from segadapt.config import replace
from segadapt.config import to_dict
from segadapt.data import Streams
from segadapt.data import ensure_synthshift
from segadapt.methods import Method
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods.base import OptimizerSpec
from segadapt.models import FCDiscriminator
from segadapt.models import build_segmenter
from segadapt.optim import lr_factor
from segadapt.optim import make_optimizer
from segadapt.optim import set_lr


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the message names the loss and the step."""


# --------------------------------------------------------------------------------------------------- device/AMP
SINGLE_PROCESS = distributed.World()


def resolve_device(name: str, world: distributed.World = SINGLE_PROCESS) -> torch.device:
    """The training device; under torchrun every process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device = {name!r} but no CUDA device is available")
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    return device


def per_rank(cfg: Config, world: distributed.World) -> tuple[Config, float]:
    """The config one process trains with, and the learning-rate multiplier, under `train.batch_scaling`.

    "keep_global": every stream's batch_size (the global batch) is divided by the world size, lr unchanged.
    "scale_lr": every process reads batch_size images and every learning rate is multiplied by the world size.
    """
    mode, size = cfg.train.batch_scaling, world.world_size
    if mode not in ("keep_global", "scale_lr"):
        raise ValueError(f"train.batch_scaling = {mode!r}: expected 'keep_global' or 'scale_lr'")
    if size == 1 or mode == "scale_lr":
        return cfg, float(size)
    changes = {}
    for name in ("source", "target", "labeled", "unlabeled", "labeled_real"):
        batch = getattr(cfg.data, name).batch_size
        if getattr(cfg.data, name).dataset and batch % size:
            raise ValueError(
                f"data.{name}.batch_size = {batch} (the global batch) does not divide over {size} processes; "
                f'choose a world size that divides it or set train.batch_scaling = "scale_lr"'
            )
        changes[f"data.{name}.batch_size"] = max(1, batch // size)
    return replace(cfg, **changes), 1.0


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """None means fp32 (autocast off)."""
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in choices:
        raise ValueError(f"train.precision = {name!r}: expected 'auto', 'bf16', 'fp16' or 'fp32'")
    return choices[name]


def apply_matmul_precision(name: str) -> None:
    """torch.set_float32_matmul_precision(name), for `train.matmul_precision`, with an error naming the key."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"train.matmul_precision = {name!r}: expected 'highest', 'high' or 'medium'")
    torch.set_float32_matmul_precision(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------- the run
@dataclass
class Run:
    cfg: Config
    device: torch.device
    method: Method
    streams: Streams
    optimizers: dict[str, torch.optim.Optimizer]
    specs: dict[str, OptimizerSpec]
    ctx: StepContext
    run_dir: Path
    world: distributed.World = field(default_factory=distributed.World)
    lr_scale: float = 1.0
    step: int = 0
    best: dict = field(default_factory=lambda: {"miou": -1.0, "step": -1})
    history: list = field(default_factory=list)
    logger: Any = field(default_factory=lambda: NullLogger())


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.train.run_dir.format(recipe=cfg.recipe or "run", method=cfg.method.name))


def final_checkpoint(cfg: Config) -> Path:
    """The checkpoint a finished run of `cfg` leaves: save_checkpoint's file at schedule.stop_step."""
    return run_dir_for(cfg) / "checkpoints" / f"step_{cfg.schedule.stop_step:07d}.pt"


def discriminators_channels_last(method: torch.nn.Module) -> None:
    """Put the method's FC discriminators in channels-last, as their input (the softmax of channels-last logits) is.

    With NCHW weights every conv reorders its weight and activations per call. Measured on CPU (bf16 autocast, one
    thread, 40 steps): AdaptSegNet `demo` 0.213 s/step instead of 0.231, AdvSemiSeg `semi_demo_advsemiseg` 0.183
    instead of 0.194. LSD-seg's generator and discriminator stay NCHW: all of that method in channels-last was slower
    on CPU (`lsd_demo` 0.13 s/step instead of 0.12: transposed convs and instance norm).
    """
    for module in method.modules():
        if isinstance(module, FCDiscriminator):
            module.to(memory_format=torch.channels_last)


def build_everything(cfg: Config, world: distributed.World = SINGLE_PROCESS) -> Run:
    """Model, method, loaders, optimizers and step context of one process; `world` shards data and wraps modules."""
    device = resolve_device(cfg.train.device, world)
    rank_cfg, lr_scale = per_rank(cfg, world)
    seed_everything(cfg.train.seed)  # the same on every rank: identical init (DDP also broadcasts rank 0's)
    if cfg.data.synthshift.generate:
        if world.is_main:
            ensure_synthshift(cfg.data.synthshift)
        distributed.barrier()
    model = build_segmenter(cfg.model).to(device)
    if world.distributed and cfg.train.sync_bn:
        if device.type != "cuda":
            raise ValueError("train.sync_bn = true needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(model, cfg).to(device)
    if cfg.model.channels_last:
        discriminators_channels_last(method)
    if world.distributed:
        method.distribute(distributed.ddp_wrapper(device))
    streams = Streams(
        rank_cfg.data, list(method.streams), seed=cfg.train.seed, rank=world.rank, world_size=world.world_size,
        device=device, channels_last=cfg.model.channels_last,
    )  # fmt: skip
    if cfg.model.compile == "on" or (cfg.model.compile == "auto" and device.type == "cuda"):
        method.net = torch.compile(method.net)
    specs = method.optimizers(cfg.optim)
    optimizers = {name: make_optimizer(spec, device, cfg.optim.fused) for name, spec in specs.items()}
    amp_dtype = resolve_precision(cfg.train.precision, device)
    apply_matmul_precision(cfg.train.matmul_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ctx = StepContext(device.type, amp_dtype, scaler, optimizers, cfg.train.iter_size)
    return Run(cfg, device, method, streams, optimizers, specs, ctx, run_dir_for(cfg), world, lr_scale)


def is_log_step(cfg: Config, done: int) -> bool:
    """Whether the loop logs after `done` finished steps: every `train.log_every`, and the last step."""
    return done % cfg.train.log_every == 0 or done == cfg.schedule.stop_step


def train_step(run: Run, step: int) -> dict[str, torch.Tensor]:
    """One optimizer step: `iter_size` micro-steps, then the scaler update. No host sync unless asked."""
    set_lr(run.optimizers, run.specs, lr_factor(run.cfg.schedule, step), run.lr_scale)
    run.ctx.step_index = step
    run.ctx.log_step = is_log_step(run.cfg, step + 1)
    for micro in range(run.cfg.train.iter_size):
        run.ctx.micro_step = micro
        batch = {name: run.streams.next(name) for name in run.method.streams}
        losses = run.method.train_step(batch, run.ctx)
    if run.cfg.train.official_host_roundtrips:
        for name, value in losses.items():
            if name.startswith("loss/"):  # the official loops read their losses, not segadapt's diag/* curves
                value.item()  # note: host sync on EVERY step, on purpose: the official loop's per-step loss reads
    run.ctx.scaler.update()
    return losses


def train(cfg: Config, resume: str | None = None, log=print, fresh_if_missing: bool = False) -> dict:
    """Train `cfg` to `schedule.stop_step`; returns the final evaluation (or {} without a val stream).

    Under torchrun every process calls this; only rank 0 writes files (holding the run directory's lock), all ranks
    evaluate their shard of val.

    Args:
        resume: None (start at step 0), "auto" (the run directory's latest checkpoint, or the newest one that loads)
            or a checkpoint path.
        fresh_if_missing: with resume="auto", start at step 0 when the run directory holds no checkpoint yet (a
            compare_methods baseline the interrupted job had not reached) instead of stopping.
    """
    world = distributed.init(cfg.train.dist_backend, resolve_device(cfg.train.device).type, cfg.train.dist_timeout_s)
    lock = checkpoint.RunDirLock(run_dir_for(cfg)) if world.is_main else None  # before anything is written there
    try:
        return _train(cfg, world, resume, log, fresh_if_missing)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, world: distributed.World, resume: str | None, log, fresh_if_missing: bool) -> dict:
    if world.is_main:
        stale = checkpoint.remove_stale_temps(run_dir_for(cfg))
        if stale:
            log(f"removed {len(stale)} temporary file(s) an interrupted write left in {run_dir_for(cfg)}")
    run = build_everything(cfg, world)
    if world.is_main:
        checkpoint.atomic_write_json(run.run_dir / "config.json", to_dict(cfg))
        write_splits(run)
    if world.distributed:
        log(describe_world(run))
    state = restore(run, resume, log, fresh_if_missing) if resume is not None else None
    if world.is_main:
        kept = state.get("log", {}).get("metrics_lines") if state is not None else 0  # None: cut by step
        run.logger = MetricsLogger(run.run_dir, cfg.train.tensorboard, resume_step=run.step, keep_lines=kept, log=log)
    logger = run.logger
    progress = make_progress(cfg, run.step, enabled=world.is_main)
    pending: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for step in range(run.step, cfg.schedule.stop_step):
        pending = train_step(run, step)
        run.step = step + 1
        progress.update(1)
        if is_log_step(cfg, run.step):
            maybe_log(run, pending, logger, progress, start)
        if cfg.train.eval_every and run.step % cfg.train.eval_every == 0 and run.step < cfg.schedule.stop_step:
            maybe_evaluate(run, logger, log)
        if cfg.train.checkpoint_every and run.step % cfg.train.checkpoint_every == 0:
            check_finite(pending, run.step)  # note: host sync point, only on checkpoint steps
            save_checkpoint(run)
    progress.close()
    if pending:
        check_finite(pending, run.step)
    save_checkpoint(run)
    result = maybe_evaluate(run, logger, log) if cfg.data.val.dataset else {}
    logger.close()
    summary = {"recipe": cfg.recipe, "method": cfg.method.name, "steps": run.step, "last": result, "best": run.best,
               "threads": torch.get_num_threads()}  # intra-op threads: what a run's seconds were bought with
    if world.is_main:
        checkpoint.atomic_write_json(run.run_dir / "results.json", summary)
    run.streams.close()
    return summary


def describe_world(run: Run) -> str:
    """The log line saying how a multi-process run splits the batch and sets the learning rate."""
    world, cfg = run.world, run.cfg
    if cfg.train.batch_scaling == "scale_lr":
        how = f"each process reads the recipe's batch (global batch x{world.world_size}), "
        how += f"learning rates x{run.lr_scale:g}"
    else:
        how = f"global batch kept: each process reads batch_size / {world.world_size}, learning rates unchanged"
    return f"distributed: {world.world_size} processes ({cfg.train.dist_backend} backend on {run.device.type}); {how}"


def write_splits(run: Run) -> None:
    """Record the image ids of every partial stream (fraction / count / complement) in run_dir/splits/NAME.txt,
    so a random split (AdvSemiSeg's train_id.pkl) can be reused as a list_file."""
    from segadapt.data.datasets import list_samples

    for name in run.method.streams:
        stream = getattr(run.cfg.data, name)
        if stream.count or stream.fraction != 1.0 or stream.complement:
            ids = [sample.id for sample in list_samples(stream)]
            checkpoint.atomic_write_text(run.run_dir / "splits" / f"{name}.txt", "\n".join(ids) + "\n")


# ----------------------------------------------------------------------------------------------- periodic work
def check_finite(losses: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """Read the losses (host sync) and stop the run on a NaN/inf, naming the loss and the step."""
    if not losses:
        return {}
    names = list(losses)
    # Averaged over ranks first, so a NaN on any rank stops every rank at the same step.
    stacked = distributed.all_reduce_mean(torch.stack([losses[n].float() for n in names]))
    values = stacked.tolist()  # note: host sync, logging steps only
    for name, value in zip(names, values, strict=False):
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"{name} is {value} at step {step}; stopping. The last good checkpoint is kept "
                f"(resume with --resume after lowering the learning rate or checking the data)."
            )
    return dict(zip(names, values, strict=False))


def maybe_log(run: Run, losses: dict[str, torch.Tensor], logger, progress, start: float) -> None:
    values = check_finite(losses, run.step)
    lrs = {f"lr/{n}": o.param_groups[0]["lr"] for n, o in run.optimizers.items()}
    images = sum(getattr(run.cfg.data, s).batch_size for s in run.method.streams) * run.cfg.train.iter_size
    record = {"kind": "train", "step": run.step, **values, **lrs, "elapsed_s": time.perf_counter() - start}
    record["images_per_step"] = images
    logger.write(record)
    progress.set_postfix({k.split("/")[-1]: f"{v:.4f}" for k, v in values.items()}, refresh=False)


def maybe_evaluate(run: Run, logger, log) -> dict:
    cfg = run.cfg
    if not cfg.data.val.dataset:
        return {}
    from segadapt.data.torch_loader import eval_samples
    from segadapt.evaluate import evaluate

    out_dir = run.run_dir / "eval" / f"step_{run.step:07d}" if run.world.is_main else None
    samples = eval_samples(cfg.data.val, cfg.eval.input_size, run.world.rank, run.world.world_size)
    result = evaluate(
        run.method.eval_model(),
        samples,
        cfg.data,
        cfg.eval,
        cfg.model.num_classes,
        run.device,
        out_dir=out_dir,
        autocast=run.ctx.autocast,
        reduce=distributed.all_reduce_sum,
    )
    logger.write({"kind": "eval", "step": run.step, **{k: v for k, v in result.items() if k != "confusion"}})
    if result["miou"] > run.best["miou"]:
        run.best = {"miou": result["miou"], "step": run.step}
        if run.world.is_main:
            best = {"models": {"model": run.method.eval_model().state_dict()}, **meta(run)}
            checkpoint.save(run.run_dir / "best.pt", best)
    return result


def meta(run: Run) -> dict:
    return {"step": run.step, "config": to_dict(run.cfg), "best": dict(run.best)}


def save_checkpoint(run: Run) -> Path | None:
    """Everything needed to continue bit-for-bit: models, optimizers, scaler, streams, RNG, schedule position.

    Rank 0 writes (every rank holds the same weights and stream positions); the others return None.
    """
    if not run.world.is_main:
        return None
    payload = {
        "models": split_state(run.method),
        "optimizers": {n: o.state_dict() for n, o in run.optimizers.items()},
        "scaler": run.ctx.scaler.state_dict(),
        "streams": run.streams.state_dict(),
        "rng": rng_state(),
        "log": {"metrics_lines": run.logger.lines},  # what a resume from here keeps of metrics.jsonl
        **meta(run),
    }
    directory = run.run_dir / "checkpoints"
    name = f"step_{run.step:07d}.pt"
    path = checkpoint.save(directory / name, payload)
    checkpoint.atomic_write_text(directory / "latest", name + "\n")
    return path


def split_state(method: Method) -> dict:
    """The segmenter's state under "model" (what export and predict read) and the method's other modules."""
    extra = {k: v for k, v in method.state_dict().items() if not k.startswith("model.")}
    return {"model": method.model.state_dict(), "extra": extra}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(run: Run, resume: str, log, fresh_if_missing: bool = False) -> dict | None:
    """Load a checkpoint into `run` (resume = "auto" or "" for the run directory's newest loadable one, else a path);
    returns its contents, or None when fresh_if_missing and the run directory holds no checkpoint."""
    if resume in ("", "auto"):
        directory = run.run_dir / "checkpoints"
        found = checkpoint.load_latest(directory, map_location=run.device, log=log)
        if found is None and fresh_if_missing:
            log(f"resume: no checkpoint in {directory} yet; {run.cfg.method.name} starts at step 0")
            return None
        if found is None:
            raise ValueError(f"--resume: no checkpoint in {directory}; start without --resume")
        path, state = found
    else:
        path = Path(resume)
        state = checkpoint.load(path, map_location=run.device)
    checkpoint.check_resumable(state, path, to_dict(run.cfg))
    models = state["models"]
    extra = {k: v for k, v in models["extra"].items() if not k.startswith("net.")}  # older files duplicated net.*
    run.method.load_state_dict({**{f"model.{k}": v for k, v in models["model"].items()}, **extra})
    for name, optimizer in run.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    run.ctx.scaler.load_state_dict(state["scaler"])
    run.streams.load_state_dict(state["streams"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate((3, tuple(state["rng"]["python"]), None))
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    run.step, run.best = state["step"], state["best"]
    log(f"resumed from {path} at step {run.step}")
    return state


# ---------------------------------------------------------------------------------------------------- reporting
class NullLogger:
    """What ranks other than 0 log to: nothing."""

    lines = 0

    def write(self, record: dict) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Nothing to close."""


class MetricsLogger:
    """metrics.jsonl (one JSON object a line, flushed) plus optional TensorBoard event files.

    The log continues where the run's state is: a fresh run starts an empty file, a resumed one keeps the first
    `keep_lines` records (the count its checkpoint saved; else every record up to `resume_step`) and drops what the
    interrupted run logged after its checkpoint and a line torn by the kill, so no step appears twice. TensorBoard
    gets the same cut through `purge_step`.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int = 0, keep_lines: int | None = 0,
                 log=print) -> None:  # fmt: skip
        path = run_dir / "metrics.jsonl"
        self.lines = truncate_metrics(path, resume_step, keep_lines, log)
        self.path = path
        self.handle = open(path, "a")  # noqa: SIM115 - closed in close()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Events of steps after the checkpoint (written before the kill) are hidden by TensorBoard's reader.
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else 0)

    def write(self, record: dict) -> None:
        try:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        except OSError as error:  # a full disk: name the file, the CLI prints it as one line
            raise OSError(error.errno, error.strerror, str(self.path)) from None
        self.lines += 1
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step",):
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(path: Path, step: int, keep_lines: int | None, log=print) -> int:
    """Cut metrics.jsonl to what a run continuing from `step` has logged; returns the records kept.

    Keeps the first `keep_lines` complete records when given (0: a fresh run), else the records with step <= `step`;
    in both cases it stops at the first line that is not a JSON object (a line torn by a kill). Rewritten
    atomically, so a kill here loses nothing.
    """
    if not path.is_file():
        return 0
    data = path.read_bytes()
    kept: list[bytes] = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is a torn record (or empty)
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or (keep_lines is not None and len(kept) >= keep_lines):
            break
        if keep_lines is None and not record.get("step", 0) <= step:
            break
        kept.append(line + b"\n")
    text = b"".join(kept)
    if text != data:
        checkpoint.atomic_write_bytes(path, lambda handle: handle.write(text))
        dropped = data.count(b"\n") - len(kept) + (not data.endswith(b"\n") and bool(data))
        if keep_lines == 0:
            log(f"{path}: a run starting at step 0 starts a new log; dropped {dropped} line(s) of an earlier run")
        else:
            log(f"{path}: kept {len(kept)} record(s) up to the checkpoint of step {step}, dropped {dropped} line(s) "
                "logged after it")  # fmt: skip
    return len(kept)


def make_progress(cfg: Config, start: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.schedule.stop_step,
        initial=start,
        disable=not (cfg.train.progress and enabled),
        desc=f"{cfg.recipe or 'run'}:{cfg.method.name}",
        unit="step",
        dynamic_ncols=True,
    )
