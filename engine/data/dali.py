"""DALI input pipelines: the fast twin of `engine/data/torch_loader.py`, with the same steps, order and parameters.

Three `@pipeline_def` graphs cover every input pipeline the recipes use:

* `resize_pipeline`: decode, labels to trainIds, resize to `stream.resize` (AdaptSegNet's GTA5/Cityscapes loaders).
* `augment_pipeline`: the above, then random scale, random crop (image padded with 0, label with
  `torch_loader.PAD_LABEL`, which `to_batch` turns into the mean colour and ignore) and random horizontal flip
  (AdvSemiSeg, U2PL).
* `eval_pipeline`: decode, image resized to the evaluation input size, label kept at native size.

Samples come in through one `fn.external_source` fed by `_Feed`, which walks the torch loader's own per-epoch
permutation and per-sample augmentation seeds, so both loaders read the same samples in the same order and draw the
same random parameters; a resumed run continues where it stopped. The random parameters (scaled size, crop anchor,
flip) enter the graph as per-sample argument inputs shared by image and label, so the augmentation is branchless.

Images decode on the GPU (`mixed`) when one is used and on the CPU otherwise (`device_id=None`, which is how the
tests run). Labels are decoded exactly on the host side of `external_source` by the torch loader's reader without
its lookup table: DALI's image decoder expands palette PNGs (GTA5 labels) to RGB and cannot read SYNTHIA's 16-bit
multi-channel PNGs. The raw ids are resized there too (nearest neighbour only, see below), then mapped to trainIds
inside the pipeline (`fn.lookup_table`), cropped and flipped there with the image's parameters. Outputs leave DALI
through DLPack without a copy: the dynamic executor owns each output buffer for as long as Python holds it, and an
NHWC batch is channels-last once viewed as NCHW.

Parity with the torch loader (tests/engine/data/test_dali.py): labels are identical; images agree within
`IMAGE_MAX_ABS_DIFF` grey levels (mean `IMAGE_MEAN_ABS_DIFF`), the rounding difference between DALI's and PIL's
resampling filters, and are identical when nothing is resized. Labels are identical in every case, augmentation
included: they are resized on the host with PIL's own nearest-neighbour index maps (`_nearest_resize`), because
DALI's float nearest-neighbour rounds the ties of non-integer scales differently from PIL's fixed point.
"""

from __future__ import annotations

import collections
import functools
import io
import warnings
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segadapt.config import Stream
from segadapt.data import torch_loader
from segadapt.data.datasets import list_samples
from segadapt.data.datasets import read_raw_label
from segadapt.data.labels import label_lut

try:
    from nvidia.dali import fn
    from nvidia.dali import pipeline_def
    from nvidia.dali import types

    _IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # pragma: no cover - exercised only where DALI is not installed
    _IMPORT_ERROR = error

    def pipeline_def(function: Any = None, **_: Any) -> Any:
        """Stand-in so this module imports without DALI; building a pipeline raises `_require_dali`'s error."""
        return function if function is not None else (lambda inner: inner)


IMAGE_MAX_ABS_DIFF = 24
"""Bound on |DALI - torch loader| per pixel (0..255) after a resize. PIL resamples in two separable passes with an
8-bit rounding in between, DALI in float; they differ where bicubic rings at hard edges. Measured on synthshift:
at most 21 (bicubic upscaling of the flat-coloured game images), 1 on the photo images. Without a resize the
images are identical."""
IMAGE_MEAN_ABS_DIFF = 0.5
"""Bound on the mean |DALI - torch loader| over a resized batch; measured at most 0.31."""

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


def dali_available() -> bool:
    """True when `nvidia.dali` imports."""
    return _IMPORT_ERROR is None


def _require_dali() -> None:
    if _IMPORT_ERROR is not None:
        raise ValueError(
            f'data.loader = "dali" but nvidia.dali does not import ({_IMPORT_ERROR}); '
            'install the [dali] extra or set data.loader = "torch" or "auto"'
        )


# ------------------------------------------------------------------------------------------------- pipeline steps
def _decode(encoded: Any, decode_device: str) -> Any:
    """Encoded PNG/JPEG bytes -> (H, W, 3) uint8 RGB, on the GPU when `decode_device` is "mixed"."""
    return fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)


