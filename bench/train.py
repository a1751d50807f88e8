"""Training-throughput benchmark: the ablation ladder from the official-style loop to segadapt's fast path.

    python -m segadapt.bench train RECIPE --warmup 3 --steps 10 --rows a,b,c,d,e,f [--set key=value ...] [--out DIR]

Each row builds the recipe's real training step (`engine.train.build_everything` + `train_step`) with one more
switch turned on than the row before, all in the same process:

    a  official-style loop: fp32, eager, NCHW inputs and weights, unfused (reference) losses, the official loop's
       per-step host reads of every loss (`train.official_host_roundtrips`), the PyTorch loader
    b  segadapt's loop (no per-step host reads) + channels-last      c  + AMP (bf16 autocast on CPU)
    d  + torch.compile      e  + Triton kernels (SEGADAPT_KERNELS=triton)      f  + DALI loader

A switch accumulates only through rows that ran: a row left out or skipped adds nothing to the rows after it, and
every row records the exact settings it ran with. Rows a and b do the same work (same losses in fp32; tested).

A row runs W warm-up steps (compilation, autotuning, allocator and loader start; never timed), then T timed steps
with the device synchronised only at the two ends of the window and nothing read back inside it. Images/s and
ms/step come from that window; peak device memory is the allocator's peak over it (None on CPU). A separate
profiling pass then runs P more steps with the device synchronised at every phase boundary and reports ms/step per
phase: data (waiting for the loader, host->device copy and normalisation), forward (segmenter), backward
(segmenter losses, the adversarial term's pass through the frozen discriminators included), discriminator
(discriminator forwards and the discriminator losses' backward), optimizer (every `ctx.step`: segmenter and
discriminator optimizers merged) and other (loss math, upsampling, softmax, lr update, scaler update).

Data is synthshift: the recipe's own set when it generates one, else a set generated at the recipe's largest
stream size (the resolution the network trains at), so no dataset is needed. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from segadapt import config as config_module
from segadapt.bench.common import RESULTS_DIR
from segadapt.bench.common import check_counts
from segadapt.bench.common import env_stamp
from segadapt.bench.common import markdown_table
from segadapt.bench.common import write_json
from segadapt.config import Config

CACHE = Path(__file__).resolve().parent.parent / "runs" / "bench-data"
ROWS = ("a", "b", "c", "d", "e", "f")
PHASES = ("data", "forward", "backward", "discriminator", "optimizer", "other")
COLUMNS = ["row", "description", "images_per_s", "ms_per_step", "speedup", "peak_memory_gib"]
COLUMNS += [f"{phase}_ms" for phase in PHASES] + ["skipped"]

# Row letter -> (description, the switches it turns on). "amp" is resolved per device by `amp_precision`.
LADDER: dict[str, tuple[str, dict[str, Any]]] = {
    "a": (
        "official-style: fp32, eager, NCHW, unfused losses, per-step loss reads (AdaptSegNet's official loop has no "
        "numpy one-hots; those are AdvSemiSeg/U2PL, not implemented yet), torch loader",
        {},
    ),
    "b": ("segadapt loop (no per-step host reads) + channels-last", {"channels_last": True, "host_roundtrips": False}),
    "c": ("+ AMP", {"precision": "amp"}),
    "d": ("+ torch.compile", {"compile": "on"}),
    "e": ("+ Triton kernels", {"kernels": "triton"}),
    "f": ("+ DALI loader", {"loader": "dali"}),
}
BASE_SETTINGS = {
    "channels_last": False,
    "precision": "fp32",
    "compile": "off",
    "kernels": "torch",
    "loader": "torch",
    "host_roundtrips": True,
}


# --------------------------------------------------------------------------------------------------- config
def bench_config(recipe: str, overrides: list[str], count: int = 16, cache: Path = CACHE) -> Config:
    """The recipe with `--set` overrides, reading synthshift: its own set, or one generated at its training size.

    Raises:
        ValueError: a stream reads a dataset synthshift cannot stand in for (only gta5 and cityscapes layouts).
    """
    from segadapt.data import SYNTHSHIFT_FORMATS

    cfg = config_module.load(recipe, overrides)
    cfg = config_module.replace(cfg, **{"train.progress": False, "train.tensorboard": False})
    if cfg.data.synthshift.generate:
        return cfg
    names = [name for name in ("source", "target", "labeled", "unlabeled") if getattr(cfg.data, name).dataset]
    sizes = [_stream_size(getattr(cfg.data, name), name) for name in names]
    width, height = max(size[0] for size in sizes), max(size[1] for size in sizes)
    out = cache / f"train-synthshift-{width}x{height}-{count}"
    changes: dict[str, Any] = {"data.synthshift": dataclasses.replace(
        cfg.data.synthshift, generate=True, out=str(out), size=(width, height), count=count, seed=0
    )}  # fmt: skip
    for name in names:
        dataset = getattr(cfg.data, name).dataset
        if dataset not in SYNTHSHIFT_FORMATS:
            raise ValueError(
                f"bench train {recipe}: data.{name}.dataset = {dataset!r} has no synthshift stand-in "
                f"(synthshift writes {', '.join(SYNTHSHIFT_FORMATS)}); point data.{name}.root at real data instead"
            )
        changes[f"data.{name}.root"] = str(out / dataset)
        changes[f"data.{name}.list_file"] = ""
    return config_module.replace(cfg, **changes)


def _stream_size(stream, name: str) -> tuple[int, int]:
    for size in (stream.crop, stream.resize):
        if size[0] > 0 and size[1] > 0:
            return int(size[0]), int(size[1])
    raise ValueError(f"bench train: data.{name} needs a crop or resize size to generate synthshift at")


def amp_precision(device: torch.device) -> str:
    """AMP as the engine picks it on CUDA ("auto": bf16, or fp16 + scaler); bf16 autocast on CPU."""
    return "auto" if device.type == "cuda" else "bf16"


def skip_reason(row: str, device: torch.device) -> str | None:
    """Why a ladder row cannot be measured on this machine, or None."""
    if row == "e" and device.type != "cuda":
        return "no CUDA: Triton runs on CPU only under TRITON_INTERPRET=1, far too slow to benchmark"
    if row == "f":
        from segadapt.data import dali

        if not dali.dali_available():
            return "nvidia.dali does not import"
    return None


def ladder(rows: list[str], device: torch.device, skip: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each requested row's description, the settings it runs with (switches of earlier rows that ran) or skip.

    `skip` maps a row letter to the reason it is reported but not measured (e.g. compile too slow on this CPU).
    """
    settings = dict(BASE_SETTINGS)
    plan = []
    for row in ROWS:
        if row not in rows and row not in (skip or {}):
            continue
        description, switches = LADDER[row]
        reason = (skip or {}).get(row) or skip_reason(row, device)
        if reason is None:
            settings.update(switches)
            if settings["precision"] == "amp":
                settings["precision"] = amp_precision(device)
        plan.append({"row": row, "description": description, "settings": dict(settings), "skipped": reason})
    return plan


