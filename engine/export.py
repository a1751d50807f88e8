"""Deployment export: checkpoint -> ONNX -> onnx.checker -> onnxruntime parity -> TensorRT engine -> parity.

`segadapt export CHECKPOINT --onnx OUT.onnx [--tensorrt OUT.plan --precision fp32|fp16|int8]` follows timm's
`onnx_export`: eager forward, `torch.onnx.export` of the main head only, `onnx.checker.check_model(full_check=True)`,
then a comparison against PyTorch eager on real synthshift images, then the TensorRT build and the same comparison.
Each stage is a function that raises `ExportError` naming the stage.

Input contract of every exported graph (ONNX and TensorRT): one input `image`, float32 (N, 3, H, W), already
normalised the way the checkpoint was trained: pixels 0..255 in `channel_order` ("bgr" for the Caffe-era DeepLab
weights), minus `mean`, divided by `std`. The graph normalises nothing. Those values, the class count and the output
kind are written into the ONNX `metadata_props` (and a `<plan>.meta` sidecar next to a TensorRT engine) so that
`segadapt predict` and the native runner in deploy/ prepare images the same way.

Output kinds (`export.output`): "label" (default, what a deployment wants: int32 (N, H, W) argmax of the logits
bilinearly upsampled to the input size), "upsampled" (float32 (N, C, H, W) logits at input size) or "logits"
(float32 (N, C, ceil(H/8), ceil(W/8)) stride-8 logits, as the network computes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt import checkpoint
from segadapt import config as config_module
from segadapt.config import Config

OUTPUT_KINDS = ("label", "upsampled", "logits")
DEFAULT_RECIPE = "adaptseg_gta2cs"
MIN_AGREEMENT = 0.999
"""Per-pixel argmax agreement below which an fp32 backend fails the parity stage."""
META_FORMAT = "segadapt-engine-meta-1"
INPUT_NAME = "image"


class ExportError(ValueError):
    """A stage of the export failed; the message starts with the stage's name."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"export stage '{stage}' failed: {message}")
        self.stage = stage


class MissingDependencyError(ValueError):
    """An optional dependency (TensorRT) is absent; the message says how to install it."""


TENSORRT_MISSING = (
    "TensorRT is not installed, so --tensorrt cannot run. It is an optional dependency (not in segadapt's default "
    "install) and needs an NVIDIA GPU with a CUDA 12 driver. Install NVIDIA's Python wheel with "
    "`pip install 'segadapt[tensorrt]'` (or `pip install tensorrt`), or the TensorRT tar/deb package from "
    "https://developer.nvidia.com/tensorrt and its python/*.whl, then re-run this command."
)


# ----------------------------------------------------------------------------------------------------- the module
class ExportWrapper(nn.Module):
    """The main head of a segmenter as a deployable graph: normalised image in, one output tensor out.

    Args:
        segmenter: a module whose forward returns a dict with "main" logits (N, C, h, w) at stride 8.
        output: "label", "upsampled" or "logits" (see the module docstring).
        align_corners: of the bilinear upsampling to input size (the evaluation protocol's setting).
    """

    def __init__(self, segmenter: nn.Module, output: str = "label", align_corners: bool = True):
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise ValueError(f"export.output = {output!r}: expected one of {', '.join(OUTPUT_KINDS)}")
        self.segmenter = segmenter
        self.output = output
        self.align_corners = align_corners

    def logits(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) -> float logits: (N, C, H, W) for "label"/"upsampled", stride 8 for "logits"."""
        main = self.segmenter(image)["main"]
        if self.output == "logits":
            return main
        return F.interpolate(main, size=image.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, image: Tensor) -> Tensor:
        logits = self.logits(image)
        if self.output == "label":
            return logits.argmax(dim=1).to(torch.int32)
        return logits


# ---------------------------------------------------------------------------------------------------- loading
def load_config_and_weights(path: str | os.PathLike, recipe: str | None = None, overrides=()) -> tuple[Config, Any]:
    """Read a model file safely and decide its configuration.

    A segadapt checkpoint carries its config (`ckpt["config"]`); an official snapshot (a bare state_dict) takes the
    architecture from `recipe` (default adaptseg_gta2cs) plus `--set` overrides.

    Returns:
        (config, loaded object).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    state = checkpoint.load(path)
    if isinstance(state, dict) and "models" in state:
        if "config" not in state:
            raise ValueError(f"checkpoint {path} has 'models' but no 'config'; pass an official snapshot instead")
        if recipe:
            raise ValueError(f"checkpoint {path} carries its own config; drop --recipe {recipe} (use --set instead)")
        return config_module.load_dict(state["config"], str(path), list(overrides)), state
    if isinstance(state, dict) and state and all(isinstance(value, Tensor) for value in state.values()):
        return config_module.load(recipe or DEFAULT_RECIPE, list(overrides)), state
    raise ValueError(
        f"model file {path}: expected a segadapt checkpoint (dict with 'models' and 'config') or an official "
        f"snapshot (a state_dict of tensors), got {type(state).__name__}"
    )