def _train_ids(raw_label: Any, lut: np.ndarray, on_gpu: bool) -> Any:
    """(H, W, 1) raw ids (uint8, or uint16 for SYNTHIA) -> (H, W, 1) uint8 trainIds through `lut`."""
    label = raw_label.gpu() if on_gpu else raw_label
    keys = np.flatnonzero(lut != 255)
    return fn.lookup_table(
        label, keys=keys.tolist(), values=lut[keys].tolist(), default_value=255.0, dtype=types.UINT8
    )  # fmt: skip


def _resize_image(image: Any, size_hw: Any, image_filter: Any) -> Any:
    """Resize to `size_hw` (H, W), antialiased like PIL when shrinking."""
    return fn.resize(image, size=size_hw, interp_type=image_filter, antialias=True)


def _fixed_resize(image: Any, resize_wh: Sequence[int]) -> Any:
    """`stream.resize` (W, H), bicubic; a zero component keeps the native size."""
    if not (resize_wh[0] > 0 and resize_wh[1] > 0):
        return image
    return _resize_image(image, [float(resize_wh[1]), float(resize_wh[0])], types.INTERP_CUBIC)


@pipeline_def(enable_conditionals=False)
def resize_pipeline(feed: Any, *, stream: Stream, lut: np.ndarray, decode_device: str) -> tuple[Any, Any]:
    """Resize-only training pipeline (AdaptSegNet's `GTA5DataSet` / `cityscapesDataSet`).

    Args:
        feed: batch callback returning (encoded images, raw labels (H, W, 1)), see `_Feed`.
        stream: the stream's section; only `resize` (W, H) is read.
        lut: raw id -> trainId table, `labels.label_lut(dataset)`.
        decode_device: "mixed" (GPU decode) or "cpu".

    Returns:
        image (N, H, W, 3) uint8 and label (N, H, W, 1) uint8 trainIds.
    """
    encoded, raw_label = fn.external_source(source=feed, num_outputs=2, batch=True, layout=["", "HWC"])
    image = _decode(encoded, decode_device)
    label = _train_ids(raw_label, lut, decode_device == "mixed")
    image = _fixed_resize(image, stream.resize)
    return image, label


@pipeline_def(enable_conditionals=False)
def augment_pipeline(feed: Any, *, stream: Stream, lut: np.ndarray, decode_device: str) -> tuple[Any, Any]:
    """Resize, random scale, random crop, random flip (AdvSemiSeg, U2PL), from `torch_loader.draw_params`.

    Args:
        feed: batch callback returning (encoded images, raw labels (H, W, 1) already at the scaled size, scaled
            size (2,) float32 (H, W),
            crop anchor (2,) int32 (x, y), flip () int32), see `_Feed`.
        stream: the stream's section: resize, scale_range, crop (W, H), flip.
        lut: raw id -> trainId table.
        decode_device: "mixed" or "cpu".

    Returns:
        image (N, H, W, 3) uint8 and label (N, H, W, 1) uint8 trainIds (PAD_LABEL where the crop padded).
    """
    encoded, raw_label, scaled_hw, anchor_xy, flip = fn.external_source(
        source=feed, num_outputs=5, batch=True, layout=["", "HWC", "", "", ""]
    )
    image = _decode(encoded, decode_device)
    label = _train_ids(raw_label, lut, decode_device == "mixed")
    image = _fixed_resize(image, stream.resize)
    if tuple(stream.scale_range) != (1.0, 1.0) or stream.small_images == "resize":
        image = _resize_image(image, scaled_hw, types.INTERP_LINEAR)
    if stream.crop[0] > 0 and stream.crop[1] > 0:
        shape = np.array(stream.crop, dtype=np.int32)
        image = fn.slice(image, anchor_xy, shape, axis_names="WH", out_of_bounds_policy="pad", fill_values=0)
        label = fn.slice(
            label, anchor_xy, shape, axis_names="WH", out_of_bounds_policy="pad", fill_values=torch_loader.PAD_LABEL
        )
    if stream.flip:
        image = fn.flip(image, horizontal=flip)
        label = fn.flip(label, horizontal=flip)
    return image, label


