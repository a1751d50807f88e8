"""The torch pipeline: aligned augmentation, deterministic and resumable streams, errors from workers, normalisation."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt.config import Data
from segadapt.config import Stream
from segadapt.data import synthshift
from segadapt.data.batch import Streams
from segadapt.data.batch import normalize
from segadapt.data.batch import to_batch
from segadapt.data.datasets import list_samples
from segadapt.data.torch_loader import PAD_LABEL
from segadapt.data.torch_loader import StreamLoader
from segadapt.data.torch_loader import epoch_indices
from segadapt.data.torch_loader import eval_samples
from segadapt.data.torch_loader import read_pair
from segadapt.data.torch_loader import sample_seed
from segadapt.data.torch_loader import transform

AUGMENT = Stream(dataset="gta5", scale_range=(0.6, 1.4), crop=(40, 24), flip=True)


def _blocks(width=96, height=48, block=12):
    """A label of square blocks with ids 0..18 and an image whose every channel is 12 * label: colour encodes class."""
    rows, cols = np.mgrid[0:height, 0:width]
    label = ((rows // block) * 7 + (cols // block) * 3) % 19
    image = np.repeat((label * 12)[..., None], 3, axis=2)
    return image.astype(np.uint8), label.astype(np.uint8)


def _interior(label, radius=2):
    """Pixels whose 5x5 neighbourhood holds one label: a downscaling filter (support up to 1/0.6 input pixels)
    mixes nothing there, so image and label must agree up to rounding."""
    padded = np.pad(label, radius, constant_values=254)  # crop borders: the filter saw pixels outside the crop
    same = np.ones(label.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


@pytest.mark.parametrize("rng_seed", range(6))
def test_transform_keeps_image_and_label_aligned(rng_seed):
    image, label = _blocks()
    out_image, out_label = transform(image, label, AUGMENT, rng_seed)
    assert out_image.shape == (24, 40, 3) and out_label.shape == (24, 40)
    assert set(np.unique(out_label).tolist()) <= set(range(19))  # nearest only: no new ids
    inside = _interior(out_label)
    assert inside.sum() > 100
    error = np.abs(out_image[..., 0].astype(int) - out_label.astype(int) * 12)[inside]
    assert error.max() <= 2


def test_flip_and_determinism():
    image, label = _blocks()
    stream = Stream(dataset="gta5", flip=True)
    outputs = [transform(image, label, stream, seed) for seed in range(8)]
    flipped = [np.array_equal(o[1], label[:, ::-1]) for o in outputs]
    assert any(flipped) and not all(flipped)
    for (out_image, _), was_flipped in zip(outputs, flipped, strict=True):
        np.testing.assert_array_equal(out_image, image[:, ::-1] if was_flipped else image)
    again = transform(image, label, AUGMENT, 5)
    np.testing.assert_array_equal(again[0], transform(image, label, AUGMENT, 5)[0])
    assert not np.array_equal(again[1], transform(image, label, AUGMENT, 6)[1])


def test_crop_marks_the_pad_in_the_raw_label():
    image, label = _blocks(width=20, height=10)
    out_image, out_label = transform(image, label, Stream(dataset="gta5", crop=(32, 16)), 0)
    assert out_label.shape == (16, 32)
    np.testing.assert_array_equal(out_label[:10, :20], label)
    assert (out_label[10:] == PAD_LABEL).all() and (out_label[:, 20:] == PAD_LABEL).all()
    assert PAD_LABEL not in label


def test_pad_is_the_mean_colour_at_the_network_as_the_official_loader_pads():
    """hfslyc/AdvSemiSeg dataset/voc_dataset.py:54-74 (VOCDataSet.__getitem__): image -= IMG_MEAN, then
    cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, BORDER_CONSTANT, value=0) and the label with 255, crop, reverse the
    channels; so a pad pixel is 0 at the network (the mean colour), a real pixel x - mean."""
    image, label = _blocks(width=20, height=10)
    mean = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)  # IMG_MEAN, B G R
    bgr = np.asarray(image[:, :, ::-1], np.float32) - mean
    official = np.zeros((16, 32, 3), np.float32)  # copyMakeBorder to the 32x16 crop, value 0; anchor (0, 0)
    official[:10, :20] = bgr
    official_label = np.full((16, 32), 255, np.uint8)
    official_label[:10, :20] = label
    official = official[:, :, ::-1].transpose(2, 0, 1)  # "change to BGR": RGB
    out_image, out_label = transform(image, label, Stream(dataset="gta5", crop=(32, 16)), 0)
    data = Data(channel_order="rgb", mean=tuple(mean[::-1].tolist()))
    raw = {"image": torch.from_numpy(out_image)[None], "label": torch.from_numpy(out_label)[None]}
    batch = to_batch(raw, data, "cpu")
    assert torch.equal(batch["image"][0], torch.from_numpy(official.copy()))
    assert torch.equal(batch["label"][0], torch.from_numpy(official_label).long())


def test_resize_uses_nearest_for_labels():
    image, label = _blocks(width=64, height=32, block=3)
    out_image, out_label = transform(image, label, Stream(dataset="gta5", resize=(37, 21)), 0)
    assert out_image.shape == (21, 37, 3)
    assert set(np.unique(out_label).tolist()) <= set(np.unique(label).tolist())
    with pytest.raises(ValueError, match="label size"):
        transform(image, label[:-1], AUGMENT, 0)


@pytest.fixture(scope="module")
def gta5_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    synthshift.generate(out, seed=0, size=(48, 24), count=10, formats=("gta5", "cityscapes"))
    return out


def _loader(root, workers=0, **kwargs):
    stream = Stream(dataset="gta5", root=str(root / "gta5"), batch_size=3, scale_range=(0.8, 1.2), crop=(32, 16),
                    flip=True)  # fmt: skip
    return StreamLoader(stream, "source", seed=7, num_workers=workers, **kwargs)


def _take(loader, count):
    return [next(loader) for _ in range(count)]


def _same(first, second):
    return all(
        torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        for a, b in zip(first, second, strict=True)
    )


def test_batches_follow_the_epoch_permutation_and_seeds(gta5_root):
    loader = _loader(gta5_root)
    batch = next(loader)
    assert batch["image"].shape == (3, 16, 32, 3) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (3, 16, 32) and batch["label"].dtype == torch.uint8
    samples = list_samples(loader.stream)
    for slot, index in enumerate(epoch_indices(10, 7, "source", 0)[:3]):
        image, label = transform(*read_pair(samples[index], "gta5"), loader.stream, sample_seed(7, "source", 0, slot))
        np.testing.assert_array_equal(batch["image"][slot].numpy(), image)
        np.testing.assert_array_equal(batch["label"][slot].numpy(), label)


def test_same_seed_same_batches_and_epochs_reshuffle(gta5_root):
    first, second = _take(_loader(gta5_root), 7), _take(_loader(gta5_root, workers=1), 7)
    assert _same(first, second)  # worker processes change nothing
    assert epoch_indices(10, 7, "source", 0) != epoch_indices(10, 7, "source", 1)
    assert sorted(epoch_indices(10, 7, "source", 1)) == list(range(10))
    assert epoch_indices(10, 7, "target", 0) != epoch_indices(10, 7, "source", 0)  # streams are independent


def test_resume_continues_the_same_sequence(gta5_root):
    reference = _take(_loader(gta5_root), 8)
    interrupted = _loader(gta5_root, workers=1)
    _take(interrupted, 4)  # 3 batches per epoch: stops inside epoch 1, with batches prefetched beyond
    state = interrupted.state_dict()
    assert {k: state[k] for k in ("epoch", "position")} == {"epoch": 1, "position": 1}
    assert state["generator"].dtype == torch.uint8  # the loader's own RNG travels with it (issue 19.1)
    interrupted.close()
    resumed = _loader(gta5_root)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 4), reference[4:])
    with pytest.raises(ValueError, match="position must be in"):
        resumed.load_state_dict({"epoch": 0, "position": 3})


def test_ranks_are_disjoint_and_cover_the_epoch():
    shards = [epoch_indices(10, 7, "source", 2, rank=rank, world_size=2) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(10))


def test_worker_errors_name_the_file(gta5_root, tmp_path):
    root = tmp_path / "broken"
    synthshift.generate(root, seed=0, size=(48, 24), count=4, formats=("gta5",))
    for index in range(4):  # every image corrupt, so the first batch hits one whichever the order
        path = root / "gta5" / "images" / f"{index:05d}.png"
        path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"gta5/images/0000\d\.png"):
        next(StreamLoader(Stream(dataset="gta5", root=str(root / "gta5"), batch_size=2), "source", 0, num_workers=1))
    synthshift.generate(root / "sizes", seed=0, size=(48, 24), count=2, formats=("gta5",))
    for index in range(2):
        Image.new("L", (10, 10)).save(root / "sizes" / "gta5" / "labels" / f"{index:05d}.png")
    with pytest.raises(ValueError, match=r"label .*labels/0000\d\.png is 10x10 but image"):
        next(StreamLoader(Stream(dataset="gta5", root=str(root / "sizes" / "gta5")), "source", 0, num_workers=0))


def test_eval_samples_resize_image_keep_label(gta5_root):
    stream = Stream(dataset="cityscapes", root=str(gta5_root / "cityscapes"), split="val")
    items = list(eval_samples(stream, (32, 16)))
    assert [i for _, _, i in items] == ["synth_000003_000000", "synth_000007_000000"]
    image, label, _ = items[0]
    assert image.shape == (1, 16, 32, 3) and image.dtype == torch.uint8
    assert label.shape == (1, 24, 48) and label.dtype == torch.int64
    native, _, _ = next(eval_samples(stream, (0, 0)))
    assert native.shape == (1, 24, 48, 3)


def test_normalize_channels_last_and_values():
    image = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    data = Data(channel_order="bgr", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    out = normalize(image, data, "cpu")
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (
        image.flip(-1).permute(0, 3, 1, 2).float() - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    ) / torch.tensor([2.0, 4.0, 5.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    rgb = normalize(image, dataclasses.replace(data, channel_order="rgb"), "cpu")
    assert rgb[1, 0, 2, 3] == (image[1, 2, 3, 0].float() - 10.0) / 2.0
    batch = to_batch({"image": image, "label": torch.full((2, 5, 7), 255, dtype=torch.uint8)}, data, "cpu")
    assert batch["label"].dtype == torch.int64 and batch["label"].max() == 255
    with pytest.raises(TypeError, match="uint8"):
        normalize(image.float(), data, "cpu")
    with pytest.raises(ValueError, match="channel_order"):
        normalize(image, dataclasses.replace(data, channel_order="yuv"), "cpu")


def test_streams_torch_synthetic_and_errors(gta5_root):
    source = Stream(dataset="gta5", root=str(gta5_root / "gta5"), batch_size=2, crop=(32, 16))
    data = Data(loader="torch", num_workers=0, source=source)
    streams = Streams(data, ["source"], seed=1)
    batch = streams.next("source")
    assert batch["image"].shape == (2, 3, 16, 32) and batch["image"].is_contiguous(memory_format=torch.channels_last)
    state = streams.state_dict()
    assert list(state) == ["source"] and {k: state["source"][k] for k in ("epoch", "position")} == {
        "epoch": 0,
        "position": 1,
    }
    with pytest.raises(ValueError, match=r"data\.target\.dataset"):
        Streams(data, ["source", "target"], seed=1)
    synthetic = Streams(dataclasses.replace(data, loader="synthetic"), ["source"], seed=1)
    fake = synthetic.next("source")
    assert fake["image"].shape == (2, 3, 16, 32) and fake["label"].dtype == torch.int64 and fake["label"].max() < 19
    with pytest.raises(ValueError, match="data.loader"):
        Streams(dataclasses.replace(data, loader="fast"), ["source"], seed=1)


def _opencv_nearest(label, size):
    """OpenCV imgproc/src/resize.cpp resizeNN, as cv2.resize(label, size, interpolation=cv2.INTER_NEAREST) runs it:
    ifx = 1 / (dst_w / src_w), sx = min(cvFloor(x * ifx), src_w - 1), and the same for rows."""
    out = np.zeros((size[1], size[0]), label.dtype)
    ifx, ify = 1.0 / (size[0] / label.shape[1]), 1.0 / (size[1] / label.shape[0])
    for y in range(size[1]):
        for x in range(size[0]):
            sy, sx = min(math.floor(y * ify), label.shape[0] - 1), min(math.floor(x * ifx), label.shape[1] - 1)
            out[y, x] = label[sy, sx]
    return out


@pytest.mark.parametrize(("width", "height"), [(20, 10), (40, 10), (20, 30)])
def test_small_images_resize_is_the_official_vocgtdataset(width, height):
    """hfslyc/AdvSemiSeg dataset/voc_dataset.py:116-139 (VOCGTDataSet, scale off): an image smaller than the crop in
    either side is never padded but cv2.resize'd to the crop (label INTER_NEAREST), then cropped at offset 0."""
    image, label = _blocks(width=width, height=height, block=3)
    stream = Stream(dataset="gta5", crop=(32, 16), small_images="resize")
    out_image, out_label = transform(image, label, stream, 0)
    np.testing.assert_array_equal(out_label, _opencv_nearest(label, (32, 16)))
    assert out_image.shape == (16, 32, 3) and PAD_LABEL not in out_label


def test_small_images_resize_leaves_larger_images_to_the_crop():
    image, label = _blocks(width=50, height=30, block=3)
    for seed in range(4):
        resized = transform(image, label, Stream(dataset="gta5", crop=(32, 16), small_images="resize"), seed)
        padded = transform(image, label, Stream(dataset="gta5", crop=(32, 16)), seed)
        np.testing.assert_array_equal(resized[1], padded[1])
        np.testing.assert_array_equal(resized[0], padded[0])