def load_segmenter(path: str | os.PathLike, recipe: str | None = None, overrides=()) -> tuple[nn.Module, Config]:
    """Build the segmenter a model file describes, load its weights, and put it in eval mode on the CPU."""
    from segadapt.models import build_segmenter
    from segadapt.models.weights import load_pretrained

    cfg, _ = load_config_and_weights(path, recipe, overrides)
    model_cfg = config_module.replace(cfg.model, pretrained="", channels_last=False, compile="off")
    model = build_segmenter(model_cfg)
    try:
        load_pretrained(model, str(path))
    except ValueError as error:
        hint = f" (architecture from recipe {cfg.recipe!r}: choose it with --recipe NAME and --set model.KEY=VALUE)"
        raise ValueError(f"{error}{hint}") from error
    return model.eval(), cfg


def export_size(cfg: Config) -> tuple[int, int]:
    """(W, H) of the example input: the evaluation size, or the synthshift size when evaluation keeps it native."""
    width, height = cfg.eval.input_size
    if width <= 0 or height <= 0:
        width, height = cfg.data.synthshift.size
    return int(width), int(height)


def metadata(cfg: Config, size: tuple[int, int]) -> dict[str, str]:
    """The input contract and output kind as strings, for ONNX metadata_props and the TensorRT sidecar."""
    data = cfg.data
    input_size = size if not cfg.export.dynamic else tuple(cfg.eval.input_size)
    return {
        "format": META_FORMAT,
        "input": f"{INPUT_NAME}: float32 NCHW, pixels 0..255 in channel_order, minus mean, divided by std",
        "channel_order": data.channel_order,
        "mean": ",".join(repr(float(v)) for v in data.mean),
        "std": ",".join(repr(float(v)) for v in data.std),
        "num_classes": str(cfg.model.num_classes),
        "output": cfg.export.output,
        "align_corners": str(int(cfg.eval.align_corners)),
        "dynamic": str(int(cfg.export.dynamic)),
        "input_size": f"{input_size[0]}x{input_size[1]}",
        "recipe": cfg.recipe,
    }


# ------------------------------------------------------------------------------------------------ stage: export
def export_onnx(
    wrapper: ExportWrapper,
    path: str | os.PathLike,
    export: Any,
    size: tuple[int, int],
    batch_size: int,
    meta: dict[str, str],
) -> Path:
    """Stage "onnx export": trace `wrapper` with the TorchScript exporter and write `path` atomically.

    Args:
        wrapper: the module to export, in eval mode.
        export: the `Export` config section (opset, output, dynamic).
        size: (W, H) of the example input.
        batch_size: N of the example input (the fixed batch of a static graph).
        meta: written into the model's metadata_props.
    """
    import onnx

    stage = "onnx export"
    if export.opset < 17:
        raise ExportError(stage, f"export.opset = {export.opset}: expected >= 17 (LayerNorm-era ops, Resize-13+)")
    width, height = size
    example = torch.zeros(batch_size, 3, height, width)
    output_name = "label" if export.output == "label" else "logits"
    dims = {0: "batch", 1: "height", 2: "width"} if export.output == "label" else {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, output_name: dims} if export.dynamic else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        scratch_file = Path(scratch) / path.name
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice; dynamo=False is chosen
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(scratch_file),
                    opset_version=export.opset,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[output_name],
                    dynamic_axes=dynamic_axes,
                )
            model = onnx.load(str(scratch_file))
        except Exception as error:  # noqa: BLE001 - re-raised with the stage named
            raise ExportError(stage, f"{type(error).__name__}: {error}") from error
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        checkpoint.atomic_write_bytes(path, lambda handle: handle.write(model.SerializeToString()))
    return path


