"""AdvSemiSeg's step equals a direct transcription of the official hfslyc/AdvSemiSeg train.py iteration."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import NUM_CLASSES
from test_methods import _batch

import segadapt.methods.advsemiseg as advsemiseg
from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer

SEMI_START = 3
# 64x96 so that D's 1/32 map is 2x3, not one constant pixel: its upsampled confidences then differ per pixel.
SIZE = (64, 96)


# ----------------------------------------------------------------------------------- official transcription
def _interp(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _bce_loss(predict, target):
    """utils/loss.py BCEWithLogitsLoss2d: drop target 255 (and < 0), mean over the rest, 0 when none is left."""
    mask = (target >= 0) & (target != 255)
    if not mask.any():
        return predict.sum() * 0
    return F.binary_cross_entropy_with_logits(predict[mask], target[mask])


def _loss_calc(pred, label):
    """utils/loss.py CrossEntropy2d: pixels with label in [0, 255) only, mean; 0 when none is valid."""
    n, c, h, w = pred.shape
    mask = (label >= 0) & (label != 255)
    if not mask.any():
        return pred.sum() * 0
    flat = pred.permute(0, 2, 3, 1)[mask].view(-1, c)
    return F.cross_entropy(flat, label[mask])


def _make_d_label(value, ignore_mask):
    ignore_mask = np.expand_dims(ignore_mask, axis=1)
    d_label = np.ones(ignore_mask.shape) * value
    d_label[ignore_mask] = 255
    return torch.FloatTensor(d_label)


def _one_hot(label):
    label = label.numpy()
    out = np.zeros((label.shape[0], NUM_CLASSES, label.shape[1], label.shape[2]), dtype=label.dtype)
    for i in range(NUM_CLASSES):
        out[:, i, ...] = label == i
    return torch.FloatTensor(out)


def _official_gradients(method, batch, cfg, i_iter, run_semi=True):
    """One official iteration (train.py main loop, iter_size 1); returns (segmenter grads, D grads).

    `run_semi` False is the configuration where the official branch is skipped (step < semi_start_adv); there
    `pred_remain` would be undefined, so D's fake batch is the labelled predictions only (the engine's choice).
    """
    model, model_d = method.model, method.discriminators["confidence"]
    model_params = [p for p in model.parameters() if p.requires_grad]
    g_loss = 0.0
    d_remain = None
    if run_semi:
        images = batch["unlabeled"]["image"]
        size = tuple(images.shape[-2:])
        pred = _interp(model(images)["main"], size)
        d_remain = pred.detach()
        d_out = _interp(model_d(F.softmax(pred, dim=1)), size)
        d_out_sigmoid = torch.sigmoid(d_out).detach().numpy().squeeze(axis=1)
        ignore_mask_remain = np.zeros(d_out_sigmoid.shape).astype(bool)
        loss_semi_adv = cfg.lambda_semi_adv * _bce_loss(d_out, _make_d_label(1, ignore_mask_remain))
        if cfg.lambda_semi <= 0 or i_iter < cfg.semi_start:
            g_loss = loss_semi_adv
        else:
            semi_ignore_mask = d_out_sigmoid < cfg.mask_t
            semi_gt = pred.detach().numpy().argmax(axis=1)
            semi_gt[semi_ignore_mask] = 255
            semi_ratio = 1.0 - float(semi_ignore_mask.sum()) / semi_ignore_mask.size
            if semi_ratio != 0.0:
                g_loss = cfg.lambda_semi * _loss_calc(pred, torch.from_numpy(semi_gt)) + loss_semi_adv
    images, labels = batch["labeled"]["image"], batch["labeled"]["label"]
    size = tuple(images.shape[-2:])
    ignore_mask = labels.numpy() == 255
    pred = _interp(model(images)["main"], size)
    loss_seg = _loss_calc(pred, labels)
    d_out = _interp(model_d(F.softmax(pred, dim=1)), size)
    loss_adv_pred = _bce_loss(d_out, _make_d_label(1, ignore_mask))
    loss = g_loss + loss_seg + cfg.lambda_adv_pred * loss_adv_pred
    model_grads = torch.autograd.grad(loss, model_params, allow_unused=True)

    pred = pred.detach()
    if cfg.d_remain and d_remain is not None:
        pred = torch.cat((pred, d_remain), 0)
        ignore_mask = np.concatenate((ignore_mask, ignore_mask_remain), axis=0)
    loss_d = _bce_loss(_interp(model_d(F.softmax(pred, dim=1)), size), _make_d_label(0, ignore_mask)) / 2
    # train.py:435-445: labels_gt of the next trainloader_gt batch (its own sampler over the labelled ids); the cases
    # without a "labeled_real" stream stand in the labelled batch's labels (method.d_real_stream = false)
    gt = batch.get("labeled_real", batch["labeled"])["label"]
    loss_d = loss_d + _bce_loss(_interp(model_d(_one_hot(gt)), size), _make_d_label(1, gt.numpy() == 255)) / 2
    return model_grads, torch.autograd.grad(loss_d, list(model_d.parameters()))


# ------------------------------------------------------------------------------------------------- helpers
def _method(**overrides):
    cfg = config.load_dict(
        {
            "model": {"name": "toy", "width": 4, "num_classes": NUM_CLASSES},
            # Large adversarial weights so a wrong order, target or missing freeze shows in the gradients.
            "method": {
                "name": "advsemiseg", "lambda_adv_pred": 0.5, "lambda_semi": 0.7, "lambda_semi_adv": 0.3,
                "semi_start": SEMI_START, **overrides,
            },
        },
        "test.toml",
    )  # fmt: skip
    method = build_method(build_segmenter(cfg.model), cfg)
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in method.optimizers(cfg.optim).items()}
    # iter_size 2 at micro-step 0: gradients accumulate (divided by 2) and nothing steps, so they can be read.
    ctx = StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers, iter_size=2)
    return method, ctx


def _unlabeled_confidence(method, batch):
    """sigmoid(interp(D(softmax(interp(pred))))) on the unlabelled images, computed here from the definition."""
    image = batch["unlabeled"]["image"]
    with torch.no_grad():
        pred = _interp(method.model(image)["main"], image.shape[-2:])
        return pred, torch.sigmoid(_interp(method.discriminators["confidence"](F.softmax(pred, 1)), image.shape[-2:]))


def _median_mask_t(method, batch) -> float:
    """A T_semi splitting the confidences near their median, halfway across the widest gap in the middle half, so the
    mask has kept and dropped pixels and no pixel sits within rounding of the threshold."""
    values = _unlabeled_confidence(method, batch)[1].flatten().sort().values
    middle = values[values.numel() // 4 : 3 * values.numel() // 4]
    k = int((middle[1:] - middle[:-1]).argmax())
    return float((middle[k] + middle[k + 1]) / 2)


CASES = [
    # (name, step, mask_t: "median" | float, extra overrides)
    ("before_semi_start", 0, 0.2, {}),
    ("after_semi_start", SEMI_START, "median", {}),
    ("after_semi_start_no_d_remain", SEMI_START + 5, "median", {"d_remain": False}),
    ("no_confident_pixel", SEMI_START, 1.0, {}),
    ("before_semi_start_adv", 0, 0.2, {"semi_start_adv": 1}),
    ("d_real_stream", SEMI_START, "median", {"d_real_stream": True}),
]


# Every case on the reference ops; the Triton ops (slow under the CPU interpreter) on the two pseudo-label cases.
TRITON_CASES = ("after_semi_start", "no_confident_pixel")
RUNS = [("torch", c) for c in CASES] + [("triton", c) for c in CASES if c[0] in TRITON_CASES]


@pytest.mark.parametrize("kernels, case", RUNS, ids=[f"{k}-{c[0]}" for k, c in RUNS])
def test_gradients_match_the_official_iteration(kernels, case, monkeypatch):
    monkeypatch.setenv("SEGADAPT_KERNELS", kernels)
    _, step, mask_t, overrides = case
    batch = _batch(SIZE)
    method, ctx = _method(**overrides)
    if mask_t == "median":
        method.cfg = dataclasses.replace(method.cfg, mask_t=_median_mask_t(method, batch))
    else:
        method.cfg = dataclasses.replace(method.cfg, mask_t=mask_t)
    ctx.step_index = step
    if method.cfg.d_real_stream:  # other labelled images: the labelled labels swapped and shifted
        real = _batch(SIZE)["labeled"]["label"].flip(0).roll(5, dims=2)
        batch["labeled_real"] = {"image": torch.zeros(2, 3, *SIZE), "label": real}
        assert method.streams == ("labeled", "unlabeled", "labeled_real")
    run_semi = step >= method.cfg.semi_start_adv
    want_model, want_d = _official_gradients(method, batch, method.cfg, step, run_semi)
    if not run_semi:
        batch.pop("unlabeled")  # the skipped branch must not read the stream
    losses = method.train_step(batch, ctx)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert ("loss/semi" in losses) == (run_semi and step >= SEMI_START)
    got_model = [p.grad for p in method.model.parameters() if p.requires_grad]
    for i, (got, want) in enumerate(zip(got_model, want_model, strict=True)):
        if want is None:  # the aux head: Res_Deeplab has none, so no loss reaches it
            assert got is None, f"model param {i} got a gradient the official model has no loss for"
            continue
        torch.testing.assert_close(got * 2, want, atol=1e-5, rtol=1e-4, msg=lambda m, i=i: f"[model param {i}] {m}")
    for i, (p, want) in enumerate(zip(method.discriminators.parameters(), want_d, strict=True)):
        torch.testing.assert_close(p.grad * 2, want, atol=1e-5, rtol=1e-4, msg=lambda m, i=i: f"[D param {i}] {m}")


def test_pseudo_label_mask_is_sigmoid_of_d_at_least_mask_t(monkeypatch):
    batch = _batch(SIZE)
    method, ctx = _method()
    mask_t = _median_mask_t(method, batch)
    method.cfg = dataclasses.replace(method.cfg, mask_t=mask_t)
    ctx.step_index = SEMI_START
    seen = []

    def spy(*args, **kwargs):
        seen.append(advsemiseg_pseudo_label(*args, **kwargs)[0])
        return seen[-1], None, None

    advsemiseg_pseudo_label = advsemiseg.pseudo_label
    monkeypatch.setattr(advsemiseg, "pseudo_label", spy)
    pred, confidence = _unlabeled_confidence(method, batch)
    method.train_step(batch, ctx)
    (label,) = seen
    keep = confidence[:, 0] >= mask_t
    assert 0 < keep.sum() < keep.numel(), "the test threshold should split the pixels"
    torch.testing.assert_close(label != 255, keep)
    torch.testing.assert_close(label[keep], pred.argmax(1)[keep])


def test_no_confident_pixel_gives_zero_semi_loss_not_nan():
    batch = _batch(SIZE)
    method, ctx = _method(mask_t=1.0)
    ctx.step_index = SEMI_START
    losses = method.train_step(batch, ctx)
    assert losses["loss/semi"] == 0
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_full_data_setting_reads_no_unlabeled_stream():
    method, ctx = _method(lambda_semi=0.0, lambda_semi_adv=0.0)
    assert method.streams == ("labeled",)
    batch = _batch(SIZE)
    batch.pop("unlabeled")
    losses = method.train_step(batch, ctx)
    assert {k for k in losses if k.startswith("loss/")} == {"loss/seg", "loss/adv_pred", "loss/d"}
    assert {k for k in losses if k.startswith("diag/")} == {"diag/d_acc_fake", "diag/d_acc_real"}  # no unlabelled


def test_d_target_masks_ignore_pixels():
    label = torch.tensor([[[0, 255, 3], [255, 1, 2]]])
    assert advsemiseg.d_target(label, 1).tolist() == [[[1, 255, 1], [255, 1, 1]]]
    assert advsemiseg.d_target(label, 0).dtype == torch.uint8


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("lambda_semi", -0.1, "method.lambda_semi"),
        ("mask_t", 1.5, "method.mask_t"),
        ("semi_start", -1, "method.semi_start"),
        ("gt_label", 0, "method.gt_label"),
        ("d_lr", 0.0, "method.d_lr"),
    ],
)
def test_config_errors_are_named(key, value, match):
    with pytest.raises(ValueError, match=match):
        _method(**{key: value})


def test_d_remain_needs_equal_sizes():
    batch = _batch(SIZE)
    batch["unlabeled"] = _batch(size=(32, 48))["unlabeled"]
    method, ctx = _method()
    with pytest.raises(ValueError, match="data.labeled and data.unlabeled"):
        method.train_step(batch, ctx)


@pytest.mark.parametrize("recipe", ["advsemi_voc_1_8", "advsemi_voc_1_4", "advsemi_voc_1_2", "advsemi_voc_full"])
def test_paper_recipes_use_the_official_repeated_backbone_group(recipe):
    # hfslyc/AdvSemiSeg model/deeplab.py:179-202 get_1x_lr_params_NOscale, train.py optim.SGD(optim_parameters(args))
    assert config.load(recipe).optim.official_repeated_groups is True


@pytest.mark.parametrize("recipe", ["advsemi_voc_1_8", "advsemi_voc_1_4", "advsemi_voc_1_2", "advsemi_voc_full"])
def test_paper_recipes_feed_the_official_rgb_after_mean_input(recipe):
    """hfslyc/AdvSemiSeg dataset/voc_dataset.py:49,54-55,74 (VOCDataSet; evaluate_voc.py reads through it too):
    cv2.imread gives BGR, IMG_MEAN (train.py:31, float32, B G R) is subtracted, then `image[:, :, ::-1]` ("change
    to BGR") reverses the channels: the network sees (R - 122.68, G - 116.67, B - 104.01)."""
    from segadapt.data.batch import normalize

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img_mean = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
    bgr = np.asarray(rgb[:, :, ::-1], np.float32)  # what cv2.imread returns
    bgr -= img_mean
    official = bgr[:, :, ::-1].transpose((2, 0, 1))
    ours = normalize(torch.from_numpy(rgb)[None], config.load(recipe).data, "cpu")[0]
    assert torch.equal(ours, torch.from_numpy(official.copy()))
