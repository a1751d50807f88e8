"""synthshift: byte-identical output per seed, a shared layout distribution, a clear appearance shift, the layouts."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from segadapt.config import Stream
from segadapt.config import Synthshift
from segadapt.data import ensure_synthshift
from segadapt.data import synthshift
from segadapt.data.datasets import check_tree
from segadapt.data.datasets import list_samples
from segadapt.data.datasets import read_image
from segadapt.data.datasets import read_label

SIZE = (64, 32)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthshift")
    synthshift.generate(out, seed=3, size=SIZE, count=8, formats=synthshift.FORMATS)
    return out


def test_same_seed_is_byte_identical(tree, tmp_path):
    synthshift.generate(tmp_path / "again", seed=3, size=SIZE, count=8, formats=synthshift.FORMATS)
    first, second = _hashes(tree), _hashes(tmp_path / "again")
    assert len(first) == 8 * 2 * 4 + 3 + 1  # 2 files per scene and format, 3 VOC lists, the manifest
    assert first == second
    synthshift.generate(tmp_path / "other", seed=4, size=SIZE, count=8, formats=("gta5",))
    other = _hashes(tmp_path / "other")
    assert other["gta5/images/00000.png"] != first["gta5/images/00000.png"]


def test_trees_pass_check_and_use_published_layouts(tree):
    for dataset, split, count in (("gta5", "train", 8), ("cityscapes", "train", 6), ("cityscapes", "val", 2),
                                  ("synthia", "train", 8), ("voc", "train", 6), ("voc", "val", 2)):  # fmt: skip
        report = check_tree(tree / dataset, dataset, split)
        assert report.ok and report.counts["pairs"] == count, (dataset, split, report)
    assert (tree / "cityscapes/leftImg8bit/val/synth/synth_000003_000000_leftImg8bit.png").is_file()
    assert json.loads((tree / synthshift.MANIFEST).read_text())["seed"] == 3


def test_formats_hold_the_same_scenes(tree):
    """gta5 and synthia carry the same game scenes, cityscapes and voc the same photo scenes, each in its ids."""
    game = read_label(tree / "gta5/labels/00002.png", "gta5")
    synthia = read_label(tree / "synthia/GT/LABELS/0000002.png", "synthia")
    absent = np.isin(game, (9, 14, 16))  # terrain, truck, train do not exist in SYNTHIA: written as void
    np.testing.assert_array_equal(synthia, np.where(absent, 255, game))
    np.testing.assert_array_equal(
        read_image(tree / "gta5/images/00002.png"), read_image(tree / "synthia/RGB/0000002.png")
    )
    photo = read_label(tree / "cityscapes/gtFine/train/synth/synth_000002_000000_gtFine_labelIds.png", "cityscapes")
    voc = read_label(tree / "voc/SegmentationClassAug/synth_000002.png", "voc")
    np.testing.assert_array_equal(voc, synthshift.VOC_OF_TRAINID[photo])
    assert synthshift.VOC_OF_TRAINID[[13, 11, 12, 15, 16, 17, 18, 14, 0]].tolist() == [7, 15, 15, 6, 19, 14, 2, 0, 0]
    val = (tree / "voc/ImageSets/Segmentation/val.txt").read_text().split()
    assert val == ["synth_000003", "synth_000007"]


def _domain_stats(domain: str, count: int = 48, size=(128, 64)):
    frequency, sums, pixels = np.zeros(19), np.zeros((19, 3)), np.zeros(19)
    for index in range(count):
        image, label = synthshift.make_sample(0, domain, index, size)
        frequency += np.bincount(label.ravel(), minlength=256)[:19]
        for cls in range(19):
            mask = label == cls
            sums[cls] += image[mask].sum(0)
            pixels[cls] += mask.sum()
    return frequency / frequency.sum(), sums / np.maximum(pixels, 1)[:, None], pixels


@pytest.fixture(scope="module")
def domains():
    return _domain_stats("game"), _domain_stats("photo")


def test_domains_share_the_layout_distribution(domains):
    (game_freq, _, game_pixels), (photo_freq, _, photo_pixels) = domains
    assert (game_pixels > 0).all() and (photo_pixels > 0).all(), "every class appears in both domains"
    assert np.abs(game_freq - photo_freq).max() < 0.03
    assert game_freq[10] > 0.15 and game_freq[0] > 0.1 and game_freq[2] > 0.1  # sky, road, building dominate


def test_domains_differ_in_appearance(domains):
    (_, game_mean, _), (_, photo_mean, _) = domains
    distance = np.linalg.norm(game_mean - photo_mean, axis=1)
    assert distance.min() > 30, distance  # every class changes colour clearly
    photo_gap = np.linalg.norm(photo_mean[:, None] - photo_mean[None], axis=-1) + np.eye(19) * 1e9
    assert photo_gap.min() > 10  # ... but the photo classes stay distinct from each other
    palette_gap = np.linalg.norm(synthshift.PHOTO_PALETTE[:, None] - synthshift.PHOTO_PALETTE[None], axis=-1)
    assert (palette_gap + np.eye(19) * 1e9).min() > 25


def test_a_game_colour_classifier_degrades_on_photos(domains):
    (_, game_mean, _), (_, photo_mean, _) = domains

    def accuracy(means, domain):
        right = total = 0
        for index in range(100, 116):
            image, label = synthshift.make_sample(0, domain, index, (128, 64))
            pixels = image.reshape(-1, 3).astype(np.float64)
            guess = ((pixels[:, None] - means[None]) ** 2).sum(-1).argmin(1)
            right += (guess == label.ravel()).sum()
            total += label.size
        return right / total

    in_domain, cross, photo_fit = (
        accuracy(game_mean, "game"),
        accuracy(game_mean, "photo"),
        accuracy(photo_mean, "photo"),
    )
    assert in_domain > 0.9 and cross < in_domain - 0.3 and photo_fit > cross + 0.1


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="formats"):
        synthshift.generate(tmp_path, formats=("kitti",))
    with pytest.raises(ValueError, match="size"):
        synthshift.generate(tmp_path, size=(8, 8))
    with pytest.raises(ValueError, match="count"):
        synthshift.generate(tmp_path, count=0)


def test_ensure_generates_once_atomically(tmp_path):
    cfg = Synthshift(generate=True, out=str(tmp_path / "set"), count=4, size=SIZE, seed=1)
    out = ensure_synthshift(cfg)
    stamp = (out / synthshift.MANIFEST).stat().st_mtime_ns
    assert [s.id for s in list_samples(Stream(dataset="gta5", root=str(out / "gta5")))] == [
        "00000",
        "00001",
        "00002",
        "00003",
    ]
    assert ensure_synthshift(cfg) == out and (out / synthshift.MANIFEST).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary directories left
    ensure_synthshift(Synthshift(out=str(out), count=5, size=SIZE, seed=1))  # other parameters: replaced
    assert len(list((out / "gta5" / "images").iterdir())) == 5
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="mine.*not a synthshift set"):
        ensure_synthshift(Synthshift(out=str(tmp_path / "mine"), count=4, size=SIZE))
