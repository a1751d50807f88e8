"""The PyTorch input pipeline: the fallback beside DALI, with the same steps in the same order.

Per sample: read -> resize to `stream.resize` (bicubic image, nearest label) -> random scale in `scale_range`
(bilinear image, nearest label) -> random crop (padded at the bottom and right, as AdvSemiSeg pads; the label is
padded with `PAD_LABEL`, which `segadapt.data.batch.to_batch` turns into image 0 after the mean subtraction and label
255: every official loader pads after normalising, so a pad pixel is the mean colour, not black) -> random horizontal
flip. Labels are only ever resampled with nearest neighbour.

All randomness of a sample comes from `numpy.random.Generator(PCG64(rng_seed))`, and `rng_seed` is derived from
(seed, stream name, epoch, position in the epoch's permutation), so a sample looks the same in any process, under
any number of workers and ranks, and after a resume. `StreamLoader` yields endless raw batches of one stream;
`eval_samples` walks a validation split once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset
from torch.utils.data import Sampler

from segadapt.config import Stream
from segadapt.data.datasets import Sample
from segadapt.data.datasets import list_samples
from segadapt.data.datasets import read_image
from segadapt.data.datasets import read_label

IGNORE = 255
PAD_LABEL = 254
"""Raw-label value of a pixel the crop padded (no trainId or ignore id takes it): to_batch sets the normalised image
to 0 there (AdvSemiSeg voc_dataset.py:59-62 and U2PL augmentation.py Crop pad after the mean subtraction) and the
label to 255."""


# --------------------------------------------------------------------------------------------------- transform
def _resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int], image_filter) -> tuple:
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image, label
    image = np.array(Image.fromarray(image).resize(size, image_filter))
    label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
    return image, label


def _pad_crop(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], anchor: tuple[int, int]) -> tuple:
    """Pad bottom/right to at least the crop (image 0, label PAD_LABEL), then cut the window with top-left anchor."""
    crop_w, crop_h = crop
    height, width = label.shape
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=PAD_LABEL)
    x0, y0 = anchor
    return image[y0 : y0 + crop_h, x0 : x0 + crop_w], label[y0 : y0 + crop_h, x0 : x0 + crop_w]


def _enabled(size: tuple[int, int]) -> bool:
    return size[0] > 0 and size[1] > 0


def small_image_resized(stream: Stream, size: tuple[int, int], scaled: tuple[int, int]) -> bool:
    """True when `stream.small_images = "resize"` made the (W, H) `size` into the crop size `scaled`."""
    crop = tuple(stream.crop)
    return stream.small_images == "resize" and _enabled(crop) and tuple(scaled) == crop and tuple(size) != crop


def cv2_nearest_resize(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)` (the official VOCGTDataSet's): output index x reads
    source index min(floor(x * (1 / (out / in))), in - 1) (OpenCV imgproc resize.cpp resizeNN), a gather here.

    Args:
        label: (H, W) ids. size: (W', H').
    """
    height, width = label.shape
    rows = np.minimum(np.floor(np.arange(size[1]) * (1.0 / (size[1] / height))).astype(np.intp), height - 1)
    columns = np.minimum(np.floor(np.arange(size[0]) * (1.0 / (size[0] / width))).astype(np.intp), width - 1)
    return np.ascontiguousarray(label[rows[:, None], columns])


def draw_params(size: tuple[int, int], stream: Stream, rng_seed: int) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """The random parameters of one sample; the torch and DALI pipelines both apply exactly these.

    Four numbers are always drawn from PCG64(rng_seed), in this order, whatever is enabled: scale, crop x
    fraction, crop y fraction, flip coin; so enabling one step never changes another step's parameters.

    Args:
        size: (W, H) of the decoded image.
        stream: the stream's section (resize, scale_range, crop, flip).
        rng_seed: the sample's seed (`sample_seed`).

    Returns:
        scaled (W, H) after resize and random scale; crop anchor (x, y) in the scaled image padded to at least the
        crop (0, 0 without crop); whether to flip.
    """
    rng = np.random.Generator(np.random.PCG64(rng_seed))
    low, high = stream.scale_range
    scale, fx, fy, coin = rng.uniform(low, high), rng.random(), rng.random(), rng.random()
    width, height = tuple(stream.resize) if _enabled(stream.resize) else tuple(size)
    if scale != 1.0:
        width, height = max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
    crop_w, crop_h = stream.crop
    if stream.small_images == "resize" and _enabled(stream.crop) and (width < crop_w or height < crop_h):
        width, height = crop_w, crop_h  # AdvSemiSeg VOCGTDataSet: resized to the crop, never padded
    anchor = (0, 0)
    if _enabled(stream.crop):
        crop_w, crop_h = stream.crop
        anchor = (int(fx * (max(width, crop_w) - crop_w + 1)), int(fy * (max(height, crop_h) - crop_h + 1)))
    return (width, height), anchor, bool(stream.flip and coin < 0.5)


