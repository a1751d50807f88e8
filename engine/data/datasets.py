"""Published dataset layouts: listing image/label pairs, reading them, and checking a tree.

One listing function per format; each returns `Sample`s sorted by id. Labels are read raw and mapped through the
protocol's lookup table (`labels.label_lut`), so every reader returns trainIds (255 = ignore).

- gta5:        ROOT/images/NNNNN.png, ROOT/labels/NNNNN.png (Cityscapes labelIds).
- cityscapes:  ROOT/leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png, ROOT/gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png.
- synthia:     ROOT/RGB/NNNNNNN.png, ROOT/GT/LABELS/NNNNNNN.png (16-bit, class id in the first plane = cv2 channel -1;
               PIL cannot read them, pypng does).
- voc:         ROOT/JPEGImages/ID.jpg, ROOT/SegmentationClassAug/ID.png, ids in ROOT/ImageSets/Segmentation/SPLIT.txt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import numpy as np
import png
from PIL import Image

from segadapt.config import Stream
from segadapt.data.labels import KNOWN_RAW_IDS
from segadapt.data.labels import check_dataset
from segadapt.data.labels import label_lut

_LAYOUTS = {
    "gta5": "ROOT/images/00001.png ...          RGB images\n"
    "ROOT/labels/00001.png ...          Cityscapes labelIds (8-bit, palette or grey)\n"
    "(every image belongs to the 'train' split)",
    "cityscapes": "ROOT/leftImg8bit/{train,val}/CITY/NAME_leftImg8bit.png\n"
    "ROOT/gtFine/{train,val}/CITY/NAME_gtFine_labelIds.png   Cityscapes labelIds",
    "synthia": "ROOT/RGB/0000001.png ...           RGB images (SYNTHIA-RAND-CITYSCAPES)\n"
    "ROOT/GT/LABELS/0000001.png ...     16-bit PNG, class id in the first plane (cv2 BGR channel -1)\n"
    "(every image belongs to the 'train' split)",
    "voc": "ROOT/JPEGImages/ID.jpg\n"
    "ROOT/SegmentationClassAug/ID.png   class indices 0..20, 255 = boundary\n"
    "ROOT/ImageSets/Segmentation/{train_aug,train,val}.txt   one ID per line\n"
    "(split 'train' reads train_aug.txt when present, else train.txt)",
}


@dataclass(frozen=True)
class Sample:
    """One image/label pair of a dataset."""

    image: Path
    label: Path
    id: str


@dataclass
class CheckReport:
    """What `check_tree` found; every problem lists the files concerned."""

    root: str
    dataset: str
    split: str
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unknown_ids: list[str] = field(default_factory=list)
    layout_error: str = ""

    @property
    def ok(self) -> bool:
        problems = (self.missing, self.size_mismatches, self.unreadable, self.unknown_ids)
        return not self.layout_error and not any(problems)


def layout_help(dataset: str) -> str:
    """The directory layout `dataset` is expected in, indented for printing."""
    check_dataset(dataset)
    return "\n".join("    " + line for line in _LAYOUTS[dataset].splitlines())


def _require_dir(path: Path, dataset: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{dataset}: directory {path} does not exist; expected layout:\n{layout_help(dataset)}")
    return path


# --------------------------------------------------------------------------------------------------- listing
def _pairs_gta5(root: Path, split: str) -> list[Sample]:
    images, labels = _require_dir(root / "images", "gta5"), _require_dir(root / "labels", "gta5")
    return [Sample(p, labels / p.name, p.stem) for p in images.glob("*.png")]


def _pairs_synthia(root: Path, split: str) -> list[Sample]:
    images, labels = _require_dir(root / "RGB", "synthia"), _require_dir(root / "GT" / "LABELS", "synthia")
    return [Sample(p, labels / p.name, p.stem) for p in images.glob("*.png")]


def _pairs_cityscapes(root: Path, split: str) -> list[Sample]:
    images = _require_dir(root / "leftImg8bit" / split, "cityscapes")
    labels = _require_dir(root / "gtFine" / split, "cityscapes")
    samples = []
    for path in images.glob("*/*_leftImg8bit.png"):
        name = path.name[: -len("_leftImg8bit.png")]
        samples.append(Sample(path, labels / path.parent.name / f"{name}_gtFine_labelIds.png", name))
    return samples


def voc_split_file(root: Path, split: str) -> Path:
    """ImageSets/Segmentation/SPLIT.txt; split "train" prefers train_aug.txt (the SegmentationClassAug protocol)."""
    lists = _require_dir(root / "ImageSets" / "Segmentation", "voc")
    names = ["train_aug", "train"] if split == "train" else [split]
    for name in names:
        if (lists / f"{name}.txt").is_file():
            return lists / f"{name}.txt"
    raise ValueError(
        f"voc: split list {lists / (names[0] + '.txt')} does not exist; expected layout:\n{layout_help('voc')}"
    )


def _pairs_voc(root: Path, split: str) -> list[Sample]:
    images = _require_dir(root / "JPEGImages", "voc")
    labels = _require_dir(root / "SegmentationClassAug", "voc")
    ids = [line.split()[0] for line in voc_split_file(root, split).read_text().splitlines() if line.strip()]
    return [Sample(images / f"{Path(i).stem}.jpg", labels / f"{Path(i).stem}.png", Path(i).stem) for i in ids]


_LISTERS = {"gta5": _pairs_gta5, "cityscapes": _pairs_cityscapes, "synthia": _pairs_synthia, "voc": _pairs_voc}


def list_pairs(root: str | Path, dataset: str, split: str = "train") -> list[Sample]:
    """Every sample of `split` under `root`, sorted by id; label files are named, not checked for existence."""
    check_dataset(dataset)
    root = _require_dir(Path(root), dataset)
    unique = {sample.id: sample for sample in _LISTERS[dataset](root, split)}
    return [unique[key] for key in sorted(unique)]


def _line_id(text: str, dataset: str) -> str:
    """An id from a list-file line: a bare id or a relative image path (first whitespace-separated field)."""
    name = Path(text.split()[0]).name
    for suffix in (".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    if dataset == "cityscapes" and name.endswith("_leftImg8bit"):
        name = name[: -len("_leftImg8bit")]
    return name


def _expected_image(root: Path, dataset: str, split: str, sample_id: str) -> Path:
    if dataset == "gta5":
        return root / "images" / f"{sample_id}.png"
    if dataset == "synthia":
        return root / "RGB" / f"{sample_id}.png"
    if dataset == "voc":
        return root / "JPEGImages" / f"{sample_id}.jpg"
    return root / "leftImg8bit" / split / sample_id.split("_")[0] / f"{sample_id}_leftImg8bit.png"


def filter_by_list(samples: list[Sample], list_file: str | Path, stream: Stream) -> list[Sample]:
    """Keep the samples named in `list_file`; an id with no image raises ValueError naming the file and line."""
    list_path = Path(list_file)
    if not list_path.is_file():
        raise ValueError(f"list_file {list_path} does not exist (expected one image id per line)")
    by_id = {sample.id: sample for sample in samples}
    chosen: dict[str, Sample] = {}
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        sample_id = _line_id(line, stream.dataset)
        if sample_id not in by_id:
            missing = _expected_image(Path(stream.root), stream.dataset, stream.split, sample_id)
            raise ValueError(f"{list_path}:{number}: id {sample_id!r} has no image; {missing} does not exist")
        chosen[sample_id] = by_id[sample_id]
    return [chosen[key] for key in sorted(chosen)]


def list_samples(stream: Stream) -> list[Sample]:
    """The samples of a stream: its dataset's split, restricted to `stream.list_file` when set, sorted by id."""
    check_dataset(stream.dataset, "stream dataset")
    if not stream.root:
        raise ValueError(
            f"stream root is empty for dataset {stream.dataset!r}; expected:\n{layout_help(stream.dataset)}"
        )
    samples = list_pairs(stream.root, stream.dataset, stream.split)
    if stream.list_file:
        samples = filter_by_list(samples, stream.list_file, stream)
    if not samples:
        raise ValueError(
            f"{stream.dataset}: no images found under {stream.root} (split {stream.split!r}); expected layout:\n"
            f"{layout_help(stream.dataset)}"
        )
    samples = draw_subset(samples, stream)
    skipped = _SKIPPED.get(_tree_key(stream.root, stream.dataset, stream.split))
    return [sample for sample in samples if sample.id not in skipped] if skipped else samples


