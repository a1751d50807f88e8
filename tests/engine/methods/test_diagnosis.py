"""The `diag/*` curves the methods log (issue 18): each equals its definition computed here from the same weights.

Every step below runs at micro-step 0 of iter_size 2, so nothing steps and the weights after the call are the ones
the step used; the expected values are then computed directly from the definitions.
"""

import pytest
import torch
import torch.nn.functional as F
from test_advsemiseg import _median_mask_t
from test_advsemiseg import _method as _advsemiseg
from test_advsemiseg import _unlabeled_confidence
from test_methods import NUM_CLASSES
from test_methods import _batch

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods.losses import domain_accuracy
from segadapt.methods.losses import label_agreement
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer


def _no_step_context(method, cfg):
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in method.optimizers(cfg.optim).items()}
    return StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers, iter_size=2)


def test_label_agreement_and_domain_accuracy_by_hand():
    pred = torch.tensor([[[0, 1, 2], [2, 2, 0]]])
    label = torch.tensor([[[0, 1, 1], [255, 2, 255]]])
    assert label_agreement(pred, label).item() == pytest.approx(3 / 4)  # 4 labelled pixels, 3 agree
    mask = torch.tensor([[[True, False, True], [True, True, True]]])
    assert label_agreement(pred, label, mask).item() == pytest.approx(2 / 3)
    assert label_agreement(pred, torch.full_like(label, 255)).item() == 0.0  # nothing labelled: 0, not NaN
    d_out = torch.tensor([-2.0, -0.1, 0.3, 0.7])
    assert domain_accuracy(d_out, 0).item() == 0.5  # vanilla: logit <= 0 says 0
    assert domain_accuracy(d_out, 1).item() == 0.5
    assert domain_accuracy(d_out, 1, "ls").item() == 0.25  # least squares: output > 0.5 says 1


def test_adaptsegnet_logs_discriminator_accuracy_and_target_accuracy():
    cfg = config.load_dict(
        {"model": {"name": "toy", "width": 4, "num_classes": NUM_CLASSES}, "method": {"name": "adaptsegnet"}},
        "test.toml",
    )
    method = build_method(build_segmenter(cfg.model), cfg)
    batch = _batch()
    out = method.train_step(batch, _no_step_context(method, cfg))
    src, tgt = batch["source"], batch["target"]
    with torch.no_grad():
        out_s, out_t = method.model(src["image"]), method.model(tgt["image"])

        def pred(out, image, key):
            return F.interpolate(out[key], size=image.shape[-2:], mode="bilinear", align_corners=True)

        want_acc = label_agreement(pred(out_t, tgt["image"], "main").argmax(1), tgt["label"])
        for level, key in (("d_main", "main"), ("d_aux", "aux")):
            d = method.discriminators[level]
            on_source = d(F.softmax(pred(out_s, src["image"], key), 1))
            on_target = d(F.softmax(pred(out_t, tgt["image"], key), 1))
            assert out[f"diag/{level}_acc_source"].item() == pytest.approx(domain_accuracy(on_source, 0).item())
            assert out[f"diag/{level}_acc_target"].item() == pytest.approx(domain_accuracy(on_target, 1).item())
    assert out["diag/target_acc"].item() == pytest.approx(want_acc.item())
    assert 0.0 < out["diag/target_acc"].item() < 1.0


def test_advsemiseg_logs_pseudo_label_coverage_and_accuracy_against_hidden_labels():
    batch = _batch()
    probe, _ = _advsemiseg()
    mask_t = _median_mask_t(probe, batch)
    method, ctx = _advsemiseg(mask_t=mask_t)
    method.load_state_dict(probe.state_dict())
    ctx.step_index = 0
    out = method.train_step(batch, ctx)
    pred, confidence = _unlabeled_confidence(method, batch)
    trusted = confidence[:, 0] > mask_t
    hidden = batch["unlabeled"]["label"]
    assert out["diag/pl_coverage"].item() == pytest.approx(trusted.float().mean().item())
    assert 0.2 < out["diag/pl_coverage"].item() < 0.8  # the median threshold keeps about half
    assert out["diag/pl_acc_trusted"].item() == pytest.approx(label_agreement(pred.argmax(1), hidden, trusted).item())
    assert out["diag/pl_acc_all"].item() == pytest.approx(label_agreement(pred.argmax(1), hidden).item())
    for key in ("diag/d_acc_fake", "diag/d_acc_real"):
        assert 0.0 <= out[key].item() <= 1.0


