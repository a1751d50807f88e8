"""DALI CPU pipelines against the torch loader: same samples, same order, same parameters, clear errors.

Every test runs DALI with `device_id=None` (CPU pipelines), as CI has no GPU. Parity bounds are the module's
IMAGE_MAX_ABS_DIFF / IMAGE_MEAN_ABS_DIFF; labels must be identical wherever nothing is rescaled at random.
"""

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from segadapt.config import Data  # noqa: E402
from segadapt.config import Stream  # noqa: E402
from segadapt.data import dali  # noqa: E402
from segadapt.data import synthshift  # noqa: E402
from segadapt.data import torch_loader  # noqa: E402
from segadapt.data.torch_loader import PAD_LABEL  # noqa: E402

FORMATS = ("gta5", "cityscapes", "synthia", "voc")
NATIVE = (64, 36)  # (W, H); odd-ish sizes so every resize is non-integer


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A tiny synthshift set in every published layout: 8 scenes per domain at 64x36."""
    out = tmp_path_factory.mktemp("synthshift")
    synthshift.generate(out, seed=0, size=NATIVE, count=8, formats=FORMATS)
    return out


def _stream(tree, dataset, **fields):
    return Stream(dataset=dataset, root=str(tree / dataset), batch_size=2, **fields)


def _pairs(stream, count, **loader_args):
    """`count` batches from the torch loader and the DALI CPU loader built with the same arguments."""
    reference = torch_loader.StreamLoader(stream, "source", 7, num_workers=0, **loader_args)
    candidate = dali.StreamLoader(stream, "source", 7, num_workers=1, device="cpu", **loader_args)
    return [(next(reference), next(candidate)) for _ in range(count)]


def _assert_images_close(want, got, where):
    diff = (want.int() - got.int()).abs()
    assert diff.max() <= dali.IMAGE_MAX_ABS_DIFF, f"[{where}] max |diff| {diff.max()} > {dali.IMAGE_MAX_ABS_DIFF}"
    assert diff.float().mean() <= dali.IMAGE_MEAN_ABS_DIFF, f"[{where}] mean |diff| {diff.float().mean():.3f}"


# ------------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("dataset", FORMATS)
def test_resize_only_parity(tree, dataset):
    """AdaptSegNet's pipeline: labels identical, images within the resampling bound, same shapes and dtypes."""
    stream = _stream(tree, dataset, resize=(40, 22))
    for step, (want, got) in enumerate(_pairs(stream, 5)):  # 5 batches cross an epoch (4 per epoch)
        assert got["image"].shape == (2, 22, 40, 3) and got["image"].dtype == torch.uint8
        assert got["label"].shape == (2, 22, 40) and got["label"].dtype == torch.uint8
        assert torch.equal(got["label"], want["label"]), f"[step {step}] labels differ"
        _assert_images_close(want["image"], got["image"], f"{dataset} step {step}")


@pytest.mark.parametrize("dataset", ["gta5", "synthia"])
def test_native_size_is_bit_exact(tree, dataset):
    """No resize: decode + lookup table only, so images and labels (incl. SYNTHIA's 16-bit ids) are identical."""
    for want, got in _pairs(_stream(tree, dataset), 2):
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
    assert set(got["label"].unique().tolist()) - {255}, "labels should hold real trainIds, not only ignore"


def test_crop_pad_and_flip_share_parameters_exactly(tree):
    """Crop larger than the image (pads 0 / PAD_LABEL at bottom-right) plus random flip: bit-exact against torch."""
    stream = _stream(tree, "cityscapes", crop=(72, 40), flip=True)
    flipped = 0
    for want, got in _pairs(stream, 4):
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
        assert (got["label"][:, NATIVE[1] :] == PAD_LABEL).all() and (got["image"][:, :, :0].numel() == 0)
        flipped += int((got["label"][:, :, :8] == PAD_LABEL).all())  # a flipped pad lands on the left
    assert 0 < flipped < 8, f"expected some but not all of 8 samples flipped, got {flipped}"


def test_random_scale_crop_flip_close_to_torch(tree):
    """Full augmentation: the same scale/crop/flip per sample; labels identical, images within the bound."""
    stream = _stream(tree, "synthia", resize=(56, 32), scale_range=(0.5, 1.5), crop=(40, 24), flip=True)
    for step, (want, got) in enumerate(_pairs(stream, 4)):
        assert torch.equal(got["label"], want["label"]), f"[step {step}] labels differ"
        _assert_images_close(want["image"], got["image"], f"augment step {step}")


@pytest.mark.parametrize("sizes", [((64, 36), (40, 22)), ((1914, 1052), (1280, 720)), ((97, 53), (150, 81))])
def test_nearest_resize_matches_pil(sizes):
    """The host label resize equals PIL NEAREST (the torch loader's) for down- and up-scaling, uint8 and uint16."""
    from PIL import Image

    (width, height), size = sizes
    label = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    want = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    assert np.array_equal(dali._nearest_resize(label, size), want)
    wide = label.astype(np.uint16) * 257
    assert np.array_equal(dali._nearest_resize(wide, size), want.astype(np.uint16) * 257)


def test_eval_samples_parity(tree):
    stream = Stream(dataset="cityscapes", root=str(tree / "cityscapes"), split="val")
    want = list(torch_loader.eval_samples(stream, (48, 24)))
    got = list(dali.eval_samples(stream, (48, 24), device="cpu"))
    assert [g[2] for g in got] == [w[2] for w in want] and len(got) == 2
    for (w_image, w_label, name), (g_image, g_label, _) in zip(want, got, strict=True):
        assert g_label.dtype == torch.int64 and torch.equal(g_label, w_label), name
        assert g_image.shape == (1, 24, 48, 3)
        _assert_images_close(w_image, g_image, name)