def _fraction_count(stream: Stream, total: int) -> int:
    if stream.fraction_rounding == "floor":
        return int(stream.fraction * total)  # AdvSemiSeg train.py:253 partial_size = int(args.partial_data * N)
    if stream.fraction_rounding == "nearest":
        return round(stream.fraction * total)
    raise ValueError(f'stream fraction_rounding = {stream.fraction_rounding!r}: expected "floor" or "nearest"')


def draw_subset(samples: list[Sample], stream: Stream) -> list[Sample]:
    """Apply the stream's partial-data draw: `count` or `fraction` of `samples`, or the rest when `complement`.

    The draw is a permutation of the id-sorted samples seeded by `split_seed` (numpy PCG64, the same on every
    machine), of which the first `count` are taken (else fraction * n, floored as AdvSemiSeg's `int(p * N)` under
    `fraction_rounding = "floor"`, rounded under "nearest"; at least 1), as AdvSemiSeg shuffles its train ids and
    keeps the first `partial_size`. A labelled stream and its `complement` with equal settings split
    the images exactly. The result is sorted by id. Raises ValueError naming the key when the draw is empty.
    """
    if stream.count < 0 or not 0.0 < stream.fraction <= 1.0:
        raise ValueError(
            f"stream {stream.dataset} at {stream.root}: count = {stream.count} must be >= 0 and fraction = "
            f"{stream.fraction} in (0, 1]"
        )
    whole = stream.count == 0 and stream.fraction == 1.0
    if whole and not stream.complement:
        return samples
    total = len(samples)
    keep = stream.count if stream.count else max(1, _fraction_count(stream, total))
    if keep > total:
        raise ValueError(f"count = {keep} but only {total} images are listed under {stream.root} ({stream.split})")
    order = np.random.Generator(np.random.PCG64(stream.split_seed)).permutation(total)
    chosen = order[keep:] if stream.complement else order[:keep]
    if len(chosen) == 0:
        raise ValueError(
            f"the {'complement of the ' if stream.complement else ''}draw of {keep} of {total} images under "
            f"{stream.root} is empty; lower count/fraction or unset complement"
        )
    return [samples[i] for i in sorted(chosen.tolist())]


