"""From raw loader batches to the training Batch: normalisation on the device, and the set of streams a method reads.

A raw batch is {"image": (N, H, W, 3) uint8 RGB, "label": (N, H, W) uint8 trainIds} from any backend (torch, DALI,
synthetic). `to_batch` moves it to the device with `non_blocking=True` and normalises there, giving the Batch of
DESIGN.md: image (N, 3, H, W) float32 in channels-last memory (a permute of the NHWC tensor, no layout copy) and
label (N, H, W) int64, 255 = ignore. Nothing here reads a value back to the host.
"""

from __future__ import annotations

import importlib
import zlib

import torch
from torch import Tensor

from segadapt.config import Data
from segadapt.config import Stream
from segadapt.data.torch_loader import IGNORE
from segadapt.data.torch_loader import PAD_LABEL
from segadapt.data.torch_loader import StreamLoader

STREAM_NAMES = ("source", "target", "labeled", "unlabeled", "labeled_real", "val")
LOADERS = ("auto", "dali", "torch", "synthetic")

_STATS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _stats(data: Data, device: torch.device) -> tuple[Tensor, Tensor]:
    """Mean and std as device tensors, built once per (values, device): a host->device copy is not free."""
    key = (tuple(data.mean), tuple(data.std), str(device))
    if key not in _STATS:
        if any(value == 0 for value in data.std):
            raise ValueError(f"data.std = {tuple(data.std)}: every channel's std must be non-zero")
        mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        std = torch.tensor(data.std, dtype=torch.float32, device=device)
        _STATS[key] = (mean, std)
    return _STATS[key]


def normalize(image: Tensor, data: Data, device: torch.device | str) -> Tensor:
    """uint8 RGB pixels -> normalised network input.

    Args:
        image: (N, H, W, 3) uint8 RGB, any device.
        data: the data section (channel_order, mean, std).
        device: where the result lives.

    Returns:
        (N, 3, H, W) float32, channels-last strides, channels in `data.channel_order`, (x - mean) / std.
    """
    if not isinstance(image, Tensor) or image.dtype != torch.uint8:
        raise TypeError(
            f"normalize: image must be a uint8 tensor, got {type(image).__name__} {getattr(image, 'dtype', '')}"
        )
    if image.dim() != 4 or image.shape[-1] != 3:
        raise ValueError(f"normalize: image must be (N, H, W, 3) NHWC, got shape {tuple(image.shape)}")
    if data.channel_order not in ("rgb", "bgr"):
        raise ValueError(f'data.channel_order = {data.channel_order!r}: expected "rgb" or "bgr"')
    device = torch.device(device)
    image = image.to(device, non_blocking=True)
    if data.channel_order == "bgr":
        image = image.flip(-1)  # one uint8 pass; the float conversion below is the only other copy
    mean, std = _stats(data, device)
    return image.to(torch.float32).sub_(mean).div_(std).permute(0, 3, 1, 2)


def to_batch(raw: dict[str, Tensor], data: Data, device: torch.device | str) -> dict[str, Tensor]:
    """A raw loader batch as a training batch on `device`.

    Pixels the crop padded (raw label `PAD_LABEL`) become 0 in the normalised image and 255 in the label: the official
    loaders pad after the mean subtraction (AdvSemiSeg dataset/voc_dataset.py:55-62, U2PL's Crop after Normalize),
    so the network sees the mean colour there, not black minus the mean.

    Args:
        raw: {"image": (N, H, W, 3) uint8, "label": (N, H, W) uint8, PAD_LABEL where padded}.

    Returns:
        {"image": (N, 3, H, W) float32 channels-last, "label": (N, H, W) int64}.
    """
    label = raw["label"].to(device, non_blocking=True).to(torch.int64)
    pad = label == PAD_LABEL
    image = normalize(raw["image"], data, device).masked_fill_(pad[:, None], 0.0)
    return {"image": image, "label": label.masked_fill_(pad, IGNORE)}


# ------------------------------------------------------------------------------------------------- synthetic
def output_size(stream: Stream, name: str) -> tuple[int, int]:
    """(W, H) of a stream's batches when it is fixed by the config: the crop, else the resize."""
    for size in (stream.crop, stream.resize):
        if size[0] > 0 and size[1] > 0:
            return int(size[0]), int(size[1])
    raise ValueError(f"data.{name}: the synthetic loader needs a fixed output size; set data.{name}.crop or resize")