@pipeline_def(enable_conditionals=False)
def eval_pipeline(feed: Any, *, input_size: Sequence[int], lut: np.ndarray, decode_device: str) -> tuple[Any, Any]:
    """Evaluation: the image resized (bicubic) to `input_size` (W, H), the label kept at its native size.

    Returns:
        image (1, h, w, 3) uint8 and label (1, H, W, 1) uint8 trainIds.
    """
    encoded, raw_label = fn.external_source(source=feed, num_outputs=2, batch=True, layout=["", "HWC"])
    image = _decode(encoded, decode_device)
    label = _train_ids(raw_label, lut, decode_device == "mixed")
    if input_size[0] > 0 and input_size[1] > 0:
        size_hw = [float(input_size[1]), float(input_size[0])]
        image = _resize_image(image, size_hw, types.INTERP_CUBIC)
    return image, label


# ------------------------------------------------------------------------------------------------- host side
def _read_encoded(path: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """The file's bytes and its (W, H) from the header; ValueError naming the file if missing or truncated."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error.strerror or error})") from error
    tail = data[-64:]
    if data[:8] == b"\x89PNG\r\n\x1a\n" and not tail.endswith(_PNG_END):
        raise ValueError(f"{path}: truncated PNG (no IEND chunk at the end)")
    if data[:2] == b"\xff\xd8" and _JPEG_END not in tail:
        raise ValueError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        size = Image.open(io.BytesIO(data)).size
    except Exception as error:  # PIL raises several types for garbage; all mean "not an image"
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({error})") from error
    return np.frombuffer(data, dtype=np.uint8), size


@functools.lru_cache(maxsize=256)
def _nearest_map(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index of PIL's nearest-neighbour resize (16.16 fixed point), read off PIL."""
    ramp = Image.fromarray(np.arange(size_in, dtype=np.int32)[None, :])
    return np.asarray(ramp.resize((size_out, 1), Image.NEAREST))[0].astype(np.intp)


def _nearest_resize(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(H, W) raw ids -> (size[1], size[0]) exactly as `torch_loader` resizes labels (PIL NEAREST), as a gather.

    Labels are resized here rather than by DALI's nearest-neighbour resize, whose float coordinates round the
    ties of non-integer scales differently from PIL's fixed-point ones (a few rows and columns per image).
    """
    height, width = label.shape
    if not (size[0] > 0 and size[1] > 0) or (width, height) == tuple(size):
        return label
    return label[_nearest_map(height, size[1])[:, None], _nearest_map(width, size[0])]


def _read_sample(sample: Any, dataset: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Encoded image, raw label ids (H, W) and the image's (W, H); ValueError naming the file on bad input."""
    encoded, size = _read_encoded(sample.image)
    raw = read_raw_label(sample.label, dataset)
    if (raw.shape[1], raw.shape[0]) != size:
        raise ValueError(
            f"{sample.label}: label is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {sample.image} "
            f"is {size[0]}x{size[1]}"
        )
    return encoded, raw, size


def _check_decodable(samples: Sequence[Any]) -> None:
    """Fully decode each image with PIL; the first failure raises ValueError naming the file."""
    for sample in samples:
        try:
            with Image.open(sample.image) as image:
                image.load()
        except Exception as error:
            raise ValueError(f"{sample.image}: corrupt image, decoding failed ({error})") from error


class _Feed:
    """The `external_source` callback: one batch per call, in the torch loader's order, with its random parameters.

    The callback runs ahead of the consumer by the prefetch depth; `pending` keeps the samples of every batch
    produced but not yet consumed, so a decoder error can be traced to a file.
    """

    def __init__(self, samples: Sequence[Any], stream: Stream, order: Any, augment: bool, resize_labels: bool) -> None:
        self.samples, self.stream, self.order = samples, stream, order
        self.augment, self.resize_labels = augment, resize_labels
        self.pending: collections.deque[list[Any]] = collections.deque()

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        indices, seeds = self.order.next_batch()
        chosen = [self.samples[index] for index in indices]
        self.pending.append(chosen)
        columns: list[list[np.ndarray]] = [[], [], [], [], []] if self.augment else [[], []]
        for sample, sample_seed in zip(chosen, seeds, strict=True):
            encoded, raw_label, size = _read_sample(sample, self.stream.dataset)
            columns[0].append(encoded)
            if self.resize_labels:
                raw_label = _nearest_resize(raw_label, self.stream.resize)
            if self.augment:
                scaled_wh, anchor_xy, flip = torch_loader.draw_params(size, self.stream, sample_seed)
                if torch_loader.small_image_resized(self.stream, raw_label.shape[::-1], scaled_wh):
                    raw_label = torch_loader.cv2_nearest_resize(raw_label, scaled_wh)  # VOCGTDataSet's cv2 resize
                else:
                    raw_label = _nearest_resize(raw_label, scaled_wh)
                columns[2].append(np.array([scaled_wh[1], scaled_wh[0]], dtype=np.float32))
                columns[3].append(np.array(anchor_xy, dtype=np.int32))
                columns[4].append(np.array(flip, dtype=np.int32))
            columns[1].append(raw_label[..., None])
        return tuple(columns)


class _Order:
    """Walks (epoch, batch) through the torch loader's permutations: same shards, same per-sample seeds."""

    def __init__(self, count: int, stream: Stream, name: str, seed: int, shard: tuple[int, int]) -> None:
        self.count, self.batch_size, self.name, self.seed = count, stream.batch_size, name, seed
        self.positions = torch_loader.shard_positions(count, *shard)
        self.per_epoch = len(self.positions) // self.batch_size
        self.epoch, self.batch, self._order = 0, 0, None

    def seek(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self._order = epoch, batch, None

    def next_batch(self) -> tuple[list[int], list[int]]:
        """Dataset indices of the next batch and their augmentation seeds; rolls over to a reshuffled epoch."""
        if self.batch >= self.per_epoch:
            self.seek(self.epoch + 1, 0)
        if self._order is None:
            self._order = torch_loader.epoch_permutation(self.seed, self.name, self.epoch, self.count)
        chunk = self.positions[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        self.batch += 1
        seeds = [torch_loader.sample_seed(self.seed, self.name, self.epoch, position) for position in chunk]
        return [self._order[position] for position in chunk], seeds


def _decode_device(device: str | torch.device | None) -> tuple[str, int | None]:
    """("mixed", CUDA index) for a CUDA device, ("cpu", None) for the CPU; None picks CUDA when present."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"DALI loader: device {device} requested but CUDA is not available")
        return "mixed", device.index if device.index is not None else torch.cuda.current_device()
    if device.type != "cpu":
        raise ValueError(f"DALI loader: device must be 'cpu' or 'cuda[:N]', got {device}")
    return "cpu", None


def _to_torch(batch: Any) -> torch.Tensor:
    """A dense DALI batch as a torch tensor on the same device, without a copy (DLPack; the dynamic executor
    keeps the buffer alive for as long as the tensor lives, and on CUDA waits on torch's current stream)."""
    return torch.from_dlpack(batch.as_tensor())


def _is_augmented(stream: Stream) -> bool:
    return tuple(stream.scale_range) != (1.0, 1.0) or tuple(stream.crop) != (0, 0) or stream.flip


def _run(pipe: Any, feed: _Feed) -> tuple[Any, Any]:
    """One `pipe.run()`; a decoder failure becomes a ValueError naming the corrupt file of a pending batch."""
    try:
        return pipe.run()
    except (ValueError, StopIteration):
        raise  # raised by the feed on the host, already naming the file
    except RuntimeError as error:
        pending = [sample for batch in feed.pending for sample in batch]
        _check_decodable(pending)
        names = ", ".join(str(sample.image) for sample in pending)
        raise ValueError(f"DALI pipeline failed on a batch of {names}: {error}") from error


class StreamLoader(torch_loader.StreamPosition):
    """DALI twin of `torch_loader.StreamLoader`: the same constructor, batches, order, state and sharding.

    Each batch is {"image": (N, H, W, 3) uint8, "label": (N, H, W) uint8} on `device` (the GPU when present:
    decoded there, no host copy). `state_dict()` counts batches handed out, not the ones DALI prefetched; a loaded
    state rebuilds the pipeline there, so a resumed run sees exactly the batches an uninterrupted one would.

    Args:
        stream: the stream's config section.
        name: the stream's name ("source", "target", ...); part of every seed.
        seed: run seed.
        rank, world_size: this process's shard (DALI's shard_id / num_shards, applied to the torch permutation).
        num_workers: DALI CPU threads (`data.num_workers`).
        prefetch: DALI prefetch queue depth (`data.prefetch`).
        device: "cuda[:N]" (GPU decode, output on that GPU) or "cpu"; None picks CUDA when present.
    """

    def __init__(
        self,
        stream: Stream,
        name: str,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        prefetch: int = 2,
        device: str | torch.device | None = None,
    ) -> None:
        _require_dali()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if stream.batch_size < 1:
            raise ValueError(f"data.{name}.batch_size = {stream.batch_size}: expected at least 1")
        if num_workers < 0 or prefetch < 0:
            raise ValueError(f"data.num_workers and data.prefetch must be >= 0, got {num_workers}, {prefetch}")
        self.stream, self.name, self.seed = stream, name, seed
        # DALI needs at least one thread and one queued batch; 0 (the torch loader's "in-process") means 1 here.
        self.shard, self.num_workers, self.prefetch = (rank, world_size), max(1, num_workers), max(1, prefetch)
        self.decode_device, self.device_id = _decode_device(device)
        self.samples = list_samples(stream)
        self.batches_per_epoch = torch_loader.batches_per_epoch(len(self.samples), stream.batch_size, world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data.{name}: {len(self.samples)} samples over {world_size} rank(s) give fewer than batch_size = "
                f"{stream.batch_size} per rank; lower data.{name}.batch_size or add images"
            )
        self.epoch, self.position = 0, 0
        self._pipe: Any = None
        self._feed: _Feed | None = None

    def _build(self) -> None:
        order = _Order(len(self.samples), self.stream, self.name, self.seed, self.shard)
        order.seek(self.epoch, self.position)
        augment = _is_augmented(self.stream)
        self._feed = _Feed(self.samples, self.stream, order, augment, resize_labels=True)
        definition = augment_pipeline if augment else resize_pipeline
        self._pipe = definition(
            self._feed, stream=self.stream, lut=label_lut(self.stream.dataset), decode_device=self.decode_device,
            batch_size=self.stream.batch_size, num_threads=self.num_workers, device_id=self.device_id,
            prefetch_queue_depth=self.prefetch, exec_dynamic=True, seed=self.seed,
        )  # fmt: skip
        with warnings.catch_warnings():
            # The feed always sends all five parameter columns; steps the stream disables leave some unused.
            warnings.filterwarnings("ignore", message="The external source node", category=Warning)
            self._pipe.build()

    def __iter__(self) -> StreamLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._pipe is None:
            self._build()
        try:
            image, label = _run(self._pipe, self._feed)
        except BaseException:
            self.close()  # a failed DALI pipeline cannot run again
            raise
        self._feed.pending.popleft()
        self._advance()
        return {"image": _to_torch(image), "label": _to_torch(label)[..., 0]}

    def close(self) -> None:
        """Drop the pipeline (its threads and buffers); the next batch builds a fresh one at the current state."""
        self._pipe, self._feed = None, None


class _Walk:
    """One pass over the samples in sorted order, one per batch; then StopIteration (the end of DALI's epoch)."""

    def __init__(self, count: int) -> None:
        self.count, self.next_index = count, 0

    def next_batch(self) -> tuple[list[int], list[int]]:
        if self.next_index >= self.count:
            raise StopIteration
        self.next_index += 1
        return [self.next_index - 1], [0]


def eval_samples(
    stream: Stream, input_size: tuple[int, int], device: str | torch.device | None = None, prefetch: int = 2
) -> Iterator[tuple[torch.Tensor, torch.Tensor, str]]:
    """DALI twin of `torch_loader.eval_samples`: walk a validation stream once, in sorted order.

    Args:
        stream: the val stream's section (its augmentation fields are ignored).
        input_size: (W, H) every image is resized to (bicubic); (0, 0) keeps the native size.
        device: where images decode and results live; None picks CUDA when present.
        prefetch: DALI prefetch queue depth.

    Yields:
        image (1, H, W, 3) uint8, label (1, H', W') int64 at the native resolution, and the sample id.
    """
    _require_dali()
    decode_device, device_id = _decode_device(device)
    samples = list_samples(stream)
    feed = _Feed(samples, stream, _Walk(len(samples)), augment=False, resize_labels=False)
    pipe = eval_pipeline(
        feed, input_size=tuple(input_size), lut=label_lut(stream.dataset), decode_device=decode_device,
        batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=prefetch, exec_dynamic=True,
    )  # fmt: skip
    pipe.build()
    for _ in samples:
        image, label = _run(pipe, feed)
        (sample,) = feed.pending.popleft()
        yield _to_torch(image), _to_torch(label)[..., 0].long(), sample.id


DaliStreamLoader = StreamLoader
"""The name `segadapt.data.batch.Streams` looks up (`_dali_loader_class`)."""
