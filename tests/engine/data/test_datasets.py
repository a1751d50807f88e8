"""Reading the published layouts from tiny trees written in the real formats; list files; check_tree."""

from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from segadapt.config import Stream
from segadapt.data.datasets import check_tree
from segadapt.data.datasets import format_report
from segadapt.data.datasets import layout_help
from segadapt.data.datasets import list_samples
from segadapt.data.datasets import read_image
from segadapt.data.datasets import read_label

# Raw labelIds with their trainIds: road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, sky 23 -> 10.
RAW = np.array([[7, 7, 26, 26], [0, 23, 23, 26]], dtype=np.uint8)
TRAIN = np.array([[0, 0, 13, 13], [255, 10, 10, 13]], dtype=np.uint8)


def _rgb(width=4, height=2, value=0):
    array = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3) + value
    return Image.fromarray(array)


def _save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _gta5(root: Path, count=3) -> Path:
    for index in range(count):
        _save(_rgb(value=index), root / "images" / f"{index:05d}.png")
        label = Image.fromarray(RAW).convert("P")  # GTA5 ships palette PNGs whose indices are labelIds
        label.putpalette([0, 0, 0] * 256)
        _save(label, root / "labels" / f"{index:05d}.png")
    return root


def _cityscapes(root: Path) -> Path:
    for split, names in (
        ("train", ["bochum_000000_000001", "aachen_000000_000019"]),
        ("val", ["lindau_000000_000000"]),
    ):
        for name in names:
            city = name.split("_")[0]
            _save(_rgb(), root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            _save(Image.fromarray(RAW), root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
    return root


def test_gta5_pairs_and_lut(tmp_path):
    root = _gta5(tmp_path / "gta5")
    samples = list_samples(Stream(dataset="gta5", root=str(root)))
    assert [s.id for s in samples] == ["00000", "00001", "00002"]
    assert samples[1].label == root / "labels" / "00001.png"
    np.testing.assert_array_equal(read_label(samples[0].label, "gta5"), TRAIN)
    image = read_image(samples[2].image)
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8 and image[0, 0].tolist() == [2, 3, 4]


def test_cityscapes_splits_sorted(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    train = list_samples(Stream(dataset="cityscapes", root=str(root), split="train"))
    assert [s.id for s in train] == ["aachen_000000_000019", "bochum_000000_000001"]
    assert train[0].label == root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    val = list_samples(Stream(dataset="cityscapes", root=str(root), split="val"))
    assert [s.id for s in val] == ["lindau_000000_000000"]
    np.testing.assert_array_equal(read_label(val[0].label, "cityscapes"), TRAIN)


def test_synthia_16bit_class_plane_is_cv2_channel_minus_one(tmp_path):
    root = tmp_path / "synthia"
    _save(_rgb(), root / "RGB" / "0000001.png")
    # SYNTHIA ids: 3 road -> 0, 8 car -> 13, 1 sky -> 10, 300 unknown -> 255; other channels hold large values.
    # The official converters read cv2.imread(...)[:, :, -1]; cv2 is BGR, so that is the file's first plane.
    ids = np.array([[3, 8, 1, 300], [8, 8, 3, 0]], dtype=np.uint16)
    planes = np.stack([ids, np.full_like(ids, 4000), np.full_like(ids, 65535)], -1)
    (root / "GT" / "LABELS").mkdir(parents=True)
    with open(root / "GT" / "LABELS" / "0000001.png", "wb") as handle:
        png.Writer(4, 2, greyscale=False, bitdepth=16).write(handle, planes.reshape(2, 12))
    samples = list_samples(Stream(dataset="synthia", root=str(root)))
    assert [s.id for s in samples] == ["0000001"]
    expected = np.array([[0, 13, 10, 255], [13, 13, 0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_label(samples[0].label, "synthia"), expected)


def _voc(root: Path) -> Path:
    for name in ("2007_000032", "2007_000039", "2008_000002"):
        _save(_rgb(), root / "JPEGImages" / f"{name}.jpg")
        _save(
            Image.fromarray(np.array([[0, 15, 255, 21]], dtype=np.uint8)), root / "SegmentationClassAug" / f"{name}.png"
        )
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("2008_000002\n2007_000032\n")
    (lists / "train.txt").write_text("2007_000032\n")
    (lists / "val.txt").write_text("2007_000039\n")
    return root


def test_voc_split_lists(tmp_path):
    root = _voc(tmp_path / "voc")
    train = list_samples(Stream(dataset="voc", root=str(root), split="train"))  # train_aug.txt preferred
    assert [s.id for s in train] == ["2007_000032", "2008_000002"]
    assert train[0].image == root / "JPEGImages" / "2007_000032.jpg"
    val = list_samples(Stream(dataset="voc", root=str(root), split="val"))
    assert [s.id for s in val] == ["2007_000039"]
    np.testing.assert_array_equal(read_label(val[0].label, "voc"), [[0, 15, 255, 255]])
    assert read_image(val[0].image).shape == (2, 4, 3)


def test_list_file_ids_and_paths(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    listing = tmp_path / "labeled.txt"
    listing.write_text("leftImg8bit/train/bochum/bochum_000000_000001_leftImg8bit.png\n\naachen_000000_000019\n")
    stream = Stream(dataset="cityscapes", root=str(root), list_file=str(listing))
    assert [s.id for s in list_samples(stream)] == ["aachen_000000_000019", "bochum_000000_000001"]
    listing.write_text("aachen_000000_000019\nzurich_000001_000002\n")
    with pytest.raises(ValueError) as error:
        list_samples(stream)
    message = str(error.value)
    assert f"{listing}:2" in message and "zurich/zurich_000001_000002_leftImg8bit.png" in message


def test_missing_root_shows_layout(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)nowhere.*does not exist.*ROOT/images"):
        list_samples(Stream(dataset="gta5", root=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match=r"gtFine"):
        list_samples(Stream(dataset="cityscapes", root=str(tmp_path), split="train"))
    assert "GT/LABELS" in layout_help("synthia") and "SegmentationClassAug" in layout_help("voc")


def test_corrupt_and_missing_files_are_named(tmp_path):
    root = _gta5(tmp_path / "gta5", count=1)
    broken = root / "images" / "00000.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    with pytest.raises(ValueError, match="00000.png"):
        read_image(broken)
    with pytest.raises(ValueError, match="nothing.png"):
        read_label(root / "labels" / "nothing.png", "gta5")
    _save(_rgb(), root / "labels" / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png.*mode RGB"):
        read_label(root / "labels" / "rgb.png", "gta5")


def test_check_tree_finds_each_problem_by_name(tmp_path):
    root = _gta5(tmp_path / "gta5", count=6)
    assert check_tree(root, "gta5").ok
    (root / "labels" / "00001.png").unlink()  # missing label
    _save(Image.fromarray(np.zeros((3, 4), np.uint8)), root / "labels" / "00002.png")  # size mismatch
    corrupt = root / "images" / "00003.png"
    corrupt.write_bytes(corrupt.read_bytes()[:50])  # truncated image
    _save(Image.fromarray(np.full((2, 4), 40, np.uint8)), root / "labels" / "00004.png")  # labelId 40 is unknown
    _save(Image.fromarray(RAW), root / "labels" / "09999.png")  # label without image
    report = check_tree(root, "gta5")
    assert not report.ok
    assert report.counts == {"images": 6, "labels": 6, "pairs": 4}
    assert any("00001.png" in item for item in report.missing) and any("09999.png" in i for i in report.missing)
    assert len(report.size_mismatches) == 1 and "00002.png" in report.size_mismatches[0]
    assert len(report.unreadable) == 1 and "00003.png" in report.unreadable[0]
    assert len(report.unknown_ids) == 1 and "00004.png" in report.unknown_ids[0] and "[40]" in report.unknown_ids[0]
    text = format_report(report)
    assert "FAILED" in text and "size mismatches (1)" in text and "00003.png" in text


def test_check_tree_reports_a_missing_layout(tmp_path):
    report = check_tree(tmp_path, "synthia")
    assert not report.ok and "RGB" in report.layout_error and "FAILED" in format_report(report)