class SyntheticLoader:
    """Random uint8 images and labels of the stream's output size, made once on the device and handed out again.

    For loader benchmarks (DeepLearningExamples' `--data-backend synthetic`): it costs no decoding, so the
    difference to a real backend is the input pipeline's price. Labels hold trainIds 0..18.
    """

    def __init__(self, stream: Stream, name: str, seed: int, device: torch.device | str) -> None:
        width, height = output_size(stream, name)
        generator = torch.Generator(device=device).manual_seed(seed * 1000003 + zlib.crc32(name.encode()))
        shape = (stream.batch_size, height, width)
        image = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, device=device, generator=generator)
        label = torch.randint(0, 19, shape, dtype=torch.uint8, device=device, generator=generator)
        self._batch = {"image": image, "label": label}
        self.position = 0

    def __next__(self) -> dict[str, Tensor]:
        self.position += 1
        return self._batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": 0, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])

    def close(self) -> None:
        """Nothing to stop."""


# --------------------------------------------------------------------------------------------------- streams
def _dali_loader_class():
    """segadapt.data.dali's DaliStreamLoader when DALI imports, else None."""
    try:
        module = importlib.import_module("segadapt.data.dali")
    except ImportError:
        return None
    available = getattr(module, "dali_available", lambda: False)
    return getattr(module, "DaliStreamLoader", None) if available() else None


def resolve_backend(loader: str, device: torch.device) -> str:
    """The backend `data.loader` means: "auto" takes DALI wherever it imports (CPU pipelines without a GPU)."""
    if loader not in LOADERS:
        raise ValueError(f"data.loader = {loader!r}: expected one of {', '.join(map(repr, LOADERS))}")
    if loader == "auto":
        return "dali" if _dali_loader_class() is not None else "torch"
    if loader == "dali" and _dali_loader_class() is None:
        raise ValueError(
            'data.loader = "dali" but nvidia.dali does not import; install the [dali] extra or use "torch"'
        )
    return loader


class Streams:
    """The loaders of the streams a method reads, handing out training batches on the device.

    Args:
        data: the data section.
        names: stream names the method consumes ("source", "target", "labeled", "unlabeled").
        seed: run seed; every stream derives its order and augmentation from it and its name.
        rank, world_size: this process's shard.
        device: where batches are delivered.
    """

    def __init__(self, data: Data, names: list[str], seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", channels_last: bool = True) -> None:  # fmt: skip
        self.data, self.device = data, torch.device(device)
        # An NCHW model must get NCHW images: a channels-last input alone makes convolutions run channels-last.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backend = resolve_backend(data.loader, self.device)
        self.loaders = {name: self._build(name, seed, rank, world_size) for name in names}

    def _build(self, name: str, seed: int, rank: int, world_size: int):
        if name not in STREAM_NAMES:
            raise ValueError(f"stream {name!r} is not a data stream; expected one of {', '.join(STREAM_NAMES)}")
        stream = getattr(self.data, name)
        if not stream.dataset:
            raise ValueError(f'data.{name}.dataset is "" but the method reads the {name} stream; set it in the recipe')
        if self.backend == "synthetic":
            return SyntheticLoader(stream, name, seed + rank, self.device)
        workers, prefetch = self.data.num_workers, self.data.prefetch
        if self.backend == "dali":
            dali_loader = _dali_loader_class()
            return dali_loader(stream, name, seed, rank, world_size, workers, prefetch, device=self.device)
        return StreamLoader(stream, name, seed, rank, world_size, num_workers=workers, prefetch=prefetch)

    def next(self, name: str) -> dict[str, Tensor]:
        """The next batch of stream `name`: image (N, 3, H, W) float32 in `memory_format`, label (N, H, W) int64."""
        batch = to_batch(next(self.loaders[name]), self.data, self.device)
        if self.memory_format is torch.contiguous_format:
            batch["image"] = batch["image"].contiguous()  # the one copy an NCHW (official-style) run pays
        return batch

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {name: loader.state_dict() for name, loader in self.loaders.items()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        missing = [name for name in self.loaders if name not in state]
        if missing:
            raise ValueError(f"loader state has no entry for stream(s) {', '.join(missing)} (has {', '.join(state)})")
        for name, loader in self.loaders.items():
            loader.load_state_dict(state[name])

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()
