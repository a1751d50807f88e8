"""engine/evaluate.py: confusion matrix, IoU and the nanmean protocol by hand; whole and sliding-window inference
against F.interpolate; evaluate() end to end on hand-made images with a fake segmenter."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segadapt.config import Data
from segadapt.config import Eval
from segadapt.evaluate import SYNTHIA_NOTE
from segadapt.evaluate import _window_starts
from segadapt.evaluate import confusion_matrix
from segadapt.evaluate import evaluate
from segadapt.evaluate import format_table
from segadapt.evaluate import iou
from segadapt.evaluate import mean_iou
from segadapt.evaluate import predict_slide
from segadapt.evaluate import predict_whole
from segadapt.evaluate import summarize

# Two 2x3 images, 3 classes. Label 255 and the out-of-range label 7 are ignored; class 2 is predicted only on
# ignored pixels, so it is absent from both counted ground truth and counted predictions (IoU NaN).
LABELS = torch.tensor([[[0, 0, 1], [1, 255, 0]], [[0, 0, 0], [1, 1, 7]]])
PREDS = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[0, 0, 1], [1, 0, 2]]])
# Counted (gt, pred) pairs: (0,0) x4, (0,1) x2, (1,1) x3, (1,0) x1.
CONF = [[4, 2, 0], [1, 3, 0], [0, 0, 0]]


def test_confusion_iou_and_miou_by_hand():
    conf = confusion_matrix(PREDS[:1], LABELS[:1], 3) + confusion_matrix(PREDS[1:], LABELS[1:], 3)
    assert conf.dtype == torch.int64
    assert conf.tolist() == CONF
    per_class = iou(conf)
    assert per_class.dtype == torch.float64
    assert per_class[0].item() == pytest.approx(4 / 7)  # 4 / (6 + 5 - 4)
    assert per_class[1].item() == pytest.approx(1 / 2)  # 3 / (4 + 5 - 3)
    assert math.isnan(per_class[2].item())
    assert mean_iou(per_class).item() == pytest.approx((4 / 7 + 1 / 2) / 2)  # nanmean skips the absent class
    assert confusion_matrix(PREDS, LABELS, 3).tolist() == CONF  # both images in one call


def test_class_predicted_but_absent_from_labels_counts_as_zero():
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    pred = torch.tensor([[[0, 2], [0, 0]]])
    per_class = iou(confusion_matrix(pred, label, 3))
    assert per_class[0].item() == pytest.approx(3 / 4)
    assert per_class[2].item() == 0.0
    assert math.isnan(per_class[1].item())
    assert mean_iou(per_class).item() == pytest.approx(3 / 8)


def test_confusion_matches_a_loop_oracle():
    # 2x3x4x5 with ignore pixels: the loop below is the specification.
    generator = torch.Generator().manual_seed(1)
    label = torch.randint(0, 5, (2, 3, 4, 5), generator=generator)
    label[label == 4] = 255
    pred = torch.randint(0, 4, (2, 3, 4, 5), generator=generator)
    want = [[0] * 4 for _ in range(4)]
    for gt, guess in zip(label.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if gt != 255:
            want[gt][guess] += 1
    assert confusion_matrix(pred, label, 4).tolist() == want


def test_confusion_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(PREDS, LABELS[:1], 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(PREDS.float(), LABELS, 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(PREDS, LABELS, 0)


def test_synthia_subsets():
    per_class = torch.full((19,), 0.5, dtype=torch.float64)
    per_class[[9, 14, 16]] = 0.0  # terrain, truck, train: outside both subsets
    per_class[3] = float("nan")  # wall absent: dropped by nanmean
    per_class[4] = 0.2  # fence: in the 16-class subset only
    assert mean_iou(per_class).item() == pytest.approx((14 * 0.5 + 0.2) / 18)
    assert mean_iou(per_class, (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)).item() == pytest.approx(
        (14 * 0.5 + 0.2) / 15
    )
    conf = torch.diag(torch.full((19,), 10, dtype=torch.long))
    conf[4, 4], conf[4, 0] = 1, 4  # fence IoU 1/5, road IoU 10/14
    result = summarize(conf, 19, "synthia13")
    road, fence = 10 / 14, 1 / 5
    assert result["miou"] == pytest.approx(100 * (17 + road + fence) / 19)
    assert result["miou16"] == pytest.approx(100 * (14 + road + fence) / 16)
    assert result["miou13"] == pytest.approx(100 * (12 + road) / 13)  # wall, fence, pole left out
    assert result["per_class"]["fence"] == pytest.approx(20.0)
    assert result["subset_note"] == SYNTHIA_NOTE and "19/16" in SYNTHIA_NOTE
    assert "miou13" not in summarize(conf, 19, "synthia16") and "miou16" not in summarize(conf, 19, "all")
    with pytest.raises(ValueError, match="subset"):
        mean_iou(per_class, (0, 19))


class _Constant(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, image):
        return {"main": self.logits, "aux": self.logits}


@pytest.mark.parametrize("align_corners", [True, False])
def test_predict_whole_matches_interpolate(align_corners):
    logits = torch.randn(2, 4, 3, 5)
    got = predict_whole(_Constant(logits), torch.zeros(2, 3, 24, 40), (17, 33), align_corners)
    want = F.interpolate(logits, size=(17, 33), mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(got, want)
    other = F.interpolate(logits, size=(17, 33), mode="bilinear", align_corners=not align_corners)
    assert not torch.allclose(got, other)  # the flag reaches the upsampler


def test_window_starts_end_at_the_border():
    assert _window_starts(10, 4, 3) == [0, 3, 6]  # ceil(6 / 3) + 1 = 3 windows, the last ends at 10
    assert _window_starts(11, 4, 3) == [0, 3, 6, 7]  # the 4th window is moved back from 9 to 7
    assert _window_starts(4, 4, 3) == [0]
    assert _window_starts(769, 769, 513) == [0]


class _Pointwise(nn.Module):
    """A 1x1 conv at stride 1: translation-equivariant, so windows must reproduce the whole-image logits."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, image):
        return {"main": self.conv(image)}