def transform(image: np.ndarray, label: np.ndarray, stream: Stream, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the stream's resize, random scale, random crop and random flip to one sample.

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 trainIds.
        stream: the stream's section (resize, scale_range, crop, flip).
        rng_seed: seed of the sample's PCG64 generator (see `draw_params`).

    Returns:
        image (H', W', 3) uint8 and label (H', W') uint8, contiguous.
    """
    if label.shape != image.shape[:2]:
        raise ValueError(f"label size {label.shape[::-1]} != image size {image.shape[1::-1]} (W, H)")
    scaled, anchor, flip = draw_params((image.shape[1], image.shape[0]), stream, rng_seed)
    if _enabled(stream.resize):
        image, label = _resize(image, label, tuple(stream.resize), Image.BICUBIC)
    if small_image_resized(stream, (label.shape[1], label.shape[0]), scaled):
        image = np.array(Image.fromarray(image).resize(scaled, Image.BILINEAR))
        label = cv2_nearest_resize(label, scaled)
    image, label = _resize(image, label, scaled, Image.BILINEAR)
    if _enabled(stream.crop):
        image, label = _pad_crop(image, label, tuple(stream.crop), anchor)
    if flip:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


# ------------------------------------------------------------------------------------------------ seeds, order
def _stream_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _derive(*values: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (numpy SeedSequence hashing; platform independent)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_seed(seed: int, name: str, epoch: int, position: int) -> int:
    """Augmentation seed of the sample at `position` of `epoch`'s permutation of stream `name`."""
    return _derive(seed, _stream_key(name), epoch, position, 1)


def epoch_permutation(seed: int, name: str, epoch: int, count: int) -> list[int]:
    """Sample indices in the order epoch `epoch` of stream `name` visits them (the same on every rank)."""
    generator = torch.Generator().manual_seed(_derive(seed, _stream_key(name), epoch, 0))
    return torch.randperm(count, generator=generator).tolist()


def batches_per_epoch(count: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches one rank reads per epoch (a partial last batch is dropped)."""
    return len(shard_positions(count, 0, world_size)) // batch_size


def epoch_indices(count: int, seed: int, name: str, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Dataset indices `rank` reads in `epoch`, in order; slot k has augmentation seed
    `sample_seed(seed, name, epoch, shard_positions(count, rank, world_size)[k])`."""
    order = epoch_permutation(seed, name, epoch, count)
    return [order[p] for p in shard_positions(count, rank, world_size)]


def shard_positions(count: int, rank: int, world_size: int) -> range:
    """Positions of an epoch's permutation that `rank` reads: every world_size-th, starting at rank.

    The permutation is cut to a multiple of world_size first, so every rank takes the same number of samples
    (and DDP ranks step in lockstep).
    """
    return range(rank, count - count % world_size, world_size)


class _EndlessBatches(Sampler):
    """Batches of (sample index, augmentation seed) for one rank, epoch after epoch, from a start point."""

    def __init__(self, count: int, batch_size: int, seed: int, name: str, shard: tuple[int, int], start: tuple):
        self.count, self.batch_size, self.seed, self.name = count, batch_size, seed, name
        self.rank, self.world_size = shard
        self.start_epoch, self.start_batch = start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start_epoch, self.start_batch
        positions = shard_positions(self.count, self.rank, self.world_size)
        per_epoch = len(positions) // self.batch_size
        while True:
            order = epoch_permutation(self.seed, self.name, epoch, self.count)
            for batch in range(first, per_epoch):
                chunk = positions[batch * self.batch_size : (batch + 1) * self.batch_size]
                yield [(order[p], sample_seed(self.seed, self.name, epoch, p)) for p in chunk]
            epoch, first = epoch + 1, 0


# ----------------------------------------------------------------------------------------------------- dataset
def read_pair(sample: Sample, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one sample: image (H, W, 3) uint8 RGB and label (H, W) uint8 trainIds of the same size."""
    image = read_image(sample.image)
    label = read_label(sample.label, dataset)
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]} (W x H); they must have the same size"
        )
    return image, label


class _StreamDataset(Dataset):
    def __init__(self, samples: list[Sample], stream: Stream) -> None:
        self.samples, self.stream = samples, stream

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, rng_seed = key
        sample = self.samples[index]
        image, label = transform(*read_pair(sample, self.stream.dataset), self.stream, rng_seed)
        return torch.from_numpy(image), torch.from_numpy(label), str(sample.image)


def _collate(items: list[tuple[torch.Tensor, torch.Tensor, str]]) -> dict[str, torch.Tensor]:
    shapes = {tuple(image.shape) for image, _, _ in items}
    if len(shapes) > 1:
        sizes = ", ".join(f"{path}: {image.shape[1]}x{image.shape[0]}" for image, _, path in items)
        raise ValueError(f"images of one batch differ in size ({sizes}); set the stream's resize or crop")
    return {"image": torch.stack([i for i, _, _ in items]), "label": torch.stack([lb for _, lb, _ in items])}


# ------------------------------------------------------------------------------------------------------ loader
class StreamPosition:
    """(epoch, position) of an endless stream, counting batches the trainer consumed; shared by both loaders.

    Subclasses set `name`, `batches_per_epoch`, `epoch`, `position` and implement `close()` (drop prefetched work).
    """

    name: str
    batches_per_epoch: int
    epoch: int
    position: int

    def _advance(self) -> None:
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved state; batches the loader had prefetched are dropped."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(
                f"data.{self.name} loader state {state!r}: position must be in [0, {self.batches_per_epoch}) "
                "(was the checkpoint written with another batch_size, dataset or world size?)"
            )
        self.close()
        self.epoch, self.position = epoch, position

    def close(self) -> None:
        raise NotImplementedError


def worker_error(error: Exception, where: str) -> Exception:
    """The worker's own one-line message, prefixed with `where`, in place of the DataLoader's re-raise, whose message
    carries the worker's whole traceback ("Caught ValueError in DataLoader worker process 0. Original Traceback")."""
    text = str(error.args[0]) if error.args else ""
    if "DataLoader worker" not in text or "Original Traceback" not in text:
        return error
    name = type(error).__name__
    lines = [line for line in text.splitlines() if line.startswith(f"{name}: ")]
    message = f"{where}: {lines[-1][len(name) + 2 :] if lines else text.splitlines()[0]}"
    try:
        return type(error)(message)
    except Exception:  # noqa: BLE001 - an exception type that wants other arguments
        return RuntimeError(message)


class StreamLoader(StreamPosition):
    """Endless raw batches of one stream, reshuffled every epoch, sharded by rank, resumable.

    Each batch is {"image": (N, H, W, 3) uint8, "label": (N, H, W) uint8} on the CPU (pinned when CUDA is present).
    `state_dict()` counts batches handed to the trainer, not batches the workers prefetched, so `load_state_dict`
    of a saved state continues with exactly the batches an uninterrupted loader would have given next.

    Args:
        stream: the stream's config section.
        name: the stream's name ("source", "target", ...); part of every seed.
        seed: run seed.
        rank, world_size: this process's shard.
        num_workers: worker processes (0 reads in this process).
        prefetch: batches each worker prepares ahead.
    """

    def __init__(self, stream: Stream, name: str, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 2, prefetch: int = 2) -> None:  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if stream.batch_size < 1:
            raise ValueError(f"data.{name}.batch_size = {stream.batch_size}: expected at least 1")
        self.stream, self.name, self.seed = stream, name, seed
        self.shard = (rank, world_size)
        self.num_workers, self.prefetch = num_workers, prefetch
        self.samples = list_samples(stream)
        self.batches_per_epoch = batches_per_epoch(len(self.samples), stream.batch_size, world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data.{name}: {len(self.samples)} samples over {world_size} rank(s) give fewer than batch_size = "
                f"{stream.batch_size} per rank; lower data.{name}.batch_size or add images"
            )
        self.epoch, self.position = 0, 0
        self._iterator: Iterator | None = None
        # The DataLoader draws its workers' base seed when an iterator starts; from the global RNG unless given a
        # generator. A resumed run starts its iterator after restoring the global RNG, so that draw would shift
        # every later global draw (dropout, CutMix, point sampling) against the uninterrupted run.
        self.generator = torch.Generator().manual_seed(_derive(seed, _stream_key(name), rank, 2))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "generator" in state:  # checkpoints written before the loader had its own generator lack it
            self.generator.set_state(state["generator"].cpu())  # the checkpoint may be mapped to a GPU

    def _start(self) -> Iterator:
        sampler = _EndlessBatches(len(self.samples), self.stream.batch_size, self.seed, self.name, self.shard,
                                  (self.epoch, self.position))  # fmt: skip
        workers = self.num_workers > 0
        loader = DataLoader(
            _StreamDataset(self.samples, self.stream),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers,
            prefetch_factor=self.prefetch if workers else None,
            generator=self.generator,
        )
        return iter(loader)

    def __iter__(self) -> StreamLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._iterator = self._start()
        try:
            batch = next(self._iterator)
        except Exception as error:
            raise worker_error(error, f"data.{self.name}") from None
        self._advance()
        return batch

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage collected)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


# -------------------------------------------------------------------------------------------------- evaluation
def eval_samples(stream: Stream, input_size: tuple[int, int], rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, str]]:  # fmt: skip
    """Walk a validation stream once, in sorted order (rank r of W takes images r, r + W, ...).

    Args:
        stream: the val stream's section (its augmentation fields are ignored).
        input_size: (W, H) every image is resized to (bicubic); (0, 0) keeps the native size.
        rank, world_size: this process's share of the images (their confusion matrices are summed over ranks).

    Yields:
        image (1, H, W, 3) uint8, label (1, H', W') int64 at the native resolution, and the sample id.
    """
    samples = list_samples(stream)[rank::world_size]
    for sample in samples:
        image, label = read_pair(sample, stream.dataset)
        if input_size[0] > 0 and input_size[1] > 0 and (image.shape[1], image.shape[0]) != tuple(input_size):
            image = np.array(Image.fromarray(image).resize(tuple(input_size), Image.BICUBIC))
        yield (
            torch.from_numpy(np.ascontiguousarray(image))[None],
            torch.from_numpy(label.astype(np.int64))[None],
            sample.id,
        )
