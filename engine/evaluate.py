"""Evaluation: confusion matrix and mIoU on the device, whole-image and sliding-window inference, result files.

Protocol (METHODS.md A1, A3):

- mIoU is AdaptSegNet's `compute_iou.py` protocol: one (C, C) confusion matrix summed over every validation image
  (rows = ground truth, columns = prediction), IoU = diag / (row + column - diag) per class, and the mean with
  `nanmean`, so a class absent from both the labels and the predictions does not count. Values in results are in
  percent.
- Logits are bilinearly upsampled to the label's native resolution before the argmax; `eval.align_corners` must be
  True to reproduce the official AdaptSegNet numbers on torch >= 0.4 (AdaptSegNet#11: 40.8 vs 42.4).
- `eval.mode = "slide"` is U2PL's `eval.sh` protocol: windows of `eval.crop` every ceil(crop * stride_ratio) pixels,
  the last window of each row and column aligned to the image border, images smaller than a window padded
  symmetrically with 0 (the mean colour after normalisation), logits upsampled to window size and averaged where
  windows overlap, the padding cropped away, then resized to the label size.
- Official protocols, reported beside the standard mIoU (`eval.protocol`, `eval.metric`; the standard figure stays
  the headline `miou`, the official one is `miou_official` with its per-class IoU under `official`):
  - "advsemi_voc", hfslyc/AdvSemiSeg evaluate_voc.py:202-225: the normalised image padded at the bottom and right
    with 0 (the mean colour, VOCDataSet pads after the mean subtraction) to 505x505 (to its own size where larger;
    the official random-crops such an image, VOC has none), the logits upsampled to the padded size with
    align_corners=True, cropped back to the image, argmax.
  - "lsd_cityscapes", swamiviv/LSD-seg code/eval_cityscapes.py:126-131 + transform_label (:69-77): argmax at the
    input size (FCN-8s logits are at the input size; other models' logits are first upsampled there bilinearly),
    then the label map resized to the label size with PIL NEAREST (its 16.16 fixed-point index maps, as a gather).
    The standard protocol upsamples the logits before the argmax: 15% of pixels differ on random logits.
  - `eval.metric = "nonzero_diagonal"` is AdvSemiSeg's `ConfusionMatrix.jaccard` (utils/metric.py:50-57): the mean
    over the classes whose diagonal count is non-zero, so a class present in the labels at IoU 0 leaves the mean
    (3.76 vs 1.25 mIoU on one weak model's predictions). Its result.txt then names the listed IoUs by position
    (`classes[i]` for the i-th *kept* class), so after a dropped class the names are shifted: noted, not reproduced
    (`official.per_class` names each class by its index).
- SYNTHIA: a 19-output model is scored over 16 classes (minus terrain, truck, train) and 13 (minus wall, fence, pole
  too), both as nanmeans over subsets of the same 19 x 19 matrix, so predictions of the left-out classes still count
  as errors. DAFormer/HRDA/MIC instead report mIoU19 * 19 / 16, which equals mIoU16 only when the three left-out
  classes score IoU 0 (lhoyer/DAFormer#18); metrics.json carries this note.

Nothing here reads the device during the image loop except the few predictions saved as PNGs: the confusion matrix
is accumulated on the device and read once at the end.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch import nn

from segadapt.checkpoint import atomic_write_bytes
from segadapt.checkpoint import atomic_write_json
from segadapt.config import Data
from segadapt.config import Eval
from segadapt.data.batch import normalize
from segadapt.data.labels import IGNORE
from segadapt.data.labels import SYNTHIA13
from segadapt.data.labels import SYNTHIA16
from segadapt.data.labels import class_names
from segadapt.data.labels import colorize

SUBSETS: dict[str, tuple[str, ...]] = {"all": (), "synthia16": ("miou16",), "synthia13": ("miou16", "miou13")}
"""`eval.class_subset` -> the extra subset means it adds to the results."""
_SUBSET_CLASSES = {"miou16": SYNTHIA16, "miou13": SYNTHIA13}
SYNTHIA_NOTE = (
    "miou16/miou13 are nanmeans over trainId subsets of the 19x19 confusion matrix of a 19-output model. "
    "DAFormer/HRDA/MIC report mIoU19 * 19/16 instead, which equals miou16 only when terrain, truck and train "
    "score IoU 0 (lhoyer/DAFormer#18)."
)
MODES = ("whole", "slide")
PROTOCOLS = ("standard", "advsemi_voc", "lsd_cityscapes")
METRICS = ("nanmean", "nonzero_diagonal")
ADVSEMI_PAD = (505, 505)
"""(H, W) evaluate_voc.py pads every val image to (VOCDataSet crop_size=(505, 505))."""


# ------------------------------------------------------------------------------------------------------- metrics
def confusion_matrix(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE) -> Tensor:
    """Counts of (ground truth, prediction) pairs, computed on the tensors' device without a host sync.

    Pixels whose label is `ignore_index` or lies outside [0, num_classes) are not counted, and neither are
    predictions outside [0, num_classes) (an argmax never gives one). Rejecting such labels would need a host sync,
    so they are ignored like 255; `engine.data.datasets.check_tree` is where malformed label files are reported.
    The counts go through one `scatter_add_` into C * C + 1 bins, the last one collecting the ignored pixels;
    `torch.bincount` would read its input's maximum back to the host on CUDA.

    Args:
        pred: (N, H, W) integer predictions.
        label: (N, H, W) integer trainIds.
        num_classes: C.
        ignore_index: label value that is not counted.

    Returns:
        (C, C) int64 on the input's device; rows are ground truth, columns predictions.
    """
    if pred.shape != label.shape:
        raise ValueError(f"confusion_matrix: pred {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    if pred.is_floating_point() or label.is_floating_point():
        raise TypeError(f"confusion_matrix: pred and label must be integer tensors, got {pred.dtype}, {label.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}")
    pred, label = pred.long().flatten(), label.long().flatten()
    valid = (label >= 0) & (label < num_classes) & (label != ignore_index) & (pred >= 0) & (pred < num_classes)
    dump = num_classes * num_classes
    index = torch.where(valid, label * num_classes + pred, dump)
    counts = torch.zeros(dump + 1, dtype=torch.int64, device=label.device)
    counts.scatter_add_(0, index, torch.ones(1, dtype=torch.int64, device=label.device).expand_as(index))
    return counts[:dump].reshape(num_classes, num_classes)


def iou(conf: Tensor) -> Tensor:
    """Per-class intersection over union.

    Args:
        conf: (C, C) confusion matrix, rows = ground truth.

    Returns:
        (C,) float64 in [0, 1]; NaN where the class is absent from both ground truth and prediction.
    """
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"iou: conf must be a square (C, C) matrix, got shape {tuple(conf.shape)}")
    conf = conf.double()
    intersection = conf.diagonal()
    return intersection / (conf.sum(0) + conf.sum(1) - intersection)


def mean_iou_nonzero_diagonal(conf: Tensor) -> Tensor:
    """AdvSemiSeg's ConfusionMatrix.jaccard (utils/metric.py:50-57): mean IoU over classes with a non-zero diagonal.

    Args:
        conf: (C, C) confusion matrix, rows = ground truth.

    Returns:
        0-d float64 tensor; NaN when no class has a correct pixel (the official divides by zero there).
    """
    kept = conf.diagonal() != 0
    return iou(conf)[kept].sum() / kept.sum()


def mean_iou(per_class: Tensor, subset: Iterable[int] | None = None) -> Tensor:
    """nanmean of per-class IoU over `subset` (all classes when None), as the official compute_iou.py.

    Args:
        per_class: (C,) IoU from `iou`.
        subset: class indices to average, e.g. `SYNTHIA16`.

    Returns:
        0-d float64 tensor; NaN when every selected class is NaN.
    """
    if subset is not None:
        subset = list(subset)
        if any(i < 0 or i >= per_class.numel() for i in subset):
            raise ValueError(f"mean_iou: subset {subset} has classes outside [0, {per_class.numel()})")
        per_class = per_class[torch.tensor(subset, dtype=torch.long, device=per_class.device)]
    return per_class.nanmean()


# ----------------------------------------------------------------------------------------------------- inference
def predict_whole(model: nn.Module, image: Tensor, label_size: tuple[int, int], align_corners: bool) -> Tensor:
    """Run the model once and upsample its "main" logits to the label size.

    Args:
        model: segmenter returning {"main": (N, C, h, w)}.
        image: (N, 3, H, W) normalised float.
        label_size: (H', W') of the labels.
        align_corners: of the bilinear upsampling.

    Returns:
        (N, C, H', W') float32 logits.
    """
    logits = model(image)["main"].float()
    return F.interpolate(logits, size=tuple(label_size), mode="bilinear", align_corners=align_corners)


def predict_advsemi_voc(model: nn.Module, image: Tensor) -> Tensor:
    """evaluate_voc.py's prediction: pad to 505x505 with 0 (bottom, right), interp align_corners=True, crop, argmax.

    Args:
        model: segmenter returning {"main": (N, C, h, w)}.
        image: (N, 3, H, W) normalised float (0 = the mean colour).

    Returns:
        (N, H, W) int64 labels.
    """
    height, width = image.shape[-2:]
    pad_h, pad_w = max(ADVSEMI_PAD[0] - height, 0), max(ADVSEMI_PAD[1] - width, 0)
    padded = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
    logits = model(padded)["main"].float()
    logits = F.interpolate(logits, size=tuple(padded.shape[-2:]), mode="bilinear", align_corners=True)
    return logits[:, :, :height, :width].argmax(dim=1)


@functools.lru_cache(maxsize=64)
def _pil_nearest_map(size_in: int, size_out: int) -> tuple[int, ...]:
    """Source index of each output index of PIL's NEAREST resize (16.16 fixed point), read off PIL itself."""
    ramp = Image.fromarray(np.arange(size_in, dtype=np.int32)[None, :])
    return tuple(np.asarray(ramp.resize((size_out, 1), Image.NEAREST))[0].tolist())


