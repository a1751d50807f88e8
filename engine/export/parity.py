"""Stage "onnxruntime parity": onnxruntime (CPU) against PyTorch eager, fp32, on the same images; `compare`, the
comparison every backend's parity stage uses (TensorRT's too), and the val-set mIoU difference of `--val`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from segadapt.config import Config
from segadapt.export.model import INPUT_NAME
from segadapt.export.model import ExportError
from segadapt.export.model import ExportWrapper

MIN_AGREEMENT = 0.999
"""Per-pixel argmax agreement below which an fp32 backend fails the parity stage."""


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


def load_onnx(path: str | os.PathLike):
    """`onnx.load` (external data included) whose failures are one ValueError line naming the file: a missing or
    0-byte file, bytes that are not an ONNX model, external data that onnx refuses (e.g. outside the directory)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not an ONNX model; was its export interrupted?")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf, onnx's ValidationError, OSError: one line naming the file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path}: cannot load the ONNX model: {reason}") from None
    if not model.graph.node:
        raise ValueError(f"{path}: holds no ONNX graph; expected a model written by `segadapt export`")
    return model


def onnxruntime_session(path: str | os.PathLike, with_logits: bool = True):
    """An onnxruntime CPU session; for label graphs the pre-argmax logits are exposed as a second output."""
    import onnx
    import onnxruntime

    model = load_onnx(path)
    argmax = [node for node in model.graph.node if node.op_type == "ArgMax"]
    if with_logits and argmax:
        model.graph.output.append(onnx.ValueInfoProto(name=argmax[-1].input[0]))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's pybind errors: one line naming the file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path}: onnxruntime cannot load the model: {reason}") from None


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
