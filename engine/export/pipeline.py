"""`segadapt export`: every stage in order (`run_export`), each printing one line; its parser is built in cli.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from segadapt.config import Config
from segadapt.export.images import image_files
from segadapt.export.images import parity_images
from segadapt.export.images import prepare_files
from segadapt.export.model import INPUT_NAME
from segadapt.export.model import OUTPUT_KINDS
from segadapt.export.model import ExportWrapper
from segadapt.export.model import export_size
from segadapt.export.model import load_segmenter
from segadapt.export.model import metadata
from segadapt.export.model import output_to_labels
from segadapt.export.onnx import check_onnx
from segadapt.export.onnx import export_onnx
from segadapt.export.parity import compare_onnxruntime
from segadapt.export.parity import onnxruntime_session
from segadapt.export.parity import val_miou_diff
from segadapt.export.tensorrt import TensorRTOptions
from segadapt.export.tensorrt import TensorRTRunner
from segadapt.export.tensorrt import build_tensorrt
from segadapt.export.tensorrt import compare_tensorrt
from segadapt.export.tensorrt import require_tensorrt
from segadapt.export.tensorrt import write_plan_meta


def _tensorrt_options(args, cfg: Config, size: tuple[int, int]) -> TensorRTOptions:
    """Validate the TensorRT flags before any work, so a missing TensorRT or calibration set fails fast."""
    require_tensorrt()
    calib_cache = args.calib_cache or f"{args.tensorrt}.calib"
    calib_images = None
    if args.precision == "int8":
        if not args.calib and not Path(calib_cache).is_file():
            raise ValueError(
                f"--precision int8 needs --calib DIR (images to calibrate on) or an existing {calib_cache}"
            )
        if args.calib:
            calib_images = prepare_files(image_files([args.calib])[:512], cfg, size)
    return TensorRTOptions(
        precision=args.precision,
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache or f"{args.tensorrt}.timing",
        calib_images=calib_images,
        calib_cache=calib_cache,
        max_batch=args.max_batch,
    )


def run_export(args, log=print) -> int:
    """Run every stage in order; each prints one line, the first failure raises naming its stage."""
    model, cfg = load_segmenter(args.checkpoint, args.recipe, args.overrides)
    if cfg.export.output not in OUTPUT_KINDS:
        raise ValueError(f"export.output = {cfg.export.output!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    size, batch_size = export_size(cfg), cfg.eval.batch_size
    trt_options = _tensorrt_options(args, cfg, size) if args.tensorrt else None
    wrapper = ExportWrapper(model, cfg.export.output, cfg.eval.align_corners).eval()
    meta = metadata(cfg, size)
    onnx_path = export_onnx(wrapper, args.onnx, cfg.export, size, batch_size, meta)
    shape = "dynamic" if cfg.export.dynamic else f"static {batch_size}x3x{size[1]}x{size[0]}"
    log(f"onnx export: {onnx_path} (opset {cfg.export.opset}, output {cfg.export.output}, {shape})")
    check_onnx(onnx_path)
    log("onnx checker: full check passed")
    images = parity_images(cfg, size, args.num_images, args.images)
    parity = compare_onnxruntime(onnx_path, wrapper, images, batch_size)
    if args.val:
        session = onnxruntime_session(onnx_path, with_logits=False)
        run = _label_fn(lambda batch: torch.from_numpy(session.run(None, {INPUT_NAME: batch.numpy()})[0]), wrapper)
        static = None if cfg.export.dynamic else size
        parity = dataclasses.replace(
            parity, miou_diff=val_miou_diff(_padded(run, batch_size, static), cfg, wrapper, static)
        )
    log(parity.line())
    if trt_options is None:
        return 0
    output_name = "label" if cfg.export.output == "label" else "logits"
    plan = build_tensorrt(onnx_path, args.tensorrt, trt_options, size, batch_size, cfg.export.dynamic)
    write_plan_meta(plan, meta, output_name)
    log(f"tensorrt build: {plan} ({args.precision}, workspace {args.workspace:g} GiB)")
    parity = compare_tensorrt(plan, wrapper, images, batch_size, args.precision)
    if args.val:
        runner = TensorRTRunner(plan)
        static = None if cfg.export.dynamic else size
        run = _padded(_label_fn(lambda batch: runner(batch.cuda()), wrapper), batch_size, static)
        parity = dataclasses.replace(parity, miou_diff=val_miou_diff(run, cfg, wrapper, static))
    log(parity.line())
    return 0


def _label_fn(run, wrapper: ExportWrapper):
    """`run` (batch -> raw output) composed with `output_to_labels` for the wrapper's output kind."""
    return lambda batch: output_to_labels(run(batch), wrapper.output, batch.shape[-2:], wrapper.align_corners)


def _padded(run, batch_size: int, static: tuple[int, int] | None):
    """A static graph takes exactly `batch_size` images: repeat a single image and keep the first result."""
    if static is None or batch_size == 1:
        return run
    return lambda batch: run(batch.expand(batch_size, -1, -1, -1).contiguous())[:1]