def test_u2pl_logs_the_teachers_pseudo_label_accuracy_and_reliable_share():
    cfg = config.load_dict(
        {
            "model": {"name": "deeplabv3plus", "backbone": "resnet18", "width": 4, "num_classes": NUM_CLASSES},
            "method": {"name": "u2pl", "num_queries": 4, "num_negatives": 3, "queue_length": 64, "cutmix_p": 0.0},
        },
        "test.toml",
    )
    method = build_method(build_segmenter(cfg.model), cfg)
    batch = _batch()
    image_u, hidden = batch["unlabeled"]["image"], batch["unlabeled"]["label"]
    with torch.no_grad():
        method.teacher.eval()
        logits = method.teacher(image_u)["main"]
        pseudo = F.interpolate(logits.float(), size=image_u.shape[-2:], mode="bilinear", align_corners=True).argmax(1)
    ctx = _no_step_context(method, cfg)
    ctx.step_index = 1  # past sup_only_steps (0) and its teacher copy: the teacher above is the one the step uses
    out = method.train_step(batch, ctx)
    assert out["diag/pl_acc_all"].item() == pytest.approx(label_agreement(pseudo, hidden).item())
    share = out["diag/pl_reliable_share"].item()
    assert 0.5 < share < 1.0  # drop_percent 80 at the start: the 20% highest-entropy pixels are unreliable
    assert 0.0 <= out["diag/pl_acc_reliable"].item() <= 1.0


def test_triplet_margins_by_hand():
    from segadapt.methods.mixmatch import triplet_margins

    # 1-d features: query 0 with positive 1 and negative 3 (gap 9 - 1 = 8), query 1 with positive 0 and negative 2
    # (gap 1 - 1 = 0), query 2 not counted, query 3 with positive 2 and negative 0 (gap 9 - 1 = 8)
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    positive, negative = torch.tensor([1, 0, 0, 2]), torch.tensor([3, 2, 1, 0])
    mask = torch.tensor([True, True, False, True])
    got = {k: v.item() for k, v in triplet_margins(features, positive, negative, mask, margin=0.5).items()}
    assert got["diag/triplet_gap"] == pytest.approx(16 / 3)
    assert got["diag/triplet_active"] == pytest.approx(1 / 3)  # only the gap-0 triplet is within the margin
    assert got["diag/triplet_wrong_order"] == 0.0
    negative = torch.tensor(
        [1, 2, 1, 3]
    )  # query 0: negative 1 at distance 1 = positive's; query 3: negative 3 = itself
    got = {k: v.item() for k, v in triplet_margins(features, positive, negative, mask, margin=0.5).items()}
    assert got["diag/triplet_wrong_order"] == pytest.approx(1 / 3)  # query 3: gap 0 - 1 < 0


def test_lsdseg_logs_discriminator_and_target_accuracy():
    from test_methods import _build

    method, ctx, _ = _build("lsdseg", iter_size=2)
    batch = _batch()
    out = method.train_step(batch, ctx)
    for key in ("diag/d_acc", "diag/target_acc"):
        assert 0.0 <= out[key].item() <= 1.0
    tgt = batch["target"]
    with torch.no_grad():
        logits = method.model(tgt["image"])["main"]
        size = tgt["image"].shape[-2:]
        pred = F.interpolate(logits, size=size, mode="bilinear", align_corners=method.cfg.align_corners).argmax(1)
    assert out["diag/target_acc"].item() == pytest.approx(label_agreement(pred, tgt["label"]).item())


@pytest.mark.parametrize("name", ["adaptsegnet", "advsemiseg", "lsdseg", "u2pl"])
def test_batches_without_hidden_labels_train_and_skip_those_curves(name):
    """A caller may pass target / unlabelled batches as images only (the official loaders' items, the parity
    scripts): the step runs, and only the curves that need those labels are left out."""
    from test_methods import _build

    method, ctx, _ = _build(name, iter_size=2)
    if name == "u2pl":
        ctx.step_index = 1
    batch = _batch()
    with_labels = method.train_step(batch, ctx)
    for stream in ("target", "unlabeled"):
        batch[stream] = {"image": batch[stream]["image"]}
    without = method.train_step(batch, ctx)
    needs_labels = {"diag/target_acc", "diag/pl_acc_trusted", "diag/pl_acc_all", "diag/pl_acc_reliable"}
    assert set(with_labels) - set(without) == needs_labels & set(with_labels) != set()
    assert all(torch.isfinite(v) for v in without.values())


@pytest.mark.parametrize("name", ["adaptsegnet", "advsemiseg", "lsdseg", "u2pl", "mixmatch"])
def test_diagnosis_runs_on_logging_steps_only_and_never_changes_training(name):
    """`ctx.log_step` False (the trainer's steps between two logs): no `diag/*` entry is computed, and the losses and
    the weights after the step are bitwise those of a logged step, so the diagnosis costs the other steps nothing and
    changes no result."""
    from test_methods import _build

    results = {}
    for log_step in (True, False):
        torch.manual_seed(0)
        method, ctx, _ = _build(name)
        ctx.log_step = log_step
        torch.manual_seed(1)
        losses = method.train_step(_batch(), ctx)
        results[log_step] = losses, method.state_dict()
    (logged, state), (quiet, quiet_state) = results[True], results[False]
    assert any(key.startswith("diag/") for key in logged), "a logged step should carry the diagnosis"
    assert not any(key.startswith("diag/") for key in quiet), sorted(quiet)
    assert {k: v for k, v in logged.items() if not k.startswith("diag/")}.keys() == quiet.keys()
    for key, value in quiet.items():
        assert torch.equal(value, logged[key]), key
    for key, value in quiet_state.items():
        assert torch.equal(value, state[key]), key