# -------------------------------------------------------------------------------------------- order and state
def test_resume_continues_the_same_batches(tree):
    stream = _stream(tree, "gta5", resize=(40, 22), flip=True)
    straight = dali.StreamLoader(stream, "target", 3, num_workers=1, device="cpu")
    labels = [next(straight)["label"].clone() for _ in range(7)]
    assert straight.state_dict() == {"epoch": 1, "position": 3}, "4 batches per epoch: 7 = 1 epoch + 3"
    first = dali.StreamLoader(stream, "target", 3, num_workers=1, device="cpu")
    for _ in range(5):
        next(first)
    state = first.state_dict()
    resumed = dali.StreamLoader(stream, "target", 3, num_workers=1, device="cpu")
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)["label"], want) for want in labels[5:])
    with pytest.raises(ValueError, match=r"data.target loader state .* position must be in \[0, 4\)"):
        resumed.load_state_dict({"epoch": 0, "position": 4})


def test_epochs_reshuffle_and_shards_match_torch(tree):
    stream = _stream(tree, "gta5")
    order = dali._Order(8, stream, "source", 0, (0, 1))
    epoch0 = [i for _ in range(4) for i in order.next_batch()[0]]
    epoch1 = [i for _ in range(4) for i in order.next_batch()[0]]
    assert sorted(epoch0) == sorted(epoch1) == list(range(8)) and epoch0 != epoch1
    shards = [dali._Order(8, stream, "source", 0, (rank, 2)) for rank in (0, 1)]
    taken = [[i for _ in range(2) for i in shard.next_batch()[0]] for shard in shards]
    assert not set(taken[0]) & set(taken[1]) and sorted(taken[0] + taken[1]) == list(range(8))
    for want, got in _pairs(stream, 2, rank=1, world_size=2):
        assert torch.equal(got["label"], want["label"]), "rank 1 of 2 must read what the torch loader's rank 1 reads"


def test_output_is_zero_copy_and_channels_last(tree):
    loader = dali.StreamLoader(_stream(tree, "gta5", resize=(40, 22)), "source", 0, num_workers=1, device="cpu")
    first = next(loader)
    kept = first["image"].clone()
    for _ in range(6):  # more than the prefetch depth: old buffers must not be recycled under us
        next(loader)
    assert torch.equal(first["image"], kept)
    nchw = first["image"].permute(0, 3, 1, 2)
    assert nchw.is_contiguous(memory_format=torch.channels_last) and first["label"].is_contiguous()
    raw = loader._pipe.run()[0]
    assert dali._to_torch(raw).data_ptr() == raw.as_tensor().data_ptr(), "DLPack hand-over must not copy"


def test_streams_selects_dali_loader(tree):
    """segadapt.data.batch.Streams builds this module's loader for data.loader = "dali" (CPU here)."""
    from segadapt.data import batch

    assert batch._dali_loader_class() is dali.StreamLoader
    data = Data(loader="dali", source=_stream(tree, "gta5", resize=(40, 22)))
    streams = batch.Streams(data, ["source"], seed=0, device="cpu")
    assert isinstance(streams.loaders["source"], dali.StreamLoader)
    batch_on_device = streams.next("source")
    assert batch_on_device["image"].shape == (2, 3, 22, 40) and batch_on_device["label"].dtype == torch.int64
    assert batch_on_device["image"].is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------------ errors
def _broken_tree(tree, tmp_path, damage):
    root = tmp_path / "gta5"
    shutil.copytree(tree / "gta5", root)
    target = damage(root)
    return Stream(dataset="gta5", root=str(root), batch_size=8, resize=(40, 22)), target


def _garbage(root):
    path = root / "images" / "00003.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 10)
    return path


def _truncated(root):
    path = root / "images" / "00005.png"
    path.write_bytes(path.read_bytes()[:-200])
    return path


def _corrupt_pixels(root):
    """Header and IEND intact, compressed pixel data scrambled: only a full decode notices (DALI's decoder)."""
    path = root / "images" / "00002.png"
    data = bytearray(path.read_bytes())
    data[60:-40] = bytes(len(data) - 100)
    path.write_bytes(bytes(data))
    return path


def _missing_label(root):
    path = root / "labels" / "00004.png"
    path.unlink()
    return path


def _small_label(root):
    from PIL import Image

    path = root / "labels" / "00001.png"
    Image.open(path).resize((32, 18), Image.NEAREST).save(path)
    return path


@pytest.mark.parametrize("damage", [_garbage, _truncated, _corrupt_pixels, _missing_label, _small_label])
def test_bad_files_raise_naming_the_file(tree, tmp_path, damage):
    stream, target = _broken_tree(tree, tmp_path, damage)
    loader = dali.StreamLoader(stream, "source", 0, num_workers=1, device="cpu")
    with pytest.raises(ValueError, match=str(target)):
        next(loader)


def test_small_images_resize_matches_torch(tree):
    """D's real stream (small_images = "resize", AdvSemiSeg VOCGTDataSet): the crop exceeds the 64x36 images, so
    each is resized to it; labels identical to the torch loader's (OpenCV nearest), images within the bound."""
    stream = _stream(tree, "cityscapes", crop=(72, 40), small_images="resize")
    for step, (want, got) in enumerate(_pairs(stream, 2)):
        assert torch.equal(got["label"], want["label"]), f"[step {step}] labels differ"
        assert not (want["label"] == PAD_LABEL).any()
        _assert_images_close(want["image"], got["image"], f"small_images step {step}")