# --------------------------------------------------------------------------------------------------- reading
WIDE_IMAGE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""PIL modes of 16- and 32-bit single-channel images: convert("RGB") clips them to 255, an all-white picture."""


def _wide_image_error(mode: str) -> str:
    return (f"a 16/32-bit greyscale image (PIL mode {mode}) would be read as all white; "
            "convert it to 8-bit RGB")  # fmt: skip


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; a missing, corrupt, truncated or 16-bit greyscale file raises
    ValueError."""
    try:
        with Image.open(path) as image:
            if image.mode in WIDE_IMAGE_MODES:
                raise ValueError(_wide_image_error(image.mode))
            image.load()
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _read_synthia_class_channel(path: Path) -> np.ndarray:
    """SYNTHIA's class id plane: `cv2.imread(f, cv2.IMREAD_UNCHANGED)[:, :, -1]` in MIC/DAFormer's converter.

    cv2 returns channels in BGR order, so its last channel is the file's FIRST (red) plane; pypng yields file order.
    """
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    array = np.vstack([np.asarray(row, dtype=dtype) for row in rows])
    if array.shape != (height, width * planes):
        raise ValueError(f"expected {height} rows of {width * planes} values, got {array.shape}")
    return np.ascontiguousarray(array.reshape(height, width, planes)[:, :, 0])


