"""The tree check before the first step (issue 19 point 5): every bad file of a split found from headers, cached per
tree by file sizes and mtimes, a bad file stops the run unless data.skip_bad, which leaves it out of the streams."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segadapt import config
from segadapt.cli import check_datasets
from segadapt.config import ConfigError
from segadapt.config import Stream
from segadapt.data import datasets
from segadapt.data.datasets import list_samples
from segadapt.data.datasets import read_image
from segadapt.data.datasets import validate_tree

RAW = np.array([[7, 7, 26, 26], [0, 23, 23, 26]], dtype=np.uint8)  # Cityscapes labelIds road, car, unlabeled, sky


def _pair(root: Path, index: int, label: np.ndarray = RAW, image: Image.Image | None = None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    image = image or Image.fromarray(np.full((h, w, 3), index, dtype=np.uint8))
    image.save(root / "images" / f"{index:05d}.png")
    Image.fromarray(label).save(root / "labels" / f"{index:05d}.png")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_SKIPPED", {})


def _broken_tree(root: Path) -> dict[str, str]:
    """A GTA5 tree with one file of each problem the issue lists; returns the id -> expected problem fragment."""
    for index in range(8):
        _pair(root, index)
    (root / "labels" / "00001.png").unlink()  # image without label
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(root / "labels" / "00002.png")  # 4x3 label, 4x2 image
    (root / "images" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 3)  # corrupt image
    Image.fromarray(np.full((2, 4), 40000, np.uint16)).save(root / "images" / "00004.png")  # 16-bit greyscale
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "labels" / "00005.png")  # RGB label
    Image.fromarray(RAW).save(root / "labels" / "00009.png")  # label without image
    return {
        "00001": "image without label",
        "00002": "label 4x3 but image 4x2",
        "00003": "cannot read image",
        "00004": "16/32-bit greyscale image (PIL mode I;16) would be read as all white",
        "00005": "expected a single-channel 8-bit label (mode L or P), got mode RGB",
    }


def test_every_bad_file_is_named_with_its_problem(tmp_path):
    root = tmp_path / "gta5"
    expected = _broken_tree(root)
    check = validate_tree(root, "gta5")
    assert check.pairs == 8 and set(check.bad) == set(expected)
    for sample_id, fragment in expected.items():
        assert fragment in check.bad[sample_id] and f"{sample_id}.png" in check.bad[sample_id], check.bad[sample_id]
    assert check.orphans == [f"{root / 'labels' / '00009.png'}: label without image"]
    assert len(check.problems) == 6


def test_sixteen_bit_greyscale_image_is_refused_when_read():
    # PIL's convert("RGB") of mode I;16 clips every value above 255: the picture trained on was all white
    path = Path(os.environ["SEGADAPT_CACHE"]).parent / "grey16.png"
    Image.fromarray(np.full((2, 4), 300, np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"grey16.png.*16/32-bit greyscale image \(PIL mode I;16\)"):
        read_image(path)


def test_label_ids_outside_the_protocol_are_reported_on_a_sample_or_all(tmp_path, monkeypatch):
    root = tmp_path / "gta5"
    for index in range(10):
        _pair(root, index, RAW if index != 7 else np.where(RAW == 26, 250, RAW).astype(np.uint8))
    monkeypatch.setattr(datasets, "ID_SAMPLE", 3)  # reads 00000, 00004 (rounded from 4.5) and 00009 only
    sampled = validate_tree(root, "gta5")
    assert sampled.ids_checked == 3 and sampled.unknown_ids == [] and not sampled.problems
    full = validate_tree(root, "gta5", all_ids=True)
    assert full.ids_checked == 10
    assert full.unknown_ids == [
        f"{root / 'labels' / '00007.png'}: ids [250] are outside the gta5 protocol (read as 255)"
    ]


def test_result_is_cached_until_a_file_changes_size_or_mtime(tmp_path):
    root = tmp_path / "gta5"
    for index in range(3):
        _pair(root, index)
    first = validate_tree(root, "gta5")
    again = validate_tree(root, "gta5")
    assert not first.cached and again.cached and again.bad == first.bad == {}
    label = root / "labels" / "00001.png"
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(label)  # now the wrong size
    changed = validate_tree(root, "gta5")
    assert not changed.cached and list(changed.bad) == ["00001"]
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, new mtime: checked again
    assert not validate_tree(root, "gta5").cached


def _cfg(tmp_path, root, *overrides):
    return config.load_dict(
        {"data": {"source": {"dataset": "gta5", "root": str(root)}}, "train": {"run_dir": str(tmp_path / "run")}},
        "x.toml",
        list(overrides),
    )


def test_bad_files_stop_the_run_before_the_first_step_unless_skip_bad(tmp_path):
    root = tmp_path / "gta5"
    expected = _broken_tree(root)
    with pytest.raises(ConfigError) as info:
        check_datasets(_cfg(tmp_path, root))
    message = str(info.value)
    assert message.startswith("data.source: 6 bad file(s) under") and "data.skip_bad = true" in message
    assert str(root / "labels" / "00002.png") in message and str(tmp_path / "run" / "data_check.txt") in message
    listed = (tmp_path / "run" / "data_check.txt").read_text()
    assert all(f"{sample_id}.png" in listed for sample_id in expected) and "00009.png: label without image" in listed

    check_datasets(_cfg(tmp_path, root, "data.skip_bad=true"))
    ids = [s.id for s in list_samples(Stream(dataset="gta5", root=str(root)))]
    assert ids == ["00000", "00006", "00007"]  # 8 images less the 5 bad pairs


def test_a_worker_error_reaches_the_user_as_its_one_line_message(tmp_path):
    # a file that breaks after the check (or a check skipped): the DataLoader re-raised it with the worker's
    # 40-line traceback as its message
    from segadapt.data.torch_loader import StreamLoader

    root = tmp_path / "gta5"
    for index in range(2):
        _pair(root, index)
    (root / "images" / "00000.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    stream = Stream(dataset="gta5", root=str(root), batch_size=2)
    loader = StreamLoader(stream, "source", seed=0, num_workers=1, prefetch=1)
    try:
        with pytest.raises(ValueError) as info:
            next(loader)
    finally:
        loader.close()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"data.source: cannot read image {root / 'images' / '00000.png'}: "), message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.zeros((3, 5, 3), np.uint8), "RGB"),
        (np.zeros((3, 5, 4), np.uint8), "RGBA"),
        (np.zeros((3, 5), np.uint8), "L"),
        (np.zeros((3, 5), np.uint8), "P"),
        (np.zeros((3, 5), np.uint8), "LA"),
        (np.zeros((3, 5), np.uint8), "1"),
        (np.zeros((3, 5), np.uint16), "I;16"),
    ],
)
def test_png_header_reads_what_pil_opens(tmp_path, array, mode):
    # the check reads the IHDR chunk itself; PIL's Image.open is the reference for mode and size
    path = tmp_path / "x.png"
    image = Image.fromarray(array)
    (image if image.mode == mode else image.convert(mode)).save(path)
    with Image.open(path) as reference:
        assert datasets._png_header(path) == (reference.mode, reference.size)
