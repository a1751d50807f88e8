"""Mix-and-Match: patch sampling rules, crop, class-wise graph, triplet loss, colour targets, stage-to-stage weights."""

import math

import pytest
import torch

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods.mixmatch import class_graph
from segadapt.methods.mixmatch import colour_bins
from segadapt.methods.mixmatch import crop_patches
from segadapt.methods.mixmatch import rgb_to_lch
from segadapt.methods.mixmatch import sample_patches
from segadapt.methods.mixmatch import triplet_loss
from segadapt.models import build_segmenter
from segadapt.models import load_pretrained
from segadapt.optim import make_optimizer
from segadapt.train import split_state


def _mm(**changes) -> config.MixMatch:
    return config.MixMatch(**changes)


def _iou(a, b) -> float:
    """Loop-free scalar IoU of two squares (x0, y0, side), transcribed."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] ** 2 + b[2] ** 2 - inter)


# ------------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("seed", range(4))
def test_sample_patches_rules(seed):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (3, 60, 80), generator=g)
    label[:, :, :20] = 255  # an ignored band: no patch may be centred there
    label[1] = 0  # an all-background image: at most round(bg_ratio * k) patches
    cfg = _mm(patches_per_image=9, side_range=(10, 30), bg_ratio=0.25, bg_class=0, max_overlap=0.6)
    boxes, classes, kept = sample_patches(label, cfg)
    assert boxes.shape == (3, 9, 3) and classes.shape == kept.shape == (3, 9)
    cap = round(0.25 * 9)
    for i in range(3):
        keep = [j for j in range(9) if kept[i, j]]
        assert sum(int(classes[i, j] == 0) for j in keep) <= cap
        for j in keep:
            x0, y0, side = boxes[i, j].tolist()
            assert 10 <= side <= 30 and x0 >= 0 and y0 >= 0 and x0 + side <= 80 + 1e-4 and y0 + side <= 60 + 1e-4
            cx, cy = math.floor(x0 + side / 2), math.floor(y0 + side / 2)
            assert classes[i, j] == label[i, cy, cx] != 255, "patch label = class at the centre pixel"
            for other in keep:
                if other != j:
                    assert _iou(boxes[i, j].tolist(), boxes[i, other].tolist()) <= 0.6 + 1e-6
    assert int(kept[1].sum()) == cap  # background-only image: exactly the cap is used
    assert int(kept[0].sum()) == 9 and int(kept[2].sum()) == 9  # plenty of room: every slot is filled


def test_sample_patches_clamps_the_side_to_the_image_and_masks_unlabelled_images():
    label = torch.full((2, 16, 24), 255)
    label[0] = 3
    boxes, classes, kept = sample_patches(label, _mm(side_range=(64, 256), bg_class=-1))
    assert torch.all(boxes[0, kept[0], 2] == 16)  # side clamped to min(H, W)
    assert kept[0].any() and not kept[1].any()
    assert torch.all(classes[0, kept[0]] == 3)


def test_crop_patches_equals_slicing_and_2x2_averages():
    image = torch.randn(2, 3, 20, 24)
    boxes = torch.tensor([[[0.0, 0.0, 8.0], [5.0, 7.0, 8.0]], [[16.0, 12.0, 8.0], [3.0, 2.0, 8.0]]])
    patches = crop_patches(image, boxes, 8)
    for i in range(2):
        for j in range(2):
            x0, y0, s = (int(v) for v in boxes[i, j])
            torch.testing.assert_close(patches[i * 2 + j], image[i, :, y0 : y0 + s, x0 : x0 + s])
    half = crop_patches(image, torch.tensor([[[2.0, 4.0, 16.0]], [[6.0, 0.0, 16.0]]]), 8)
    want = image[1, :, 0:16, 6:22].reshape(3, 8, 2, 8, 2).mean(dim=(2, 4))
    torch.testing.assert_close(half[1], want)  # side 16 -> 8: bilinear at 2x2 block centres = their mean


# --------------------------------------------------------------------------------------------------------- graph
def _components(nodes: list[int], edges: list[tuple[int, int]]) -> int:
    parent = {n: n for n in nodes}

    def find(n):
        while parent[n] != n:
            n = parent[n]
        return n

    for a, b in edges:
        parent[find(a)] = find(b)
    return len({find(n) for n in nodes})


@pytest.mark.parametrize("seed", range(25))
def test_class_graph_gives_every_patch_a_positive_and_negative_whenever_possible(seed):
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 40, (1,), generator=g))
    classes = torch.randint(0, int(torch.randint(1, 6, (1,), generator=g)), (m,), generator=g)
    valid = torch.rand(m, generator=g) > 0.2
    positive, negative, has_positive, has_negative = class_graph(classes, valid)
    for i in range(m):
        same = [j for j in range(m) if j != i and valid[j] and classes[j] == classes[i]]
        other = [j for j in range(m) if valid[j] and classes[j] != classes[i]]
        assert bool(has_positive[i]) == (bool(valid[i]) and bool(same))
        assert bool(has_negative[i]) == (bool(valid[i]) and bool(other))
        if has_positive[i]:
            assert int(positive[i]) in same
        if has_negative[i]:
            assert int(negative[i]) in other
    for c in classes[valid].unique().tolist():  # class-wise connected: positive edges join each class into one tree
        nodes = [i for i in range(m) if valid[i] and classes[i] == c]
        edges = [(i, int(positive[i])) for i in nodes if has_positive[i]]
        assert _components(nodes, edges) == 1


# ---------------------------------------------------------------------------------------------------------- loss
def test_triplet_loss_matches_the_loop_transcription():
    q, p, n = (torch.nn.functional.normalize(torch.randn(7, 5), dim=1) for _ in range(3))
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    total, count = 0.0, 0
    for i in range(7):
        if mask[i]:
            total += max(0.0, 2.1 + float(((q[i] - p[i]) ** 2).sum()) - float(((q[i] - n[i]) ** 2).sum()))
            count += 1
    torch.testing.assert_close(triplet_loss(q, p, n, mask, 2.1), torch.tensor(total / (2 * count)))
    assert triplet_loss(q, p, n, torch.zeros(7, dtype=torch.bool), 2.1) == 0  # no triplet: 0, not NaN


# -------------------------------------------------------------------------------------------------------- colour
def test_rgb_to_lch_known_colours_and_bins():
    rgb = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])  # rows R, G, B; columns red, white, green
    lightness, chroma, hue = rgb_to_lch(rgb)
    # CIE Lab (D65) of sRGB red (53.24, 80.09, 67.20), white (100, 0, 0), green (87.73, -86.18, 83.18)
    torch.testing.assert_close(lightness, torch.tensor([53.24, 100.0, 87.73]), atol=0.02, rtol=0)
    torch.testing.assert_close(chroma, torch.tensor([math.hypot(80.09, 67.20), 0.0, math.hypot(86.18, 83.18)]),
                               atol=0.05, rtol=0)  # fmt: skip
    torch.testing.assert_close(hue[[0, 2]], torch.tensor([math.atan2(67.20, 80.09), math.atan2(83.18, -86.18)]),
                               atol=1e-3, rtol=0)  # fmt: skip
    chroma_bin, hue_bin, weight = colour_bins(torch.tensor([0.0, 64.0, 500.0]), torch.tensor([-math.pi, 0.0, 3.1]),
                                              32, 128.0)  # fmt: skip
    assert chroma_bin.tolist() == [0, 16, 31] and hue_bin.tolist() == [0, 16, 31]
    torch.testing.assert_close(weight, torch.tensor([0.0, 0.5, 1.0]))


# --------------------------------------------------------------------------------------------- methods and stages
def _method(name: str, **method):
    cfg = config.load_dict(
        {"model": {"name": "hypercolumn", "width": 4, "num_classes": 5, "multi_level": False},
         "method": {"name": name, **method}},
        "test.toml",
    )  # fmt: skip
    model = build_segmenter(cfg.model)
    method = build_method(model, cfg)
    specs = method.optimizers(cfg.optim)
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in specs.items()}
    return cfg, method, StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers, 1)


def _batch(stream: str, labels=None):
    image = torch.randn(2, 3, 32, 48).contiguous(memory_format=torch.channels_last) * 40
    label = torch.randint(0, 3, (2, 32, 48)) if labels is None else labels
    return {stream: {"image": image, "label": label}}


def test_mixmatch_without_triplets_is_zero_and_finite():
    _, method, ctx = _method("mixmatch", side_range=[8, 16], output_size=32)
    losses = method.train_step(_batch("labeled", torch.full((2, 32, 48), 255)), ctx)
    assert losses["loss/triplet"] == 0


def test_mixmatch_loss_is_the_triplet_loss_of_its_own_graph(monkeypatch):
    _, method, ctx = _method("mixmatch", side_range=[8, 16], output_size=32, bg_class=-1)
    seen = {}
    original = triplet_loss

    def spy(q, p, n, mask, margin):
        seen.update(mask=mask, margin=margin, q=q)
        return original(q, p, n, mask, margin)

    monkeypatch.setattr("segadapt.methods.mixmatch.triplet_loss", spy)
    losses = method.train_step(_batch("labeled"), ctx)
    assert seen["margin"] == 2.1 and seen["mask"].any() and losses["loss/triplet"] > 0
    torch.testing.assert_close(seen["q"].norm(dim=1), torch.ones(len(seen["q"])))  # unit-norm pool5 features


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="method.side_range"):
        _method("mixmatch", side_range=[20, 10])
    with pytest.raises(ValueError, match="method.candidates_per_image"):
        _method("mixmatch", candidates_per_image=4)
    cfg = config.load_dict({"model": {"name": "toy", "width": 4}, "method": {"name": "colorization"}}, "t.toml")
    with pytest.raises(ValueError, match="model.name = 'hypercolumn'"):
        build_method(build_segmenter(cfg.model), cfg)


def _save_stage(cfg, method, path):
    payload = {"models": split_state(method), "config": config.to_dict(cfg), "step": 1}
    torch.save(payload, path)


def test_stage_to_stage_checkpoints_carry_the_backbone(tmp_path):
    cfg, colour, ctx = _method("colorization")
    colour.train_step(_batch("unlabeled"), ctx)
    _save_stage(cfg, colour, tmp_path / "colour.pt")
    assert any(k.startswith("colour_head.") for k in split_state(colour)["extra"])

    model = {"name": "hypercolumn", "width": 4, "num_classes": 5, "multi_level": False}
    method = {"name": "mixmatch", "side_range": [8, 16], "output_size": 32}
    cfg_mm = config.load_dict({"model": {**model, "pretrained": str(tmp_path / "colour.pt")}, "method": method}, "t")
    mixmatch = build_method(build_segmenter(cfg_mm.model), cfg_mm)
    for key, value in colour.model.state_dict().items():  # every tensor of the segmenter carried over
        torch.testing.assert_close(mixmatch.model.state_dict()[key], value, rtol=0, atol=0, msg=lambda m, k=key: k)
    optimizers = {
        n: make_optimizer(s, torch.device("cpu"), "off") for n, s in mixmatch.optimizers(cfg_mm.optim).items()
    }
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    mixmatch.train_step(_batch("labeled"), StepContext("cpu", None, scaler, optimizers))
    _save_stage(cfg_mm, mixmatch, tmp_path / "mm.pt")

    # fine-tuning with another class count: backbone and the head's first layer load, the classifier keeps its init
    finetune = build_segmenter(config.Model(name="hypercolumn", width=4, num_classes=7, multi_level=False))
    classifier = {k: v.clone() for k, v in finetune.state_dict().items() if k.startswith("head.2.")}
    report = load_pretrained(finetune, tmp_path / "mm.pt")
    assert report.format == "segadapt" and "'hypercolumn', method 'mixmatch', step 1" in report.notes[0]
    assert sorted(report.kept) == sorted(classifier) == sorted(report.skipped)
    trained = mixmatch.model.state_dict()
    for key, value in finetune.state_dict().items():
        want = classifier[key] if key in classifier else trained[key]
        torch.testing.assert_close(value, want, rtol=0, atol=0, msg=lambda m, k=key: k)