def read_raw_label(path: str | Path, dataset: str) -> np.ndarray:
    """The raw ids of a label file: (H, W) uint8, or uint16 for SYNTHIA (the class plane of its 16-bit PNG)."""
    path = Path(path)
    try:
        if dataset == "synthia":
            return _read_synthia_class_channel(path)
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "P"):
                raise ValueError(f"expected a single-channel 8-bit label (mode L or P), got mode {image.mode}")
            return np.array(image)
    except (OSError, SyntaxError, ValueError, png.Error) as error:
        raise ValueError(f"cannot read {dataset} label {path}: {error}") from error


_LUTS: dict[str, np.ndarray] = {}


def read_label(path: str | Path, dataset: str) -> np.ndarray:
    """Read a label file and map it to trainIds: (H, W) uint8, 255 = ignore."""
    check_dataset(dataset)
    if dataset not in _LUTS:
        _LUTS[dataset] = label_lut(dataset)
    return _LUTS[dataset][read_raw_label(path, dataset)]


# --------------------------------------------------------------------------------------------------- checking
def _orphan_labels(root: Path, dataset: str, split: str, samples: list[Sample]) -> list[Path]:
    """Label files that no image refers to (the other half of a missing pair)."""
    patterns = {
        "gta5": (root / "labels", "*.png"),
        "synthia": (root / "GT" / "LABELS", "*.png"),
        "cityscapes": (root / "gtFine" / split, "*/*_gtFine_labelIds.png"),
        "voc": (root / "SegmentationClassAug", "__none__"),  # VOC lists ids; extra labels are normal (SBD)
    }
    folder, pattern = patterns[dataset]
    known = {sample.label for sample in samples}
    return sorted(p for p in folder.glob(pattern) if p not in known)


def _check_sample(sample: Sample, dataset: str, report: CheckReport) -> None:
    if not sample.image.is_file():
        report.missing.append(f"{sample.image}: image missing (its label would be {sample.label})")
        return
    if not sample.label.is_file():
        report.missing.append(f"{sample.image}: image without label (expected {sample.label})")
        return
    try:
        image = read_image(sample.image)
    except ValueError as error:
        report.unreadable.append(str(error))
        return
    try:
        raw = read_raw_label(sample.label, dataset)
    except ValueError as error:
        report.unreadable.append(str(error))
        return
    report.counts["pairs"] += 1
    if raw.shape != image.shape[:2]:
        report.size_mismatches.append(f"{sample.label}: label {raw.shape[1]}x{raw.shape[0]} vs image "
                                      f"{image.shape[1]}x{image.shape[0]} ({sample.image.name})")  # fmt: skip
    unknown = sorted(set(np.unique(raw).tolist()) - KNOWN_RAW_IDS[dataset])
    if unknown:
        report.unknown_ids.append(f"{sample.label}: ids {unknown} are outside the {dataset} protocol")


def check_tree(root: str | Path, dataset: str, split: str = "train") -> CheckReport:
    """Validate a dataset tree: pairs present, both files decodable, equal sizes, only known raw ids."""
    report = CheckReport(str(root), dataset, split, counts={"images": 0, "labels": 0, "pairs": 0})
    try:
        samples = list_pairs(root, dataset, split)
    except ValueError as error:
        report.layout_error = str(error)
        return report
    orphans = _orphan_labels(Path(root), dataset, split, samples)
    report.counts["images"] = sum(sample.image.is_file() for sample in samples)
    report.counts["labels"] = sum(sample.label.is_file() for sample in samples) + len(orphans)
    for orphan in orphans:
        report.missing.append(f"{orphan}: label without image")
    for sample in samples:
        _check_sample(sample, dataset, report)
    return report


