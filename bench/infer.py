"""Inference latency and throughput of the deployable segmenter (normalised image in, label map out) per back-end.

Providers: `eager-fp32` (PyTorch, NCHW, fp32), `compiled-amp-cl` (PyTorch, channels-last, autocast bf16/fp16 on
CUDA or bf16 on CPU, `torch.compile`), `onnxruntime` (CUDA execution provider when present, else CPU; host<->device
copies of the input and label map are inside the timed call), `tensorrt-fp16` and `tensorrt-int8` (engines built
from the same ONNX file; int8 calibrated on generated synthshift images). Providers that cannot run here (no GPU, no
TensorRT) get a row saying why instead of a time. Default case: the deployment size 1024x512, batch 1, with the
recipe's architecture and random weights (latency does not depend on the values) unless --checkpoint is given.

Window: `--warmup` untimed calls, then `--rep` timed calls (CPU) or a `--rep`x window of `triton.testing.do_bench`
(CUDA). Prints a markdown table and writes JSON to `bench/results/infer-mixed-<layout>-pt<ver>-cu<ver>-<device>.json`.
A benchmark never asserts a time.

    python -m segadapt.bench.infer --device cuda
    python -m segadapt.bench.infer --device cpu --recipe demo --size 256x128 --providers eager-fp32,onnxruntime
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from segadapt import config as config_module
from segadapt import export
from segadapt.bench.common import RESULTS_DIR
from segadapt.bench.common import Case
from segadapt.bench.common import Result
from segadapt.bench.common import env_stamp
from segadapt.bench.common import markdown_table
from segadapt.bench.common import peak_memory
from segadapt.bench.common import result_path
from segadapt.bench.common import time_fn
from segadapt.bench.common import write_json

PROVIDERS = ("eager-fp32", "compiled-amp-cl", "onnxruntime", "tensorrt-fp16", "tensorrt-int8")
COLUMNS = ("case", "provider", "median_ms", "p20_ms", "p80_ms", "images_per_s", "peak_memory_mib", "note")


def build_wrapper(recipe: str, overrides: list[str], checkpoint: str | None):
    """The deployable module (label output) and its config: trained weights from `checkpoint`, else random."""
    if checkpoint:
        model, cfg = export.load_segmenter(checkpoint, None if recipe == "auto" else recipe, overrides)
    else:
        from segadapt.models import build_segmenter

        cfg = config_module.load(export.DEFAULT_RECIPE if recipe == "auto" else recipe, overrides)
        model_cfg = config_module.replace(cfg.model, pretrained="", channels_last=False, compile="off")
        model = build_segmenter(model_cfg).eval()
    return export.ExportWrapper(model, "label", cfg.eval.align_corners).eval(), cfg


def _torch_fn(wrapper, image: torch.Tensor, device: str, compiled: bool) -> Callable[[], object]:
    wrapper = wrapper.to(device)
    if not compiled:
        return torch.no_grad()(lambda: wrapper(image))
    wrapper = wrapper.to(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last)
    on_cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if not on_cuda or torch.cuda.is_bf16_supported() else torch.float16
    compiled_wrapper = torch.compile(wrapper)

    def run():
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype):
            return compiled_wrapper(image)

    return run


def _onnxruntime_fn(onnx_path: Path, image: torch.Tensor) -> tuple[Callable[[], object], str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=providers)
    feed = {export.INPUT_NAME: image.cpu().numpy()}
    return (lambda: session.run(None, feed)), f"onnxruntime {session.get_providers()[0]}"


def _tensorrt_fn(onnx_path: Path, image: torch.Tensor, precision: str, cfg, size, workdir: Path):
    plan = workdir / f"model-{precision}.plan"
    calib = export.parity_images(cfg, size, 16) if precision == "int8" else None
    options = export.TensorRTOptions(
        precision=precision,
        calib_images=calib,
        calib_cache=str(plan) + ".calib",
        timing_cache=str(workdir / "timing.cache"),
    )
    export.build_tensorrt(onnx_path, plan, options, size, image.shape[0], dynamic=False)
    runner = export.TensorRTRunner(plan)
    image = image.cuda()
    return lambda: runner(image)


def unavailable(provider: str, device: str) -> str | None:
    """Why `provider` cannot run on `device`, or None when it can."""
    if provider.startswith("tensorrt"):
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT not installed"
        if not device.startswith("cuda"):
            return "TensorRT needs a CUDA device"
    return None


def setup(provider: str, wrapper, cfg, case: Case, device: str, workdir: Path) -> tuple[Callable[[], object], str]:
    """The timed callable of one provider and a note for the table."""
    size = (case["width"], case["height"])
    image = torch.randn(case["batch"], 3, case["height"], case["width"], device=device) * 50
    if provider in ("eager-fp32", "compiled-amp-cl"):
        return _torch_fn(wrapper, image, device, compiled=provider == "compiled-amp-cl"), ""
    onnx_path = workdir / "model.onnx"
    if not onnx_path.exists():
        static = config_module.Export(opset=17, output="label", dynamic=False)
        export.export_onnx(wrapper.cpu(), onnx_path, static, size, case["batch"], export.metadata(cfg, size))
    if provider == "onnxruntime":
        return _onnxruntime_fn(onnx_path, image)
    return _tensorrt_fn(onnx_path, image, provider.split("-")[1], cfg, size, workdir), ""


def measure(provider: str, wrapper, cfg, case: Case, args, workdir: Path) -> Result:
    reason = unavailable(provider, args.device)
    if reason is not None:
        return Result("infer", case.name, case, provider, "fwd", None, None, None, metrics={"note": reason})
    fn, note = setup(provider, wrapper, cfg, case, args.device, workdir)
    median, p20, p80 = time_fn(fn, warmup=args.warmup, rep=args.rep, device=args.device)
    memory = peak_memory(fn, args.device)
    metrics = {"images_per_s": case["batch"] * 1e3 / median, "note": note}
    return Result("infer", case.name, case, provider, "fwd", median, p20, p80, memory, metrics)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m segadapt.bench.infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--recipe", default="auto", help=f"architecture (default {export.DEFAULT_RECIPE})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint", default=None, help="trained weights (default: random weights)")
    parser.add_argument("--size", default="1024x512", help="WxH of the input (default 1024x512)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma list of " + ", ".join(PROVIDERS))
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--rep", type=int, default=10, help="timed calls (CPU) / window multiple (CUDA)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    unknown = [p for p in args.providers.split(",") if p not in PROVIDERS]
    if unknown:
        parser.error(f"--providers: unknown {', '.join(unknown)}; choose from {', '.join(PROVIDERS)}")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = _parse(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    case = Case(f"{width}x{height}-b{args.batch}", {"width": width, "height": height, "batch": args.batch})
    wrapper, cfg = build_wrapper(args.recipe, args.overrides, args.checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        results = [measure(p, wrapper, cfg, case, args, Path(scratch)) for p in args.providers.split(",")]
    rows = [result.row() for result in results]
    print(f"inference, {cfg.model.name} {cfg.model.backbone}, warm-up {args.warmup} calls, timed {args.rep}")
    print(markdown_table(rows, COLUMNS))
    stamp = env_stamp(args.device)
    path = result_path("infer", "mixed", "nchw-cl", stamp["device_name"], root=args.out)
    payload = {
        **stamp,
        "bench": "infer",
        "recipe": cfg.recipe,
        "model": f"{cfg.model.name}-{cfg.model.backbone}",
        "window": {"warmup": args.warmup, "rep": args.rep},
        "results": rows,
    }
    write_json(path, payload)
    print(f"results written to {path}")
    return path


if __name__ == "__main__":
    main()