def check_onnx(path: str | os.PathLike) -> None:
    """Stage "onnx checker": `onnx.checker.check_model(full_check=True)` (runs shape inference too)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the stage named
        raise ExportError("onnx checker", f"{path}: {error}") from error


def read_metadata(model: Any) -> dict[str, str]:
    """metadata_props of an onnx.ModelProto as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


# ------------------------------------------------------------------------------------------------ parity images
def parity_images(cfg: Config, size: tuple[int, int], count: int, images_dir: str | None = None) -> Tensor:
    """Real images for the parity stages: files of `images_dir`, else freshly generated synthshift "photo" images.

    Returns:
        (count, 3, H, W) float32, normalised per `cfg.data`, resized to `size` = (W, H).
    """
    from segadapt.data.synthshift import generate

    if images_dir:
        files = image_files([images_dir])[:count]
        return _prepare_files(files, cfg, size)
    with tempfile.TemporaryDirectory() as scratch:
        generate(scratch, seed=cfg.data.synthshift.seed, size=size, count=max(count, 4), formats=("cityscapes",))
        files = sorted(Path(scratch).glob("cityscapes/leftImg8bit/*/*/*.png"))[:count]
        return _prepare_files(files, cfg, size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def image_files(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (sorted, not recursively) in the named directories."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"image input {path} does not exist (expected an image file or a directory of images)")
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return files


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 at `size` = (W', H'), bicubic like the loaders; a no-op at that size."""
    from PIL import Image

    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size), Image.BICUBIC))


def _prepare_files(files: list[Path], cfg: Config, size: tuple[int, int]) -> Tensor:
    from segadapt.data.batch import normalize
    from segadapt.data.datasets import read_image

    images = [resize_image(read_image(path), size) for path in files]
    batch = torch.from_numpy(np.stack(images))
    return normalize(batch, cfg.data, torch.device("cpu")).contiguous()


# ---------------------------------------------------------------------------------------------------- parity
@dataclass(frozen=True)
class Parity:
    """How a backend's outputs compare with PyTorch eager on the same images."""

    backend: str
    max_abs_diff: float | None
    """Largest |logit difference| (onnxruntime: the pre-argmax logits of label graphs; None: labels only)."""
    argmax_agreement: float
    """Fraction of pixels whose argmax label equals PyTorch's."""
    pixels: int
    miou_diff: float | None = None
    """Backend mIoU minus PyTorch mIoU on the val set (points), when one was given."""

    def line(self) -> str:
        diff = "n/a (label output only)" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        text = (
            f"{self.backend}: max |diff| {diff}, argmax agreement "
            f"{100 * self.argmax_agreement:.4f}% over {self.pixels} pixels"
        )
        return text if self.miou_diff is None else f"{text}, mIoU diff {self.miou_diff:+.3f}"


def compare(backend: str, run_backend, wrapper: ExportWrapper, images: Tensor, batch_size: int) -> Parity:
    """Run `run_backend(batch) -> (logits or None, label or None)` and PyTorch eager on `images`, batch by batch.

    Args:
        run_backend: callable on (B, 3, H, W) float32 returning float logits shaped like `wrapper.logits(batch)`
            (None when the backend exposes only labels) and the (B, H, W) label output of label graphs (else None).
        images: (N, 3, H, W) normalised images; N need not be a multiple of `batch_size`.
    """
    max_diff, agree, pixels = None, 0, 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            if batch.shape[0] < batch_size:  # a static graph takes exactly batch_size images
                batch = torch.cat([batch, images[: batch_size - batch.shape[0]]])
            want = wrapper.logits(batch)
            want_label = want.argmax(dim=1)
            got_logits, got_label = run_backend(batch)
            agreement = torch.ones_like(want_label, dtype=torch.bool)
            if got_logits is not None:
                got_logits = got_logits.float().cpu()
                diff = (got_logits - want).abs().max().item()
                max_diff = diff if max_diff is None else max(max_diff, diff)
                agreement &= got_logits.argmax(dim=1) == want_label
            if got_label is not None:
                agreement &= got_label.long().cpu() == want_label
            agree += int(agreement.sum())
            pixels += agreement.numel()
    return Parity(backend, max_diff, agree / max(pixels, 1), pixels)


def require_agreement(stage: str, parity: Parity, minimum: float = MIN_AGREEMENT) -> None:
    if parity.argmax_agreement < minimum:
        raise ExportError(stage, f"{parity.line()}; below the {100 * minimum:.1f}% required in fp32")


def onnxruntime_session(path: str | os.PathLike, with_logits: bool = True):
    """An onnxruntime CPU session; for label graphs the pre-argmax logits are exposed as a second output."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    argmax = [node for node in model.graph.node if node.op_type == "ArgMax"]
    if with_logits and argmax:
        model.graph.output.append(onnx.ValueInfoProto(name=argmax[-1].input[0]))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def compare_onnxruntime(path: str | os.PathLike, wrapper: ExportWrapper, images: Tensor, batch_size: int) -> Parity:
    """Stage "onnxruntime parity": onnxruntime on the CPU against PyTorch eager, fp32."""
    stage = "onnxruntime parity"
    try:
        session = onnxruntime_session(path)
    except Exception as error:  # noqa: BLE001 - re-raised with the stage named
        raise ExportError(stage, f"onnxruntime cannot load {path}: {error}") from error
    names = [output.name for output in session.get_outputs()]

    def run(batch: Tensor) -> tuple[Tensor, Tensor | None]:
        outputs = session.run(names, {INPUT_NAME: batch.numpy()})
        if wrapper.output == "label":
            return torch.from_numpy(outputs[1]), torch.from_numpy(outputs[0])
        return torch.from_numpy(outputs[0]), None

    parity = compare("onnxruntime-cpu", run, wrapper, images, batch_size)
    require_agreement(stage, parity)
    return parity


# ------------------------------------------------------------------------------------------------------ mIoU
def confusion(pred: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) int64 counts of (label, pred) pairs; label 255 is ignored.

    Args:
        pred: (N, H, W) integer predictions.
        label: (N, H, W) integer trainIds.
    """
    valid = label != 255
    index = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(matrix: Tensor) -> float:
    """nanmean IoU in percent (compute_iou.py): classes absent from both labels and predictions are skipped."""
    matrix = matrix.double()
    intersection = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - intersection
    iou = intersection / union
    return float(100 * iou[union > 0].mean()) if bool((union > 0).any()) else float("nan")


def val_miou_diff(predict_label, cfg: Config, wrapper: ExportWrapper, size: tuple[int, int] | None) -> float:
    """mIoU(backend) - mIoU(PyTorch) over `cfg.data.val` (at most `eval.max_images`), both via the same protocol.

    Args:
        predict_label: callable (1, 3, H, W) normalised image -> (1, H, W) integer labels at input size.
        size: (W, H) the static graph needs, or None to use `eval.input_size`.
    """
    from segadapt.data.batch import normalize
    from segadapt.data.torch_loader import eval_samples

    num_classes = cfg.model.num_classes
    ours = torch.zeros(num_classes, num_classes, dtype=torch.long)
    theirs = torch.zeros_like(ours)
    for index, (image, label, _) in enumerate(eval_samples(cfg.data.val, size or tuple(cfg.eval.input_size))):
        if cfg.eval.max_images and index >= cfg.eval.max_images:
            break
        batch = normalize(image, cfg.data, torch.device("cpu")).contiguous()
        with torch.no_grad():
            want = wrapper.logits(batch)
        if want.shape[-2:] != batch.shape[-2:]:
            want = F.interpolate(want, size=batch.shape[-2:], mode="bilinear", align_corners=wrapper.align_corners)
        got = predict_label(batch).long().cpu()
        target_size = label.shape[-2:]
        ours += confusion(_nearest(got, target_size), label, num_classes)
        theirs += confusion(_nearest(want.argmax(dim=1), target_size), label, num_classes)
    return miou(ours) - miou(theirs)


def _nearest(label: Tensor, size) -> Tensor:
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


# -------------------------------------------------------------------------------------------------- TensorRT
def require_tensorrt():
    """The `tensorrt` module, or MissingDependencyError saying how to install it."""
    try:
        import tensorrt
    except ImportError as error:
        raise MissingDependencyError(TENSORRT_MISSING) from error
    if not torch.cuda.is_available():
        raise MissingDependencyError("TensorRT is installed but PyTorch sees no CUDA device; engines need a GPU")
    return tensorrt


def write_plan_meta(plan: str | os.PathLike, meta: dict[str, str], output_name: str) -> Path:
    """`<plan>.meta`: key=value lines (easy to read from C++) with the input contract of the engine."""
    lines = [f"{key}={value}" for key, value in {**meta, "input_name": INPUT_NAME, "output_name": output_name}.items()]
    return checkpoint.atomic_write_text(f"{plan}.meta", "\n".join(lines) + "\n")


def read_plan_meta(plan: str | os.PathLike) -> dict[str, str]:
    """Read the sidecar `write_plan_meta` wrote; ValueError naming it when missing or from another tool."""
    path = Path(f"{plan}.meta")
    if not path.is_file():
        raise ValueError(f"TensorRT engine {plan} has no sidecar {path}; rebuild it with `segadapt export --tensorrt`")
    meta = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: format={meta.get('format')!r}, expected {META_FORMAT!r}")
    return meta


@dataclass(frozen=True)
class TensorRTOptions:
    """How to build an engine (the `--tensorrt` flags)."""

    precision: str = "fp16"
    """"fp32", "fp16" or "int8" (int8 keeps fp16 enabled for layers without int8 kernels)."""
    workspace_gib: float = 4.0
    """Builder workspace (tactic scratch memory) limit."""
    timing_cache: str = ""
    """Timing cache file: read when present, written after the build; speeds up rebuilds."""
    calib_images: Tensor | None = None
    """(N, 3, H, W) normalised images for INT8 entropy calibration (None: rely on the calibration cache)."""
    calib_cache: str = ""
    """Calibration cache file: read when present (no calibration then), written after calibration."""
    max_batch: int = 4
    """Largest batch of the optimisation profile of a dynamic graph."""


def _profile_shapes(size: tuple[int, int], batch_size: int, max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of a dynamic graph: half to double the export size, batch 1 to max_batch."""
    width, height = size
    return (
        (1, 3, max(height // 2, 8), max(width // 2, 8)),
        (batch_size, 3, height, width),
        (max(max_batch, batch_size), 3, height * 2, width * 2),
    )


def _make_calibrator(trt, images: Tensor | None, batch_size: int, cache: Path):
    """An IInt8EntropyCalibrator2 feeding `images` in batches of `batch_size` from CUDA memory."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            count = 0 if images is None else images.shape[0] // batch_size * batch_size
            self.batches = [] if images is None else list(images[:count].split(batch_size))
            self.current = None  # keeps the CUDA batch alive while TensorRT reads it

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if not self.batches:
                return None
            self.current = self.batches.pop(0).cuda().contiguous()
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            checkpoint.atomic_write_bytes(cache, lambda handle: handle.write(bytes(data)))

    return _Calibrator()


def _configure_builder(trt, builder, network, options: TensorRTOptions, shapes, batch_size: int):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    cache_file = Path(options.timing_cache) if options.timing_cache else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = None
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, *shapes)
        config.add_optimization_profile(profile)
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calib_cache = Path(options.calib_cache)
        config.int8_calibrator = _make_calibrator(trt, options.calib_images, batch_size, calib_cache)
        if profile is not None:
            config.set_calibration_profile(profile)
    return config


def build_tensorrt(
    onnx_path: str | os.PathLike,
    plan: str | os.PathLike,
    options: TensorRTOptions,
    size: tuple[int, int],
    batch_size: int,
    dynamic: bool,
) -> Path:
    """Stage "tensorrt build": parse the ONNX file, build a serialized engine and write it atomically.

    Args:
        size: (W, H) the optimisation profile is centred on (the export size).
        batch_size: the profile's optimal batch (and the calibration batch).
        dynamic: whether the graph has dynamic batch/height/width (then an optimisation profile is added).
    """
    stage = "tensorrt build"
    trt = require_tensorrt()
    if options.precision not in ("fp32", "fp16", "int8"):
        raise ExportError(stage, f"--precision {options.precision!r}: expected fp32, fp16 or int8")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # required before TensorRT 10
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise ExportError(stage, f"the ONNX parser rejected {onnx_path}: {errors}")
    shapes = _profile_shapes(size, batch_size, options.max_batch) if dynamic else None
    config = _configure_builder(trt, builder, network, options, shapes, batch_size)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(stage, f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    if options.timing_cache:
        timing = config.get_timing_cache().serialize()
        checkpoint.atomic_write_bytes(options.timing_cache, lambda handle: handle.write(bytes(timing)))
    return checkpoint.atomic_write_bytes(plan, lambda handle: handle.write(bytes(serialized)))


class TensorRTRunner:
    """Runs a serialized engine on CUDA tensors, with PyTorch owning every device buffer.

    Args:
        plan: the .plan file `build_tensorrt` wrote.
    """

    def __init__(self, plan: str | os.PathLike):
        trt = require_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise ValueError(f"{plan}: not a TensorRT engine this TensorRT version and GPU can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        inputs = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME] or len(names) != 2:
            raise ValueError(f"{plan}: expected one input '{INPUT_NAME}' and one output, got tensors {names}")
        self.output_name = next(name for name in names if name != INPUT_NAME)
        self.dtypes = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
        }

    def __call__(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) float32 CUDA tensor -> the engine's output tensor on the same device."""
        image = image.to(device="cuda", dtype=torch.float32).contiguous()  # engines take linear NCHW
        self.context.set_input_shape(INPUT_NAME, tuple(image.shape))
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        dtype = self.dtypes[self.engine.get_tensor_dtype(self.output_name)]
        output = torch.empty(shape, dtype=dtype, device=image.device)
        self.context.set_tensor_address(INPUT_NAME, image.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return output


def compare_tensorrt(plan: Path, wrapper: ExportWrapper, images: Tensor, batch_size: int, precision: str) -> Parity:
    """Stage "tensorrt parity": the engine against PyTorch eager fp32 (CPU); fp32 engines must agree >= 99.9%."""
    runner = TensorRTRunner(plan)

    def run(batch: Tensor) -> tuple[Tensor | None, Tensor | None]:
        output = runner(batch.cuda())
        return (None, output) if wrapper.output == "label" else (output, None)

    parity = compare(f"tensorrt-{precision}", run, wrapper, images, batch_size)
    if precision == "fp32":
        require_agreement("tensorrt parity", parity)
    return parity


# ------------------------------------------------------------------------------------------------------- CLI
def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """`segadapt export CHECKPOINT --onnx OUT.onnx [--tensorrt OUT.plan --precision ...]`."""
    docs = config_module.field_docs()
    fields = "\n".join(
        f"  export.{f.name}: {docs.get(f'Export.{f.name}', '')}" for f in dataclasses.fields(config_module.Export)
    )
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (and a TensorRT engine), checking parity at each stage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config fields (set with --set KEY=VALUE):\n{fields}\n  eval.input_size: export size (W, H)\n"
        "  eval.batch_size: batch of a static graph",
    )
    parser.add_argument("checkpoint", help="segadapt checkpoint (carries its config) or an official snapshot")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    parser.add_argument(
        "--recipe", default=None, help=f"architecture of an official snapshot (default {DEFAULT_RECIPE})"
    )
    from segadapt.cli import add_set_argument

    add_set_argument(parser, "export.dynamic=true")
    parser.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="parity images (default: synthshift 'photo' images generated at the export size)",
    )
    parser.add_argument("--num-images", type=int, default=4, help="how many parity images (default 4)")
    parser.add_argument("--val", action="store_true", help="also report the mIoU difference on the data.val stream")
    parser.add_argument("--tensorrt", default=None, metavar="OUT.plan", help="also build a TensorRT engine")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16", help="engine precision")
    parser.add_argument("--calib", default=None, metavar="DIR", help="images for INT8 entropy calibration")
    parser.add_argument("--calib-cache", default=None, help="INT8 calibration cache (default OUT.plan.calib)")
    parser.add_argument("--timing-cache", default=None, help="TensorRT timing cache (default OUT.plan.timing)")
    parser.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    parser.add_argument("--max-batch", type=int, default=4, help="largest batch of a dynamic engine (default 4)")
    parser.set_defaults(run=run_export)
    return parser


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
            calib_images = _prepare_files(image_files([args.calib])[:512], cfg, size)
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


def output_to_labels(output: Tensor, kind: str, size, align_corners: bool) -> Tensor:
    """A graph's output -> (N, H, W) labels at input `size` (H, W), as `ExportWrapper(output="label")` computes them.

    Args:
        output: (N, H, W) labels, (N, C, H, W) upsampled logits or (N, C, h, w) stride-8 logits, per `kind`.
    """
    if kind == "label":
        return output
    if kind == "logits":
        output = F.interpolate(output.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
    return output.argmax(dim=1)


def _label_fn(run, wrapper: ExportWrapper):
    """`run` (batch -> raw output) composed with `output_to_labels` for the wrapper's output kind."""
    return lambda batch: output_to_labels(run(batch), wrapper.output, batch.shape[-2:], wrapper.align_corners)


def _padded(run, batch_size: int, static: tuple[int, int] | None):
    """A static graph takes exactly `batch_size` images: repeat a single image and keep the first result."""
    if static is None or batch_size == 1:
        return run
    return lambda batch: run(batch.expand(batch_size, -1, -1, -1).contiguous())[:1]