def predict_lsd_cityscapes(logits: Tensor, input_size: tuple[int, int], label_size: tuple[int, int],
                           align_corners: bool) -> Tensor:  # fmt: skip
    """eval_cityscapes.py's prediction: argmax at the input size, PIL NEAREST to the label size.

    Args:
        logits: (N, C, h, w) model output; bilinearly upsampled to the input size first when h, w differ from it.
        input_size: (H, W) of the network input.
        label_size: (H', W') of the labels.
        align_corners: of that first upsampling (unused for FCN-8s, whose logits are at the input size).

    Returns:
        (N, H', W') int64 labels.
    """
    if tuple(logits.shape[-2:]) != tuple(input_size):
        logits = F.interpolate(logits, size=tuple(input_size), mode="bilinear", align_corners=align_corners)
    pred = logits.argmax(dim=1)
    rows = torch.tensor(_pil_nearest_map(int(input_size[0]), int(label_size[0])), device=pred.device)
    columns = torch.tensor(_pil_nearest_map(int(input_size[1]), int(label_size[1])), device=pred.device)
    return pred[:, rows[:, None], columns[None, :]]


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis: every `stride` pixels, the last one moved back to end at the border."""
    count = math.ceil(max(size - crop, 0) / stride) + 1
    return [min(index * stride + crop, size) - crop for index in range(count)]


def predict_slide(
    model: nn.Module,
    image: Tensor,
    crop: tuple[int, int],
    stride_ratio: float,
    num_classes: int,
    align_corners: bool,
    label_size: tuple[int, int] | None = None,
) -> Tensor:
    """Sliding-window inference (U2PL eval.sh): average of per-window logits, then resized to the label size.

    Args:
        model: segmenter returning {"main": (N, C, h, w)}.
        image: (N, 3, H, W) normalised float.
        crop: (W, H) window size.
        stride_ratio: window stride as a fraction of the window, in (0, 1].
        num_classes: C.
        align_corners: of every bilinear resize (window logits to window size, and to the label size).
        label_size: (H', W') of the labels; None keeps (H, W).

    Returns:
        (N, C, H', W') float32 logits.
    """
    crop_w, crop_h = (int(v) for v in crop)
    if crop_w < 1 or crop_h < 1:
        raise ValueError(f"predict_slide: eval.crop must be a positive (W, H), got {tuple(crop)}")
    if not 0.0 < stride_ratio <= 1.0:
        raise ValueError(f"predict_slide: eval.stride_ratio must be in (0, 1], got {stride_ratio}")
    batch, _, height, width = image.shape
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        image = F.pad(image, (left, pad_w - left, top, pad_h - top), value=0.0)  # 0 = mean colour once normalised
    padded_h, padded_w = image.shape[-2:]
    summed = image.new_zeros((batch, num_classes, padded_h, padded_w), dtype=torch.float32)
    count = image.new_zeros((1, 1, padded_h, padded_w), dtype=torch.float32)
    rows = _window_starts(padded_h, crop_h, math.ceil(crop_h * stride_ratio))
    columns = _window_starts(padded_w, crop_w, math.ceil(crop_w * stride_ratio))
    for row in rows:
        for column in columns:
            window = image[:, :, row : row + crop_h, column : column + crop_w]
            summed[:, :, row : row + crop_h, column : column + crop_w] += predict_whole(
                model, window, (crop_h, crop_w), align_corners
            )
            count[:, :, row : row + crop_h, column : column + crop_w] += 1
    logits = (summed / count)[:, :, top : top + height, left : left + width]
    if label_size is None or tuple(label_size) == (height, width):
        return logits
    return F.interpolate(logits, size=tuple(label_size), mode="bilinear", align_corners=align_corners)


def _predict(model: nn.Module, image: Tensor, eval_cfg: Eval, num_classes: int, label_size) -> tuple:
    """(standard logits (N, C, H', W'), the official protocol's labels (N, H', W') or None)."""
    if eval_cfg.mode == "slide":
        args = (eval_cfg.crop, eval_cfg.stride_ratio, num_classes, eval_cfg.align_corners, label_size)
        return predict_slide(model, image, *args), None
    if eval_cfg.protocol == "lsd_cityscapes":  # one forward serves both protocols
        raw = model(image)["main"].float()
        logits = F.interpolate(raw, size=tuple(label_size), mode="bilinear", align_corners=eval_cfg.align_corners)
        official = predict_lsd_cityscapes(raw, tuple(image.shape[-2:]), tuple(label_size), eval_cfg.align_corners)
        return logits, official
    logits = predict_whole(model, image, label_size, eval_cfg.align_corners)
    if eval_cfg.protocol == "advsemi_voc":
        return logits, predict_advsemi_voc(model, image)
    return logits, None


def _reports_official(eval_cfg: Eval) -> bool:
    return eval_cfg.protocol != "standard" or eval_cfg.metric != "nanmean"


# ------------------------------------------------------------------------------------------------------ evaluate
def _check(eval_cfg: Eval, num_classes: int) -> None:
    if eval_cfg.mode not in MODES:
        raise ValueError(f"eval.mode = {eval_cfg.mode!r}: expected one of {', '.join(MODES)}")
    if eval_cfg.class_subset not in SUBSETS:
        raise ValueError(f"eval.class_subset = {eval_cfg.class_subset!r}: expected one of {', '.join(SUBSETS)}")
    if eval_cfg.class_subset != "all" and num_classes != 19:
        raise ValueError(
            f"eval.class_subset = {eval_cfg.class_subset!r} scores a 19-output model (Cityscapes trainIds); "
            f"model.num_classes is {num_classes}"
        )
    if eval_cfg.batch_size < 1:
        raise ValueError(f"eval.batch_size = {eval_cfg.batch_size}: expected a positive int")
    if eval_cfg.protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol = {eval_cfg.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if eval_cfg.metric not in METRICS:
        raise ValueError(f"eval.metric = {eval_cfg.metric!r}: expected one of {', '.join(METRICS)}")
    if eval_cfg.protocol != "standard" and eval_cfg.mode != "whole":
        raise ValueError(f'eval.protocol = {eval_cfg.protocol!r} is a whole-image protocol; eval.mode must be "whole"')
    if eval_cfg.protocol == "advsemi_voc" and tuple(eval_cfg.input_size) != (0, 0):
        raise ValueError(
            f'eval.protocol = "advsemi_voc" pads native-size images; eval.input_size must be [0, 0], '
            f"got {list(eval_cfg.input_size)}"
        )


def _batches(samples: Iterable, batch_size: int, max_images: int) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
    """Group consecutive (image, label, id) samples of equal image and label size into batches of `batch_size`,
    stopping after `max_images` (0 = all) without reading the sample after the last one."""

    def merge(items: list) -> tuple[Tensor, Tensor, list[str]]:
        return torch.cat([i[0] for i in items]), torch.cat([i[1] for i in items]), [i[2] for i in items]

    pending: list[tuple[Tensor, Tensor, str]] = []
    for index, (image, label, sample_id) in enumerate(samples):
        if pending and (image.shape != pending[0][0].shape or label.shape != pending[0][1].shape):
            yield merge(pending)
            pending = []
        pending.append((image, label, str(sample_id)))
        if len(pending) == batch_size:
            yield merge(pending)
            pending = []
        if max_images and index + 1 >= max_images:
            break
    if pending:
        yield merge(pending)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() for the block, then every submodule back to its own previous mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def evaluate(
    model: nn.Module,
    samples: Iterable[tuple[Tensor, Tensor, str]],
    data_cfg: Data,
    eval_cfg: Eval,
    num_classes: int,
    device: torch.device | str,
    out_dir: str | Path | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict:
    """Score `model` on a validation stream and write metrics.json and a few prediction PNGs.

    Args:
        model: segmenter returning {"main": (N, C, h, w)}.
        samples: (image (1, H, W, 3) uint8, label (1, H', W') int64, id) triples, e.g. `eval_samples(...)`.
        data_cfg: the data section (normalisation).
        eval_cfg: the eval section (mode, sizes, subset, batch size, PNG count, image cap).
        num_classes: C.
        device: where inference runs.
        out_dir: where metrics.json and the PNGs go; None writes nothing.
        autocast: a zero-argument callable returning the context manager the forward runs under (AMP).
        reduce: sums a tensor over processes (`engine.distributed.all_reduce_sum`) when each rank scored a shard.

    Returns:
        {"miou": percent, "per_class": {name: percent or None}, "miou16"/"miou13" (class_subset synthia16/13),
        "confusion": C x C list, "images": count, "mode", "class_subset"}.
    """
    _check(eval_cfg, num_classes)
    device = torch.device(device)
    autocast = autocast or contextlib.nullcontext
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    official_conf = torch.zeros_like(conf) if _reports_official(eval_cfg) else None
    images = 0
    with _eval_mode(model), torch.inference_mode():
        for image, label, ids in _batches(samples, eval_cfg.batch_size, eval_cfg.max_images):
            label_device = label.to(device, non_blocking=True)
            with autocast():
                normalised = normalize(image, data_cfg, device)
                logits, official = _predict(model, normalised, eval_cfg, num_classes, label.shape[-2:])
            pred = logits.argmax(dim=1)
            conf += confusion_matrix(pred, label_device, num_classes)
            if official_conf is not None:
                official_conf += confusion_matrix(pred if official is None else official, label_device, num_classes)
            if out_dir is not None and images < eval_cfg.save_predictions:
                keep = min(eval_cfg.save_predictions - images, len(ids))
                _save_pngs(Path(out_dir), ids[:keep], image[:keep], label[:keep], pred[:keep], num_classes)
            images += len(ids)
    if reduce is not None:
        conf = reduce(conf)
        official_conf = None if official_conf is None else reduce(official_conf)
        images = int(reduce(torch.tensor([images], device=device))[0])  # note: host sync, once per evaluation
    if images == 0:
        raise ValueError("evaluate: the samples yielded no image; check data.val (dataset, root, split, list_file)")
    result = summarize(conf.cpu(), num_classes, eval_cfg.class_subset)  # note: the one host sync of the evaluation
    result.update(images=images, mode=eval_cfg.mode)
    if official_conf is not None:
        result.update(summarize_official(official_conf.cpu(), num_classes, eval_cfg.protocol, eval_cfg.metric))
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "metrics.json", result)
    return result


def summarize(conf: Tensor, num_classes: int, class_subset: str = "all") -> dict:
    """Results dict from a (C, C) confusion matrix: IoU in percent; a per-class NaN (class absent from labels and
    predictions) becomes None so that the JSON stays strict, while the means stay floats (NaN only when no pixel was
    counted at all) so that callers can compare them."""
    per_class = iou(conf)
    names = _class_names(num_classes)
    result = {
        "miou": 100.0 * float(mean_iou(per_class)),
        "per_class": {name: _percent(value) for name, value in zip(names, per_class.tolist(), strict=True)},
        "class_subset": class_subset,
        "confusion": conf.tolist(),
    }
    for key in SUBSETS[class_subset]:
        result[key] = 100.0 * float(mean_iou(per_class, _SUBSET_CLASSES[key]))
    if class_subset != "all":
        result["subset_note"] = SYNTHIA_NOTE
    return result


def summarize_official(conf: Tensor, num_classes: int, protocol: str, metric: str) -> dict:
    """{"miou_official": percent, "official": {protocol, metric, per_class}} for the figure the official
    evaluation script would print (module docstring), reported beside the standard `miou`."""
    per_class = iou(conf)
    mean = mean_iou_nonzero_diagonal(conf) if metric == "nonzero_diagonal" else mean_iou(per_class)
    names = _class_names(num_classes)
    return {
        "miou_official": 100.0 * float(mean),
        "official": {
            "protocol": protocol,
            "metric": metric,
            "per_class": {name: _percent(value) for name, value in zip(names, per_class.tolist(), strict=True)},
        },
    }


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


def _class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes in (19, 21):
        return class_names(num_classes)
    return tuple(f"class_{index}" for index in range(num_classes))


# ------------------------------------------------------------------------------------------------------- outputs
def _save_pngs(out_dir: Path, ids: list[str], image: Tensor, label: Tensor, pred: Tensor, num_classes: int) -> None:
    """Write {id}_image.png, {id}_label.png and {id}_pred.png (colourised, ignore in black) for each image.

    Args:
        image: (N, H, W, 3) uint8 host tensor. label: (N, H', W') host tensor. pred: (N, H', W') any device.
    """
    palette_classes = num_classes if num_classes in (19, 21) else None
    pred = pred.cpu().numpy()  # note: host sync, only for the first `eval.save_predictions` images
    for index, sample_id in enumerate(ids):
        stem = sample_id.replace("/", "_").replace("\\", "_")
        pictures = {
            "image": np.ascontiguousarray(image[index].numpy()),
            "label": colorize(label[index].numpy(), palette_classes),
            "pred": colorize(pred[index], palette_classes),
        }
        for kind, array in pictures.items():
            atomic_write_bytes(
                out_dir / f"{stem}_{kind}.png", lambda handle, a=array: Image.fromarray(a).save(handle, "PNG")
            )


def format_table(results: dict[str, dict], num_classes: int) -> str:
    """Markdown table of per-class IoU (percent), one column per run, with mIoU rows at the bottom.

    Args:
        results: run name -> a result of `evaluate` (at least "per_class" and "miou").
        num_classes: C, for the class order when a result lacks a class.
    """
    runs = list(results)
    names = list(_class_names(num_classes))
    for result in results.values():
        names += [name for name in result.get("per_class", {}) if name not in names]
    lines = ["| class | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(results[r].get("per_class", {}).get(name)) for r in runs) + " |")
    rows = (("miou", "**mIoU**"), ("miou16", "**mIoU16**"), ("miou13", "**mIoU13**"),
            ("miou_official", "**mIoU (official protocol)**"))  # fmt: skip
    for key, title in rows:
        if any(key in result for result in results.values()):
            lines.append(f"| {title} | " + " | ".join(f"**{_cell(results[r].get(key))}**" for r in runs) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
