"""`segadapt predict --model CHECKPOINT|MODEL.onnx|MODEL.plan IMAGES... --out DIR`: label maps and overlays.

The three back-ends share one path: read the image (RGB uint8), resize it to the model's input size (bicubic; the
native size when the model takes any size and its config evaluates at native size), normalise it per the model's
input contract (checkpoint config, ONNX metadata_props or the engine's `.meta` sidecar), run the back-end, turn its
output into a label map at input size (bilinear upsampling with the export's align_corners, then argmax, exactly as
`ExportWrapper(output="label")` does), and resize that map back to the image (nearest). So the three give the same
label maps on the same inputs, up to the numerical differences `segadapt export` reports.

Per image, DIR receives `<stem>_trainIds.png` (uint8 trainIds, 255 = ignore) and `<stem>_overlay.png` (the image
blended with the Cityscapes or VOC palette).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from segadapt import checkpoint
from segadapt import export as export_module
from segadapt.config import Data

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
TENSORRT_SUFFIXES = (".plan", ".engine", ".trt")


@dataclass(frozen=True)
class ModelInfo:
    """What predict needs to know about a model file, whatever its kind."""

    kind: str
    """"checkpoint", "onnx" or "tensorrt"."""
    path: Path
    data: Data
    """Input contract: channel_order, mean, std (the other Data fields are unused)."""
    num_classes: int
    output: str
    """Output kind of the back-end: "label", "upsampled" or "logits"."""
    align_corners: bool
    input_size: tuple[int, int]
    """(W, H) images are resized to; (0, 0) keeps each image's size."""
    batch_size: int = 1
    """Batch of a static graph (predict fills it by repeating the image)."""


@dataclass
class Backend:
    """A loaded model: `run((B, 3, H, W) normalised float32) -> raw output` plus its `ModelInfo`."""

    info: ModelInfo
    run: Callable[[Tensor], Tensor]

    def labels(self, batch: Tensor) -> Tensor:
        """(1, 3, H, W) normalised image -> (1, H, W) int64 labels at input size, on the CPU."""
        if self.info.batch_size > 1:
            batch = batch.expand(self.info.batch_size, -1, -1, -1).contiguous()
        with torch.no_grad():
            output = self.run(batch)
        labels = export_module.output_to_labels(output, self.info.output, batch.shape[-2:], self.info.align_corners)
        return labels[:1].long().cpu()


# ----------------------------------------------------------------------------------------------------- loading
def model_kind(path: str | os.PathLike) -> str:
    """ "checkpoint", "onnx" or "tensorrt" from the file name; ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--model {path} does not exist (expected a checkpoint .pt/.pth, an .onnx or a .plan file)")
    suffix = path.suffix.lower()
    for kind, suffixes in (
        ("checkpoint", CHECKPOINT_SUFFIXES),
        ("onnx", ONNX_SUFFIXES),
        ("tensorrt", TENSORRT_SUFFIXES),
    ):
        if suffix in suffixes:
            return kind
    raise ValueError(
        f"--model {path}: unknown model kind {suffix or '(no suffix)'!r}; expected a segadapt checkpoint or official "
        f"snapshot ({', '.join(CHECKPOINT_SUFFIXES)}), an ONNX model (.onnx) or a TensorRT engine "
        f"({', '.join(TENSORRT_SUFFIXES)})"
    )


def open_model(path: str | os.PathLike, recipe: str | None = None, overrides=(), device: str = "auto") -> Backend:
    """Load any of the three kinds of model file.

    Args:
        path: checkpoint / official snapshot, .onnx (exported by `segadapt export`) or .plan (with its .meta).
        recipe: architecture of an official snapshot (checkpoints carry their config).
        overrides: `--set` overrides applied to that config.
        device: where a checkpoint runs: "auto" (CUDA when present), "cpu" or "cuda".
    """
    kind = model_kind(path)
    if kind == "checkpoint":
        return _torch_backend(Path(path), recipe, overrides, device)
    if recipe or overrides:
        raise ValueError(f"--model {path}: --recipe/--set only apply to checkpoints; the {kind} file fixes its config")
    return _onnx_backend(Path(path)) if kind == "onnx" else _tensorrt_backend(Path(path))


def _torch_backend(path: Path, recipe: str | None, overrides, device: str) -> Backend:
    model, cfg = export_module.load_segmenter(path, recipe, overrides)
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))
    wrapper = export_module.ExportWrapper(model, "label", cfg.eval.align_corners).to(target).eval()
    info = ModelInfo(
        kind="checkpoint",
        path=path,
        data=_data(cfg.data.channel_order, cfg.data.mean, cfg.data.std),
        num_classes=cfg.model.num_classes,
        output="label",
        align_corners=cfg.eval.align_corners,
        input_size=tuple(cfg.eval.input_size),
    )
    return Backend(info, lambda batch: wrapper(batch.to(target)))


def _data(channel_order: str, mean, std) -> Data:
    return Data(channel_order=channel_order, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


def info_from_metadata(kind: str, path: Path, meta: dict[str, str], shape: list) -> ModelInfo:
    """ModelInfo from segadapt metadata and the graph's input shape [N, 3, H, W] (strings for dynamic dims)."""
    missing = [
        key for key in ("channel_order", "mean", "std", "num_classes", "output", "align_corners") if key not in meta
    ]
    if missing:
        raise ValueError(
            f"--model {path}: no segadapt metadata ({', '.join(missing)}); export it with `segadapt export`"
        )
    static = all(isinstance(dim, int) for dim in shape)
    if static:
        input_size, batch_size = (int(shape[3]), int(shape[2])), int(shape[0])
    else:
        width, height = (int(v) for v in meta.get("input_size", "0x0").split("x"))
        input_size, batch_size = (width, height), 1
    return ModelInfo(
        kind=kind,
        path=path,
        data=_data(meta["channel_order"], meta["mean"].split(","), meta["std"].split(",")),
        num_classes=int(meta["num_classes"]),
        output=meta["output"],
        align_corners=meta["align_corners"] == "1",
        input_size=input_size,
        batch_size=batch_size,
    )


