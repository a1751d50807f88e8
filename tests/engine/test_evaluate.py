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
from segadapt.evaluate import summarize_official

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


# ------------------------------------------------------------------------ official protocols (issue 17.5, 17.8d)
def _official_jaccard(conf: np.ndarray) -> float:
    """hfslyc/AdvSemiSeg utils/metric.py:50-57 ConfusionMatrix.jaccard: IoU appended only where M[i, i] != 0, then
    np.sum(jaccard_perclass) / len(jaccard_perclass)."""
    kept = []
    for i in range(conf.shape[0]):
        if conf[i, i] != 0:
            kept.append(conf[i, i] / (np.sum(conf[i, :]) + np.sum(conf[:, i]) - conf[i, i]))
    return float(np.sum(kept) / len(kept))


def test_nonzero_diagonal_metric_is_advsemi_jaccard_and_differs_from_nanmean():
    from segadapt.evaluate import mean_iou_nonzero_diagonal

    conf = torch.tensor([[50, 5, 0, 3], [10, 0, 0, 0], [0, 0, 0, 0], [2, 0, 0, 7]])  # class 1 present at IoU 0
    assert mean_iou_nonzero_diagonal(conf).item() == pytest.approx(_official_jaccard(conf.numpy()), rel=1e-12)
    assert mean_iou_nonzero_diagonal(conf).item() > mean_iou(iou(conf)).item()  # the IoU-0 class left the mean
    result = summarize_official(conf, 4, "advsemi_voc", "nonzero_diagonal")
    assert result["miou_official"] == pytest.approx(100 * _official_jaccard(conf.numpy()))


class _Stride8(nn.Module):
    """A fixed 8x8 stride-8 conv: position-dependent logits, so padding and cropping change the prediction."""

    def __init__(self, num_classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, num_classes, 8, stride=8, padding=3)

    def forward(self, image):
        return {"main": self.conv(image)}


def _voc_like(seed=0, size=(37, 45)):
    rng = np.random.default_rng(seed)
    for index in range(2):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, 4, size).astype(np.int64)
        label[0, :5] = 255
        yield torch.from_numpy(image)[None], torch.from_numpy(label)[None], f"im{index}"


def test_advsemi_voc_protocol_is_evaluate_voc():
    """evaluate_voc.py:202-225: VOCDataSet(crop_size=(505, 505)) pads the mean-subtracted image with 0 at the bottom
    and right (voc_dataset.py:55-62), interp = nn.Upsample(size=(505, 505), align_corners=True), output[:, :h, :w],
    argmax; get_iou's ConfusionMatrix.jaccard for the mean."""
    model = _Stride8()
    data = Data(channel_order="rgb", mean=(122.67891434, 116.66876762, 104.00698793))
    conf = np.zeros((4, 4))
    interp = nn.Upsample(size=(505, 505), mode="bilinear", align_corners=True)
    for image, label, _ in _voc_like():
        normalised = image[0].numpy().astype(np.float32) - np.array(data.mean, np.float32)
        padded = np.zeros((505, 505, 3), np.float32)  # cv2.copyMakeBorder(..., value=(0.0, 0.0, 0.0))
        padded[: normalised.shape[0], : normalised.shape[1]] = normalised
        with torch.no_grad():
            output = interp(model(torch.from_numpy(padded.transpose(2, 0, 1).copy())[None])["main"])[0].numpy()
        h, w = label.shape[-2:]
        output = np.argmax(output[:, :h, :w].transpose(1, 2, 0), axis=2)
        gt = label[0].numpy()
        for g, p in zip(gt.flatten(), output.flatten(), strict=True):
            if g < 4:  # utils/metric.py generateM: gt[i] < nclass
                conf[g, p] += 1
    eval_cfg = Eval(input_size=(0, 0), protocol="advsemi_voc", metric="nonzero_diagonal")
    result = evaluate(model, _voc_like(), data, eval_cfg, 4, "cpu")
    assert result["miou_official"] == pytest.approx(100 * _official_jaccard(conf), rel=1e-9)
    standard = evaluate(model, _voc_like(), data, Eval(input_size=(0, 0)), 4, "cpu")
    assert result["miou"] == pytest.approx(standard["miou"])  # the headline stays the standard protocol
    assert result["miou_official"] != pytest.approx(result["miou"])


def test_lsd_cityscapes_protocol_is_argmax_then_pil_nearest():
    """swamiviv/LSD-seg code/eval_cityscapes.py:126-131: lbl_pred = score.max(1)[1] at the input size, then
    transform_label (:69-77): Image.fromarray(uint8).resize((2048, 1024), Image.NEAREST)."""
    from segadapt.evaluate import predict_lsd_cityscapes

    logits = torch.randn(2, 19, 32, 64, generator=torch.Generator().manual_seed(4))
    got = predict_lsd_cityscapes(logits, (32, 64), (103, 207), True)
    for index in range(2):
        pred = logits[index].argmax(0).numpy().astype(np.uint8)
        official = np.array(Image.fromarray(pred).resize((207, 103), Image.NEAREST), dtype=np.int32)
        np.testing.assert_array_equal(got[index].numpy(), official)
    standard = F.interpolate(logits, size=(103, 207), mode="bilinear", align_corners=True).argmax(1)
    assert (standard != got).float().mean() > 0.05  # the two protocols differ on random logits


def test_lsd_cityscapes_protocol_in_evaluate_scores_both():
    model = _Pointwise(3)
    samples = list(_samples())  # 16x16 images, 32x32 labels
    result = evaluate(model, iter(samples), DATA, Eval(input_size=(16, 16), protocol="lsd_cityscapes"), 3, "cpu")
    conf = torch.zeros(3, 3, dtype=torch.int64)
    with torch.no_grad():
        for image, label, _ in samples:
            logits = model(image.permute(0, 3, 1, 2).float())["main"]
            pred = np.array(Image.fromarray(logits[0].argmax(0).numpy().astype(np.uint8)).resize((32, 32), 0))
            conf += confusion_matrix(torch.from_numpy(pred.astype(np.int64))[None], label, 3)
    assert result["miou_official"] == pytest.approx(100 * mean_iou(iou(conf)).item())
    assert result["official"]["protocol"] == "lsd_cityscapes" and result["official"]["metric"] == "nanmean"


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"protocol": "caffe"}, "eval.protocol = 'caffe'"), ({"metric": "mean"}, "eval.metric = 'mean'"),
     ({"protocol": "lsd_cityscapes", "mode": "slide"}, "eval.mode must be"),
     ({"protocol": "advsemi_voc", "input_size": (16, 16)}, "eval.input_size must be")],
)  # fmt: skip
def test_official_protocol_settings_are_checked(settings, match):
    with pytest.raises(ValueError, match=match):
        evaluate(_ColourModel(8), _samples(), DATA, Eval(**settings), 3, "cpu")


@pytest.mark.parametrize("recipe", ["advsemi_voc_1_8", "advsemi_voc_1_4", "advsemi_voc_1_2", "advsemi_voc_full"])
def test_advsemi_paper_recipes_report_the_official_protocol_beside_the_standard(recipe):
    from segadapt import config

    cfg = config.load(recipe).eval
    assert (cfg.protocol, cfg.metric, tuple(cfg.input_size)) == ("advsemi_voc", "nonzero_diagonal", (0, 0))