def row_config(cfg: Config, settings: dict[str, Any]) -> Config:
    """`cfg` with a row's switches applied (the kernel choice is an environment variable, see `kernel_mode`)."""
    return config_module.replace(
        cfg,
        **{
            "model.channels_last": settings["channels_last"],
            "model.compile": settings["compile"],
            "train.precision": settings["precision"],
            "train.official_host_roundtrips": settings["host_roundtrips"],
            "data.loader": settings["loader"],
        },
    )


@contextlib.contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Set SEGADAPT_KERNELS for the duration (read at call time by kernels/), then restore it."""
    previous = os.environ.get("SEGADAPT_KERNELS")
    os.environ["SEGADAPT_KERNELS"] = mode
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SEGADAPT_KERNELS", None)
        else:
            os.environ["SEGADAPT_KERNELS"] = previous


def build_row(cfg: Config):
    """segadapt.train's Run for a row config (NCHW rows get NCHW images from Streams, as the official loader gives)."""
    from segadapt.train import build_everything

    return build_everything(cfg)


def images_per_step(run) -> int:
    data = run.cfg.data
    return sum(getattr(data, name).batch_size for name in run.method.streams) * run.cfg.train.iter_size


# --------------------------------------------------------------------------------------------------- timing
def device_sync(device: torch.device) -> Callable[[], None]:
    """A no-argument synchronise for `device` (a no-op on CPU, where every op is already synchronous)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_steps(
    step_fn: Callable[[int], Any],
    warmup: int,
    steps: int,
    sync: Callable[[], None],
    window_start: Callable[[], None] | None = None,
) -> tuple[float, Any]:
    """Call `step_fn(i)` for i in 0..warmup+steps-1 and time only the last `steps` calls.

    The device is synchronised once before and once after the timed window; nothing is read inside it.
    `window_start`, if given, runs after the warm-up and before the clock starts (e.g. to reset a memory peak).

    Returns:
        (seconds spent in the timed window, the last call's return value).
    """
    if warmup < 0 or steps < 1:
        raise ValueError(f"time_steps: warmup must be >= 0 and steps >= 1, got warmup={warmup}, steps={steps}")
    for index in range(warmup):
        step_fn(index)
    sync()
    if window_start is not None:
        window_start()
    start = time.perf_counter()
    for index in range(warmup, warmup + steps):
        result = step_fn(index)
    sync()
    return time.perf_counter() - start, result


class PhaseTimer:
    """Wall time per phase, the device synchronised at every phase boundary (profiling pass only)."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def wrap(self, phase: str | Callable[[], str], fn: Callable) -> Callable:
        """`fn` timed into `phase` (a name, or a function choosing the name at call time)."""

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.sync()
            name = phase() if callable(phase) else phase
            self.seconds[name] += time.perf_counter() - start
            return result

        return timed

    def hook(self, module: torch.nn.Module, phase: str) -> list:
        """Forward pre/post hooks timing `module`'s calls into `phase`; returns the handles to remove."""
        starts: list[float] = []

        def before(*_):
            self.sync()
            starts.append(time.perf_counter())

        def after(*_):
            self.sync()
            self.seconds[phase] += time.perf_counter() - starts.pop()

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


@contextlib.contextmanager
def instrumented(run, timer: PhaseTimer) -> Iterator[None]:
    """Route the run's loader, segmenter, discriminators, backward and optimizer steps through `timer`.

    Loader and step-context methods are shadowed by instance attributes and modules get forward hooks, all undone
    afterwards, so the timed pass never sees them. A backward counts as "discriminator" when a discriminator
    parameter requires a gradient (the D losses; the adversarial term runs with the discriminators frozen and
    counts as "backward").
    """
    method, ctx, streams = run.method, run.ctx, run.streams
    discriminators = list(getattr(method, "discriminators", {}).values())
    d_params = [p for module in discriminators for p in module.parameters()]

    def backward_phase() -> str:
        return "discriminator" if any(p.requires_grad for p in d_params) else "backward"

    patches = {
        (streams, "next"): timer.wrap("data", streams.next),
        (ctx, "backward"): timer.wrap(backward_phase, ctx.backward),
        (ctx, "step"): timer.wrap("optimizer", ctx.step),
    }
    saved = {key: vars(key[0]).get(key[1], _MISSING) for key in patches}
    handles = timer.hook(method.net, "forward")
    for module in discriminators:
        handles += timer.hook(module, "discriminator")
    for (target, name), wrapper in patches.items():
        setattr(target, name, wrapper)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for (target, name), value in saved.items():
            if value is _MISSING:
                delattr(target, name)
            else:
                setattr(target, name, value)


_MISSING = object()


def profile_steps(run, first_step: int, steps: int, sync: Callable[[], None]) -> dict[str, float]:
    """Milliseconds per step of each phase over `steps` instrumented steps; "other" is what no phase claimed."""
    from segadapt.train import train_step

    timer = PhaseTimer(sync)
    total = 0.0
    with instrumented(run, timer):
        for index in range(first_step, first_step + steps):
            sync()
            start = time.perf_counter()
            train_step(run, index)
            sync()
            total += time.perf_counter() - start
    claimed = sum(seconds for phase, seconds in timer.seconds.items() if phase != "other")
    timer.seconds["other"] = max(total - claimed, 0.0)
    return {f"{phase}_ms": seconds * 1e3 / steps for phase, seconds in timer.seconds.items()}


# ------------------------------------------------------------------------------------------------------ rows
def measure_row(cfg: Config, plan: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One ladder row: build, W warm-up steps, T timed steps, then the profiling pass; numbers or the skip reason."""
    from segadapt.train import check_finite
    from segadapt.train import train_step

    row = {key: plan[key] for key in ("row", "description", "skipped")} | {"settings": plan["settings"]}
    row.update(dict.fromkeys(COLUMNS[2:-1]))
    if plan["skipped"]:
        return row
    cfg = row_config(cfg, plan["settings"])
    with kernel_mode(plan["settings"]["kernels"]):
        run = build_row(cfg)
        try:
            row.update(_time_run(run, args, train_step, check_finite))
        finally:
            run.streams.close()
            del run
            _release_memory()
    return row


def _time_run(run, args: argparse.Namespace, train_step, check_finite) -> dict[str, Any]:
    sync = device_sync(run.device)
    cuda = run.device.type == "cuda"
    reset_peak = (lambda: torch.cuda.reset_peak_memory_stats(run.device)) if cuda else None
    seconds, losses = time_steps(lambda index: train_step(run, index), args.warmup, args.steps, sync, reset_peak)
    peak = torch.cuda.max_memory_allocated(run.device) / 2**30 if cuda else None
    losses = {name: value for name, value in losses.items() if name.startswith("loss/")}  # not the diag/* curves
    values = check_finite(losses, args.warmup + args.steps)  # note: host sync, after the timed window
    phases = profile_steps(run, args.warmup + args.steps, args.profile_steps, sync)
    images = images_per_step(run)
    return {
        "images_per_s": images * args.steps / seconds,
        "ms_per_step": seconds * 1e3 / args.steps,
        "peak_memory_gib": peak,
        "images_per_step": images,
        "last_losses": values,
        **phases,
    }


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def run_ladder(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the requested rows, print the table, write JSON and markdown; returns the payload."""
    cfg = bench_config(args.recipe, args.set, args.count, args.cache)
    from segadapt.train import resolve_device

    device = resolve_device(cfg.train.device)
    rows = [measure_row(cfg, plan, args) for plan in ladder(args.rows, device, args.skip)]
    base = rows[0]["images_per_s"] if rows and rows[0]["row"] == "a" else None
    for row in rows:
        row["speedup"] = row["images_per_s"] / base if base and row["images_per_s"] else None
    stamp = env_stamp(str(device))
    window = f"warm-up {args.warmup} steps, timed {args.steps} steps, profiled {args.profile_steps} steps"
    payload = {**stamp, "bench": "train", "recipe": args.recipe, "device": str(device), "window": window}
    payload |= {"warmup": args.warmup, "steps": args.steps, "profile_steps": args.profile_steps}
    payload |= {"overrides": list(args.set), "note": args.note, "results": rows}
    table = markdown_table(rows, COLUMNS)
    print(f"{args.recipe} on {stamp['device_name']} ({device}): {window}\n{table}")
    path = Path(args.out) / result_name(args.recipe, stamp)
    write_json(path, payload)
    _write_text(path.with_suffix(".md"), f"# train: {args.recipe} on {stamp['device_name']}\n\n{window}\n\n{table}\n")
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return payload


def result_name(recipe: str, stamp: dict[str, Any]) -> str:
    """`train-<recipe>-<device>-pt<torch>-cu<cuda>-triton<v>-dali<v>-<sha7>.json`; missing versions read "none"."""
    import re

    def slug(value: Any) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", str(value or "none").lower()).strip("-") or "none"

    torch_version = str(stamp["torch"]).split("+")[0]
    parts = [recipe, stamp["device_name"], f"pt{torch_version}", f"cu{slug(stamp['cuda'])}"]
    parts += [f"triton{slug(stamp['triton'])}", f"dali{slug(stamp['dali'])}", slug((stamp["git_sha"] or "none")[:7])]
    return "train-" + "-".join(slug(part) for part in parts) + ".json"


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------------- CLI
def _csv_rows(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = sorted(set(values) - set(ROWS))
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"--rows: unknown {unknown}; expected a comma list of {list(ROWS)}")
    return values


def _skip(text: str) -> tuple[str, str]:
    row, _, reason = text.partition("=")
    if row not in ROWS or not reason:
        raise argparse.ArgumentTypeError(f"--skip: expected ROW=REASON with ROW in {list(ROWS)}, got {text!r}")
    return row, reason


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe name (recipes/NAME.toml) or path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (W)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (T)")
    parser.add_argument("--profile-steps", type=int, default=None, help="steps of the phase profiling pass (default T)")
    parser.add_argument("--rows", type=_csv_rows, default=list(ROWS), help="ladder rows, e.g. a,b,c,f")
    parser.add_argument("--skip", type=_skip, action="append", default=[], metavar="ROW=REASON", help="report unrun")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--count", type=int, default=16, help="synthshift scenes generated when the recipe has none")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where generated synthshift sets are kept")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder (default bench/results)")
    args = parser.parse_args(argv)
    args.skip = dict(args.skip)
    args.profile_steps = args.steps if args.profile_steps is None else args.profile_steps
    check_counts(parser, args, ("steps", "profile_steps", "count"))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_ladder(parse_args(argv))


if __name__ == "__main__":
    main()