def format_report(report: CheckReport) -> str:
    """A human-readable summary of a `CheckReport`, one problem per line."""
    head = f"{report.dataset} at {report.root} (split {report.split!r})"
    if report.layout_error:
        return f"{head}: FAILED\n{report.layout_error}"
    counts = ", ".join(f"{value} {key}" for key, value in report.counts.items())
    lines = [f"{head}: {counts}"]
    sections = [
        ("missing pairs", report.missing),
        ("size mismatches", report.size_mismatches),
        ("unreadable files", report.unreadable),
        ("unknown ids", report.unknown_ids),
    ]
    for title, items in sections:
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in items)
    lines.append("OK" if report.ok else "FAILED")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- validation before training
# `validate_tree` checks a whole split the way a training run needs it, before the first step: every image has its
# label and every label its image, both open and their headers agree (size; an 8-bit label; no 16-bit greyscale
# image), and the label ids of an evenly spaced sample (or of every file) are inside the protocol. It reads headers,
# not pixels, so GTA5's 24,966 pairs take seconds; the result is cached per tree, keyed by every file's size and
# mtime, so an unchanged tree is not read again. Bad files stop the run unless `data.skip_bad`, which removes them
# from `list_samples` through `skip_samples`.

CHECK_VERSION = 1
"""Bump when the checks change: cached results of older checks are then not used."""
ID_SAMPLE = 64
"""Label files whose ids are read in full when `data.check_all_label_ids` is off (evenly spaced over the ids)."""
_SKIPPED: dict[tuple[str, str, str], frozenset[str]] = {}


def _tree_key(root: str | Path, dataset: str, split: str) -> tuple[str, str, str]:
    return str(Path(root).resolve()), dataset, split


def skip_samples(root: str | Path, dataset: str, split: str, ids: set[str] | frozenset[str]) -> None:
    """Leave `ids` out of every `list_samples` of this tree from now on in this process (`data.skip_bad`)."""
    key = _tree_key(root, dataset, split)
    _SKIPPED[key] = _SKIPPED.get(key, frozenset()) | frozenset(ids)


