"""The supervised method's sparse-point mode (Mix-and-Match fine-tuning on Larsson's hypercolumn head)."""

import pytest
import torch
import torch.nn.functional as F

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods.supervised import draw_points
from segadapt.methods.supervised import sparse_point_loss
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer

C = 5


def _build(model: str = "hypercolumn", **method):
    tree = {"model": {"name": model, "width": 4, "num_classes": C, "multi_level": False},
            "method": {"name": "supervised", "stream": "labeled", **method}}  # fmt: skip
    cfg = config.load_dict(tree, "test.toml")
    return build_method(build_segmenter(cfg.model), cfg), cfg


def test_points_stay_inside_the_margin_and_cover_it():
    label = torch.zeros(3, 64, 96, dtype=torch.long)
    points = draw_points(label, 4000, 0.1875)
    assert points.shape == (3, 4000, 2) and points.dtype == torch.int64
    x, y = points[..., 0], points[..., 1]
    assert int(x.min()) == 18 and int(x.max()) == 96 - 18 - 1  # int(0.1875 * 96) = 18 on each side
    assert int(y.min()) == 12 and int(y.max()) == 64 - 12 - 1


def test_sparse_loss_is_the_mean_ce_over_labelled_points_as_a_loop_computes_it():
    method, _ = _build()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 32, 64, generator=g) * 40
    label = torch.randint(0, C, (2, 32, 64), generator=g)
    label[0, :, :8] = 255
    points = draw_points(label, 50, 0.0)
    loss = sparse_point_loss(method.model, image, label, points)
    logits = method.model(image, output="point_logits", points=points.float())["main"]
    terms = []
    for i in range(2):
        for p in range(50):
            x, y = points[i, p].tolist()
            if label[i, y, x] != 255:
                terms.append(F.cross_entropy(logits[i, :, p][None], label[i, y, x][None]))
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def test_a_sparse_step_trains_the_head_and_the_backbone():
    method, cfg = _build(sparse_points=64)
    specs = method.optimizers(cfg.optim)
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in specs.items()}
    ctx = StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers)
    before = {k: v.clone() for k, v in method.model.named_parameters()}
    batch = {"labeled": {"image": torch.randn(2, 3, 32, 64) * 40, "label": torch.randint(0, C, (2, 32, 64))}}
    losses = method.train_step(batch, ctx)
    assert torch.isfinite(losses["loss/seg"])
    changed = {k for k, v in method.model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("backbone.") for k in changed) and any(not k.startswith("backbone.") for k in changed)


@pytest.mark.parametrize(
    ("model", "method", "match"),
    [
        ("toy", {"sparse_points": 8}, "method.sparse_points = 8 needs a segmenter with a sparse head"),
        # the config layer's range check (issue 19.6) stops it before the method is built
        (
            "hypercolumn",
            {"sparse_points": 8, "sparse_margin": 0.5},
            r"key 'method.sparse_margin': expected float in \[0, 0.5\), got 0.5",
        ),
    ],
)
def test_bad_sparse_settings_are_named(model, method, match):
    with pytest.raises(ValueError, match=match):
        _build(model, **method)