def _onnx_backend(path: Path) -> Backend:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises several types; re-raised naming the file
        raise ValueError(f"--model {path}: not a valid ONNX model ({type(error).__name__}: {error})") from error
    meta = export_module.read_metadata(model)
    session = export_module.onnxruntime_session(path, with_logits=False)
    info = info_from_metadata("onnx", path, meta, session.get_inputs()[0].shape)
    name = session.get_inputs()[0].name
    return Backend(info, lambda batch: torch.from_numpy(session.run(None, {name: batch.cpu().numpy()})[0]))


def _tensorrt_backend(path: Path) -> Backend:
    meta = export_module.read_plan_meta(path)
    runner = export_module.TensorRTRunner(path)
    shape = list(runner.engine.get_tensor_shape(export_module.INPUT_NAME))
    info = info_from_metadata("tensorrt", path, meta, [dim if dim >= 0 else "dynamic" for dim in shape])
    return Backend(info, lambda batch: runner(batch.cuda()))


# --------------------------------------------------------------------------------------------------- predicting
def label_map(backend: Backend, image: np.ndarray) -> np.ndarray:
    """One image (H, W, 3) uint8 RGB -> (H, W) uint8 trainIds at the image's own size."""
    from segadapt.data.batch import normalize

    height, width = image.shape[:2]
    size = backend.info.input_size if all(backend.info.input_size) else (width, height)
    resized = export_module.resize_image(image, size)
    batch = normalize(torch.from_numpy(np.array(resized))[None], backend.info.data, torch.device("cpu")).contiguous()
    label = backend.labels(batch)[0].to(torch.uint8).numpy()
    if label.shape != (height, width):
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    return label


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5, num_classes: int | None = None) -> np.ndarray:
    """Blend the colourised label over the image; ignore pixels (255) keep the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 trainIds.
        alpha: opacity of the label colours.
        num_classes: picks the palette (19 Cityscapes, 21 VOC).

    Returns:
        (H, W, 3) uint8.
    """
    from segadapt.data.labels import colorize

    colour = colorize(label, num_classes).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colour
    blend = np.where((label == 255)[..., None], image.astype(np.float32), blend)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return checkpoint.atomic_write_bytes(path, lambda handle: handle.write(buffer.getvalue()))


def predict_files(
    backend: Backend, files: list[Path], out_dir: str | os.PathLike, progress: bool = True, alpha: float = 0.5
) -> list[Path]:
    """Write `<stem>_trainIds.png` and `<stem>_overlay.png` per file into `out_dir`; returns the label PNG paths."""
    from tqdm import tqdm

    from segadapt.data.datasets import read_image

    stems = [path.stem for path in files]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f"images share a file name stem, their outputs would collide: {', '.join(duplicates)}")
    out_dir = Path(out_dir)
    written = []
    for path in tqdm(files, desc=f"predict ({backend.info.kind})", unit="image", disable=not progress):
        image = read_image(path)
        label = label_map(backend, image)
        written.append(_write_png(out_dir / f"{path.stem}_trainIds.png", label))
        _write_png(out_dir / f"{path.stem}_overlay.png", overlay(image, label, alpha, backend.info.num_classes))
    return written


def run_predict(args, log=print) -> int:
    """`segadapt predict` (its parser is built in cli.py): open the model, write every image's outputs."""
    backend = open_model(args.model, args.recipe, args.overrides, args.device)
    files = export_module.image_files(args.images)
    written = predict_files(backend, files, args.out, progress=not args.no_progress, alpha=args.alpha)
    log(f"predict: {len(written)} label maps and overlays written to {args.out} ({backend.info.kind} {args.model})")
    return 0