@dataclass
class TreeCheck:
    """What `validate_tree` found: `bad` maps a sample id to its problem, `orphans` are labels without an image
    (both stop a run unless data.skip_bad); `unknown_ids` are warnings (those ids are read as ignore, 255, which is
    the protocol)."""

    root: str
    dataset: str
    split: str
    pairs: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    unknown_ids: list[str] = field(default_factory=list)
    ids_checked: int = 0
    seconds: float = 0.0
    cached: bool = False

    @property
    def problems(self) -> list[str]:
        """One line per bad file."""
        return [*self.orphans, *self.bad.values()]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header(path: Path) -> tuple[str, tuple[int, int]] | None:
    """(PIL mode, (W, H)) from a PNG's IHDR chunk, the first 33 bytes (5x faster than PIL's open, which also reads
    the chunks after it); None when the file is not a PNG."""
    with open(path, "rb") as handle:
        head = handle.read(33)
    if not head.startswith(_PNG_SIGNATURE):
        return None
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise ValueError("truncated PNG header (no IHDR chunk)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    modes = {0: "1" if depth == 1 else "I;16" if depth == 16 else "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
    if colour not in modes:
        raise ValueError(f"PNG colour type {colour} is not one PNG defines")
    return modes[colour], (width, height)


def _pil_header(path: Path) -> tuple[str, tuple[int, int]]:
    with Image.open(path) as image:
        return image.mode, image.size


def _header(path: Path, dataset: str, label: bool) -> tuple[int, int]:
    """(W, H) from a file's header; ValueError with the reason when the file is not what training would read."""
    if label and dataset == "synthia":
        try:
            reader = png.Reader(filename=str(path))
            reader.preamble()
        except (OSError, png.Error) as error:
            raise ValueError(f"cannot read synthia label {path}: {error}") from error
        return reader.width, reader.height
    try:
        mode, size = _png_header(path) or _pil_header(path)
    except (OSError, SyntaxError, ValueError, struct.error) as error:
        raise ValueError(f"cannot read {'label' if label else 'image'} {path}: {error}") from None
    if label and mode not in ("L", "P"):
        raise ValueError(f"{path}: expected a single-channel 8-bit label (mode L or P), got mode {mode}")
    if not label and mode in WIDE_IMAGE_MODES:
        raise ValueError(f"{path}: {_wide_image_error(mode)}")
    return size


def _check_pair(sample: Sample, dataset: str) -> str:
    """The first problem of a pair, or ""."""
    if not sample.image.is_file():
        return f"{sample.image}: image missing (its label would be {sample.label})"
    if not sample.label.is_file():
        return f"{sample.image}: image without label (expected {sample.label})"
    try:
        image_size = _header(sample.image, dataset, label=False)
        label_size = _header(sample.label, dataset, label=True)
    except ValueError as error:
        return str(error)
    if image_size != label_size:
        return (f"{sample.label}: label {label_size[0]}x{label_size[1]} but image {image_size[0]}x{image_size[1]} "
                f"({sample.image.name})")  # fmt: skip
    return ""


def _fingerprint(paths: list[Path]) -> str:
    """A digest of every file's path, size and mtime (a missing file counts as such)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            info = path.stat()
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where tree checks are cached: $SEGADAPT_CACHE, else $XDG_CACHE_HOME/segadapt, else ~/.cache/segadapt."""
    if os.environ.get("SEGADAPT_CACHE"):
        return Path(os.environ["SEGADAPT_CACHE"]) / "datacheck"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "segadapt" / "datacheck"


def validate_tree(root: str | Path, dataset: str, split: str = "train", all_ids: bool = False,
                  use_cache: bool = True) -> TreeCheck:  # fmt: skip
    """Check every pair of a split for training (see the section comment); raises ValueError for a bad layout."""
    start = time.perf_counter()
    samples = list_pairs(root, dataset, split)
    orphans = _orphan_labels(Path(root), dataset, split, samples)
    paths = [path for sample in samples for path in (sample.image, sample.label)] + orphans
    key = hashlib.sha256(repr((CHECK_VERSION, *_tree_key(root, dataset, split), all_ids)).encode()).hexdigest()[:24]
    cache = cache_dir() / f"{key}.json"
    fingerprint = _fingerprint(paths)
    if use_cache:
        try:
            stored = json.loads(cache.read_text())
            if stored.get("fingerprint") == fingerprint:
                check = TreeCheck(**stored["check"])
                check.cached, check.seconds = True, time.perf_counter() - start
                return check
        except (OSError, ValueError, TypeError):
            pass  # no cache yet, or an unreadable one: check the tree
    check = TreeCheck(str(root), dataset, split, pairs=len(samples))
    check.orphans = [f"{orphan}: label without image" for orphan in orphans]
    for sample in samples:
        problem = _check_pair(sample, dataset)
        if problem:
            check.bad[sample.id] = problem
    good = [sample for sample in samples if sample.id not in check.bad]
    count = len(good) if all_ids else min(len(good), ID_SAMPLE)
    picks = sorted({round(i * (len(good) - 1) / max(count - 1, 1)) for i in range(count)})  # evenly spaced, both ends
    for sample in (good[i] for i in picks):
        try:
            raw = read_raw_label(sample.label, dataset)
        except ValueError as error:
            check.bad[sample.id] = str(error)
            continue
        check.ids_checked += 1
        unknown = sorted(set(np.unique(raw).tolist()) - KNOWN_RAW_IDS[dataset])
        if unknown:
            check.unknown_ids.append(f"{sample.label}: ids {unknown} are outside the {dataset} protocol (read as 255)")
    check.seconds = time.perf_counter() - start
    if use_cache:
        _write_cache(cache, fingerprint, check)
    return check


def _write_cache(path: Path, fingerprint: str, check: TreeCheck) -> None:
    record = {k: v for k, v in dataclasses.asdict(check).items() if k not in ("seconds", "cached")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"fingerprint": fingerprint, "check": record}))
        os.replace(temp, path)
    except OSError:
        pass  # a read-only cache costs a re-check next time, nothing else
