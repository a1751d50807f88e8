"""Label protocols as data: class names, palettes and raw-id -> trainId lookup tables.

Every dataset the engine reads stores its own raw ids; training and evaluation use the 19 Cityscapes trainIds
(or VOC's 21 classes), 255 = ignore. The tables below are the published protocols (METHODS.md A1):

- gta5, cityscapes: Cityscapes labelIds -> trainIds (`GTA5DataSet.id_to_trainid`, identical to
  AdaptSegNet's `dataset/cityscapes_list/info.json["label2train"]`); a 256-entry table.
- synthia: SYNTHIA-RAND-CITYSCAPES class ids (the first plane of the 16-bit GT/LABELS PNGs, cv2 channel -1) -> trainIds
  (MIC/DAFormer `tools/convert_datasets/synthia.py`, TLlib, BDL); a 65536-entry table.
- voc: identity on 0..20, 255 kept, everything else 255.

Raw ids outside a protocol map to 255: that is the protocol. `KNOWN_RAW_IDS` lists the ids a well-formed file may
contain, so `datasets.check_tree` can report anything else.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# Official Cityscapes colours (cityscapesScripts helpers/labels.py), in trainId order.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _voc_colormap(count: int) -> np.ndarray:
    """The standard VOC colormap: the bits of the class index spread over the high bits of R, G and B."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, red, green, blue = index, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[index] = (red, green, blue)
    return colours


VOC_PALETTE = _voc_colormap(21)

# SYNTHIA evaluation subsets, as trainId tuples (METHODS.md A1 "SYNTHIA protocol").
SYNTHIA16: tuple[int, ...] = tuple(i for i in range(19) if i not in (9, 14, 16))
SYNTHIA13: tuple[int, ...] = tuple(i for i in SYNTHIA16 if i not in (3, 4, 5))

# Cityscapes labelId -> trainId; every other labelId (0-6, 9, 10, 14-16, 18, 29, 30, -1) is ignored.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

# SYNTHIA class id -> trainId; terrain (16), truck (18) and train (20) never occur in SYNTHIA itself.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip

DATASETS: tuple[str, ...] = ("gta5", "cityscapes", "synthia", "voc")

# Raw ids a well-formed label file of each dataset may hold: Cityscapes labelIds 0..33, SYNTHIA classes 0..22
# (void ... lanemarking), VOC classes 0..20 plus the 255 boundary.
KNOWN_RAW_IDS: dict[str, frozenset[int]] = {
    "gta5": frozenset(range(34)),
    "cityscapes": frozenset(range(34)),
    "synthia": frozenset(range(23)),
    "voc": frozenset([*range(21), IGNORE]),
}


def check_dataset(dataset: str, where: str = "dataset") -> str:
    """Return `dataset` when it is a known format, else raise ValueError naming `where`."""
    if dataset not in DATASETS:
        raise ValueError(f"{where} = {dataset!r} is not a dataset format; expected one of {', '.join(DATASETS)}")
    return dataset


def label_lut(dataset: str) -> np.ndarray:
    """Lookup table raw id -> trainId for `dataset`.

    Returns:
        uint8 array of 256 entries (gta5, cityscapes, voc) or 65536 entries (synthia, 16-bit ids); unmapped ids
        give 255.
    """
    check_dataset(dataset)
    if dataset == "synthia":
        table, size = SYNTHIA_ID_TO_TRAINID, 1 << 16
    elif dataset == "voc":
        table, size = {**{i: i for i in range(21)}, IGNORE: IGNORE}, 256
    else:
        table, size = CITYSCAPES_ID_TO_TRAINID, 256
    lut = np.full(size, IGNORE, dtype=np.uint8)
    for raw, train_id in table.items():
        lut[raw] = train_id
    return lut


def class_names(num_classes: int) -> tuple[str, ...]:
    """The 19 Cityscapes or the 21 VOC class names."""
    if num_classes == 19:
        return CITYSCAPES_CLASSES
    if num_classes == 21:
        return VOC_CLASSES
    raise ValueError(f"num_classes = {num_classes}: expected 19 (Cityscapes trainIds) or 21 (VOC)")


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the Cityscapes palette for 19 classes, the VOC colormap for 21."""
    if num_classes == 19:
        return CITYSCAPES_PALETTE.copy()
    if num_classes == 21:
        return VOC_PALETTE.copy()
    raise ValueError(f"num_classes = {num_classes}: expected 19 (Cityscapes trainIds) or 21 (VOC)")


def colorize(label: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Colour a trainId map.

    Args:
        label: (H, W) integer trainIds, 255 = ignore (drawn black).
        num_classes: 19 or 21; None picks VOC when the map holds ids 19 or 20, Cityscapes otherwise.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"colorize: label must be an (H, W) integer array, got {label.dtype} {label.shape}")
    if num_classes is None:
        num_classes = 21 if np.isin(label, (19, 20)).any() else 19
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)
    clipped = np.where((label < 0) | (label > 255), IGNORE, label).astype(np.uint8)
    return table[clipped]
