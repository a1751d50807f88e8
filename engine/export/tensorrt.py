"""Stages "tensorrt build" (ONNX parser, builder config, optimisation profile, INT8 entropy calibration, timing
cache) and "tensorrt parity"; `TensorRTRunner` runs an engine on CUDA tensors; the `<plan>.meta` sidecar carries the
input contract. TensorRT is optional: `require_tensorrt` says how to install it.

This module is `segadapt.export.tensorrt`; `import tensorrt` inside it is NVIDIA's library (imports are absolute)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from segadapt import checkpoint
from segadapt.export.model import INPUT_NAME
from segadapt.export.model import META_FORMAT
from segadapt.export.model import ExportError
from segadapt.export.model import ExportWrapper
from segadapt.export.parity import Parity
from segadapt.export.parity import compare
from segadapt.export.parity import require_agreement


class MissingDependencyError(ValueError):
    """An optional dependency (TensorRT) is absent; the message says how to install it."""


TENSORRT_MISSING = (
    "TensorRT is not installed, so --tensorrt cannot run. It is an optional dependency (not in segadapt's default "
    "install) and needs an NVIDIA GPU with a CUDA 12 driver. Install NVIDIA's Python wheel with "
    "`pip install 'segadapt[tensorrt]'` (or `pip install tensorrt`), or the TensorRT tar/deb package from "
    "https://developer.nvidia.com/tensorrt and its python/*.whl, then re-run this command."
)


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
