"""Label protocols against the METHODS.md tables: every mapped row, the ignored ids, palettes and colouring."""

import numpy as np
import pytest

from segadapt.data import labels

# METHODS.md A1 "GTA5 / Cityscapes 19-class mapping", copied row by row: (labelId, trainId).
CITYSCAPES_ROWS = [
    (7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9),
    (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18),
]  # fmt: skip
CITYSCAPES_IGNORED = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
# METHODS.md A1 "SYNTHIA protocol" id -> trainId.
SYNTHIA_ROWS = [
    (3, 0), (4, 1), (2, 2), (21, 3), (5, 4), (7, 5), (15, 6), (9, 7), (6, 8), (16, 9),
    (1, 10), (10, 11), (17, 12), (8, 13), (18, 14), (19, 15), (20, 16), (12, 17), (11, 18),
]  # fmt: skip


@pytest.mark.parametrize("dataset", ["gta5", "cityscapes"])
def test_cityscapes_lut_every_row(dataset):
    lut = labels.label_lut(dataset)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for raw, train_id in CITYSCAPES_ROWS:
        assert lut[raw] == train_id, f"labelId {raw}"
    for raw in CITYSCAPES_IGNORED + [34, 100, 254, 255]:
        assert lut[raw] == 255, f"labelId {raw} must be ignored"
    assert (lut != 255).sum() == 19


def test_synthia_lut_every_row():
    lut = labels.label_lut("synthia")
    assert lut.dtype == np.uint8 and lut.shape == (65536,)
    for raw, train_id in SYNTHIA_ROWS:
        assert lut[raw] == train_id, f"SYNTHIA id {raw}"
    for raw in [0, 13, 14, 22, 255, 256, 1000, 65535]:
        assert lut[raw] == 255, f"SYNTHIA id {raw} must be ignored"
    assert (lut != 255).sum() == 19


def test_voc_lut_identity_and_ignore():
    lut = labels.label_lut("voc")
    assert lut.shape == (256,)
    assert lut[:21].tolist() == list(range(21))
    assert lut[255] == 255 and lut[21] == 255 and lut[128] == 255
    assert (lut != 255).sum() == 21


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="'kitti'.*gta5, cityscapes, synthia, voc"):
        labels.label_lut("kitti")


def test_synthia_subsets():
    assert labels.SYNTHIA16 == tuple(i for i in range(19) if i not in (9, 14, 16))
    names13 = [labels.CITYSCAPES_CLASSES[i] for i in labels.SYNTHIA13]
    assert names13 == [
        "road", "sidewalk", "building", "traffic light", "traffic sign", "vegetation", "sky",
        "person", "rider", "car", "bus", "motorcycle", "bicycle",
    ]  # fmt: skip


def test_class_names_and_palettes():
    assert len(labels.class_names(19)) == 19 and labels.class_names(19)[13] == "car"
    assert len(labels.class_names(21)) == 21 and labels.class_names(21)[15] == "person"
    city = labels.palette(19)
    assert city.shape == (19, 3) and city.dtype == np.uint8
    # Official cityscapesScripts colours: road, sky, person, bicycle.
    assert city[0].tolist() == [128, 64, 128] and city[10].tolist() == [70, 130, 180]
    assert city[11].tolist() == [220, 20, 60] and city[18].tolist() == [119, 11, 32]
    voc = labels.palette(21)
    assert voc[0].tolist() == [0, 0, 0] and voc[1].tolist() == [128, 0, 0]
    assert voc[15].tolist() == [192, 128, 128] and voc[20].tolist() == [0, 64, 128]
    with pytest.raises(ValueError, match="num_classes = 7"):
        labels.palette(7)
    with pytest.raises(ValueError, match="num_classes = 20"):
        labels.class_names(20)


def test_colorize_picks_palette_and_blacks_out_ignore():
    label = np.array([[0, 255], [13, 18]], dtype=np.uint8)
    colour = labels.colorize(label)
    assert colour.shape == (2, 2, 3) and colour.dtype == np.uint8
    assert colour[0, 0].tolist() == [128, 64, 128] and colour[0, 1].tolist() == [0, 0, 0]
    assert colour[1, 0].tolist() == [0, 0, 142]
    voc = labels.colorize(np.array([[20, 15]], dtype=np.int64))  # 20 only exists in VOC
    assert voc[0, 0].tolist() == [0, 64, 128] and voc[0, 1].tolist() == [192, 128, 128]
    with pytest.raises(ValueError, match=r"\(H, W\) integer"):
        labels.colorize(np.zeros((2, 2, 3), dtype=np.uint8))