@pytest.mark.parametrize(
    "crop, label_size",
    [
        ((16, 10), None),  # overlapping windows in both directions, 23 and 37 are not multiples of the stride
        ((16, 10), (46, 74)),  # then resized to the label size
        ((40, 30), None),  # larger than the image: symmetric padding, cropped away again
        ((37, 23), (11, 19)),  # exactly one window
    ],
)
def test_predict_slide_equals_whole_for_translation_equivariant_model(crop, label_size):
    model = _Pointwise(5)
    image = torch.randn(2, 3, 23, 37)
    with torch.no_grad():
        got = predict_slide(model, image, crop, 2 / 3, 5, True, label_size)
        want = predict_whole(model, image, label_size or (23, 37), True)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_predict_slide_rejects_bad_settings():
    with pytest.raises(ValueError, match="eval.stride_ratio"):
        predict_slide(_Pointwise(2), torch.zeros(1, 3, 8, 8), (4, 4), 0.0, 2, True)
    with pytest.raises(ValueError, match="eval.crop"):
        predict_slide(_Pointwise(2), torch.zeros(1, 3, 8, 8), (0, 4), 0.5, 2, True)


# --------------------------------------------------------------------------------------------- evaluate end to end
class _ColourModel(nn.Module):
    """Logits = the RGB pixels (class 0 red, 1 green, 2 blue), at stride 8 or 1; records the mode it ran in."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride
        self.norm = nn.BatchNorm2d(3)
        self.seen = []

    def forward(self, image):
        self.seen.append((self.training, self.norm.training, torch.is_inference_mode_enabled()))
        return {"main": F.avg_pool2d(image, self.stride) if self.stride > 1 else image}


def _samples():
    """Image a: left half red, right half green, label 32x32 (native, twice the input) with its top row class 2
    and bottom row ignored. Image b: all red, all class 0."""
    red_green = np.zeros((16, 16, 3), dtype=np.uint8)
    red_green[:, :8, 0] = 255
    red_green[:, 8:, 1] = 255
    label_a = np.zeros((32, 32), dtype=np.int64)
    label_a[:, 16:] = 1
    label_a[0] = 2
    label_a[31] = 255
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    for image, label, name in ((red_green, label_a, "city/a"), (red, np.zeros((32, 32), np.int64), "b")):
        yield torch.from_numpy(image)[None], torch.from_numpy(label)[None], name


# (0,0): 30 rows x 16 + 1024 = 1504; (1,1): 30 x 16 = 480; (2,0) = (2,1) = 16.
WANT_CONF = [[1504, 0, 0], [0, 480, 0], [16, 16, 0]]
WANT_IOU = {"class_0": 100 * 1504 / 1520, "class_1": 100 * 480 / 496, "class_2": 0.0}
DATA = Data(channel_order="rgb", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "stride, mode, batch_size, align_corners",
    [(8, "whole", 1, True), (8, "whole", 2, False), (1, "whole", 1, True), (1, "slide", 1, True)],
)
def test_evaluate_end_to_end(tmp_path, stride, mode, batch_size, align_corners):
    model = _ColourModel(stride).train()
    eval_cfg = Eval(
        input_size=(16, 16), align_corners=align_corners, mode=mode, crop=(10, 12), batch_size=batch_size,
        save_predictions=1,
    )  # fmt: skip
    calls = []

    def autocast():
        calls.append(1)
        return torch.autocast("cpu", enabled=False)

    result = evaluate(model, _samples(), DATA, eval_cfg, 3, "cpu", out_dir=tmp_path, autocast=autocast)
    assert result["confusion"] == WANT_CONF
    assert result["per_class"] == pytest.approx(WANT_IOU)
    assert result["miou"] == pytest.approx(sum(WANT_IOU.values()) / 3)
    assert result["images"] == 2 and result["mode"] == mode
    assert calls and all(seen == (False, False, True) for seen in model.seen)
    assert model.training and model.norm.training  # train mode restored
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["miou"] == pytest.approx(result["miou"]) and written["confusion"] == WANT_CONF
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["city_a_image.png", "city_a_label.png", "city_a_pred.png"]
    pred = np.asarray(Image.open(tmp_path / "city_a_pred.png"))
    label = np.asarray(Image.open(tmp_path / "city_a_label.png"))
    assert pred.shape == (32, 32, 3) and tuple(pred[5, 0]) == (128, 64, 128) and tuple(pred[5, 31]) == (244, 35, 232)
    assert (label[31] == 0).all() and tuple(label[0, 0]) == (70, 70, 70)  # ignore black, class 2 "building" grey
    assert np.asarray(Image.open(tmp_path / "city_a_image.png")).shape == (16, 16, 3)


def test_evaluate_restores_mixed_modes_and_caps_images():
    model = _ColourModel(8).train()
    model.norm.eval()  # a frozen submodule must stay frozen

    def first_then_fail():
        yield next(_samples())
        raise AssertionError("evaluate read past eval.max_images")

    result = evaluate(model, first_then_fail(), DATA, Eval(input_size=(16, 16), max_images=1), 3, "cpu")
    assert result["images"] == 1
    assert result["confusion"] == [[480, 0, 0], [0, 480, 0], [16, 16, 0]]
    assert model.training and not model.norm.training


def test_evaluate_rejects_bad_config():
    with pytest.raises(ValueError, match="eval.mode"):
        evaluate(_ColourModel(8), _samples(), DATA, Eval(mode="tiles"), 3, "cpu")
    with pytest.raises(ValueError, match="eval.class_subset"):
        evaluate(_ColourModel(8), _samples(), DATA, Eval(class_subset="synthia16"), 3, "cpu")
    with pytest.raises(ValueError, match="no image"):
        evaluate(_ColourModel(8), iter(()), DATA, Eval(), 3, "cpu")


def test_format_table():
    results = {
        "sourceonly": {"per_class": {"class_0": 50.0, "class_1": None}, "miou": 50.0},
        "adaptsegnet": {"per_class": {"class_0": 61.234, "class_1": 20.0}, "miou": 40.617},
    }
    lines = format_table(results, 2).splitlines()
    assert lines[0] == "| class | sourceonly | adaptsegnet |"
    assert lines[2] == "| class_0 | 50.00 | 61.23 |"
    assert lines[3] == "| class_1 | - | 20.00 |"
    assert lines[-1] == "| **mIoU** | **50.00** | **40.62** |"
    assert len(lines) == 5


@pytest.mark.gpu
def test_confusion_does_not_sync_on_cuda():
    label = torch.randint(0, 19, (2, 64, 64), device="cuda")
    pred = torch.randint(0, 19, (2, 64, 64), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        conf = confusion_matrix(pred, label, 19)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert conf.sum().item() == 2 * 64 * 64
