"""LSD-seg: G and D shapes, and one step's losses and gradients against a transcription of trainer_LSD.py."""

import pytest
import torch

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods.lsdseg import Discriminator
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer

NUM_CLASSES = 5
MODELS = {
    "fcn8s": {"name": "fcn8s", "width": 4},
    "deeplabv2": {"name": "deeplabv2", "backbone": "resnet18", "width": 4},
    "toy": {"name": "toy", "width": 4},
}


def _method(model="fcn8s", **method):
    cfg = config.load_dict(
        {
            "model": {**MODELS[model], "num_classes": NUM_CLASSES, "channels_last": False},
            "method": {"name": "lsdseg", "d_width": 8, "g_width": 4, **method},
        },
        "test.toml",
    )
    torch.manual_seed(0)
    return build_method(build_segmenter(cfg.model), cfg), cfg


def _ctx(method, cfg, iter_size=1):
    specs = method.optimizers(cfg.optim)
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in specs.items()}
    return StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers, iter_size)


def _batch(source=(32, 48), target=(48, 32), n=2):
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, NUM_CLASSES, (n, *source), generator=g)
    label[:, 0] = 255
    return {
        "source": {"image": torch.randn(n, 3, *source, generator=g) * 50, "label": label},
        "target": {"image": torch.randn(n, 3, *target, generator=g) * 50, "label": torch.zeros(n, *target).long()},
    }


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("size", [(32, 48), (33, 47), (40, 80)])
def test_generator_reconstructs_an_image_sized_map_in_unit_range(model, size):
    method, _ = _method(model)
    out = method.model(torch.randn(2, 3, *size))
    fake = method.generator(*(out[k] for k in method.keys), size)
    assert tuple(fake.shape) == (2, 3, *size)
    assert fake.min() >= 0 and fake.max() <= 1


def test_generator_official_arithmetic_needs_no_resize_at_the_paper_sizes():
    # 640x320 / 1024x512 (scaled to width 4): the ConvT chain lands exactly on pool4, pool3 and the image.
    method, _ = _method("fcn8s")
    for size in ((320, 640), (512, 1024)):
        with torch.no_grad():
            out = method.model(torch.zeros(1, 3, *size))
            x = method.generator.stage1(out["fc7"])
            assert x.shape[-2:] == out["pool4"].shape[-2:]
            x = method.generator.stage2(torch.cat((x, out["pool4"]), 1))
            assert x.shape[-2:] == out["pool3"].shape[-2:]
            x = method.generator.stage4(method.generator.stage3(torch.cat((x, out["pool3"]), 1)))
            assert tuple(x.shape[-2:]) == size


@pytest.mark.parametrize("size", [(32, 48), (33, 47), (64, 128)])
def test_discriminator_heads(size):
    d_s, d_c = Discriminator(19, width=8)(torch.rand(2, 3, *size))
    h, w = ((s // 2 + 1) // 2 // 2 for s in size)  # conv k4 s2 p2, two 2x2 max-pools
    assert tuple(d_s.shape) == (2, 4, h, w) and tuple(d_c.shape) == (2, 19, h, w)


def _ce(logits, label):
    """Official cross_entropy2d(size_average=False), written out: -sum of log-softmax at the label, 255 ignored."""
    logp = torch.log_softmax(logits, dim=1)
    if isinstance(label, int):
        label = torch.full((logits.shape[0], *logits.shape[2:]), label)
    valid = label != 255
    picked = logp.gather(1, label.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
    return -(picked * valid).sum()


def _nearest(label, size):
    """PIL NEAREST: source index floor((i + 0.5) * in / out)."""
    rows = ((torch.arange(size[0]) + 0.5) * label.shape[1] / size[0]).floor().long()
    cols = ((torch.arange(size[1]) + 0.5) * label.shape[2] / size[1]).floor().long()
    return label[:, rows][:, :, cols]


def _official_losses(method, cfg, batch):
    """trainer_LSD.train_epoch, one graph: forwards once, then L_D, L_G, L_F as written there."""
    m, g, d = method.model, method.generator, method.discriminators["d"]
    mean, std = torch.tensor(cfg.data.mean).view(1, 3, 1, 1), torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    src, tgt, label = batch["source"]["image"], batch["target"]["image"], batch["source"]["label"]
    src_d, tgt_d = (src * std + mean) / 255, (tgt * std + mean) / 255
    out, tout = m(src), m(tgt)
    g_src = g(out["fc7"], out["pool4"], out["pool3"], tuple(src.shape[-2:]))
    g_tgt = g(tout["fc7"], tout["pool4"], tout["pool3"], tuple(tgt.shape[-2:]))
    src_fake_s, src_fake_c = d(g_src)
    src_real_s, src_real_c = d(src_d)
    tgt_real_s, _ = d(tgt_d)
    tgt_fake_s, _ = d(g_tgt)
    label_d = _nearest(label, src_fake_c.shape[-2:])
    n = len(src)
    loss_d = (_ce(src_real_s, 0) + _ce(src_fake_s, 1) + _ce(src_real_c, label_d) + _ce(tgt_real_s, 2)
              + _ce(tgt_fake_s, 3)) / n  # fmt: skip
    l1 = torch.nn.functional.l1_loss(g_src, src_d) + torch.nn.functional.l1_loss(g_tgt, tgt_d)
    loss_g = (_ce(src_fake_c, label_d) + 0.1 * (_ce(src_fake_s, 0) + _ce(tgt_fake_s, 2)) + 1.0 * l1) / n
    seg = _ce(out["main"], label)
    loss_f = (seg + 0.1 * (_ce(src_fake_s, 3) + _ce(tgt_fake_s, 0)) + 0.1 * _ce(src_fake_c, label_d)) / n
    return {"loss/seg": seg / n, "loss/d": loss_d, "loss/g": loss_g, "loss/f": loss_f}


def test_one_step_equals_the_official_losses_and_gradients():
    method, cfg = _method(dropout=0.0)
    method.eval()  # no dropout anywhere (FCN's Dropout2d too); InstanceNorm has no running statistics
    with torch.no_grad():  # non-zero score layers, so that F's gradient reaches the backbone
        for p in method.model.head_parameters():
            p.normal_(0, 0.1)
    batch = _batch()
    want = _official_losses(method, cfg, batch)
    nets = {"d": method.discriminators, "g": method.generator, "f": method.model}
    params = {k: [p for p in net.parameters() if p.requires_grad] for k, net in nets.items()}
    grads = {k: torch.autograd.grad(want[f"loss/{k}"], params[k], retain_graph=True) for k in params}

    ctx = _ctx(method, cfg, iter_size=2)  # micro-step 0 of 2: gradients accumulate (halved), nothing steps
    got = method.train_step(batch, ctx)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value.detach(), rtol=1e-4, atol=1e-3, msg=lambda m, k=key: f"[{k}] {m}")
    for k in params:
        for index, (p, g) in enumerate(zip(params[k], grads[k], strict=True)):
            assert g.abs().sum() > 0 or k == "f", f"[{k}.{index}] official gradient is zero: test is vacuous"
            # atol: a conv bias right before InstanceNorm has a zero gradient in exact arithmetic (rounding ~3e-5)
            msg = lambda m, k=k, i=index: f"[{k}.{i}] {m}"  # noqa: E731
            torch.testing.assert_close(p.grad * 2, g, rtol=1e-3, atol=1e-4, msg=msg)


def test_the_label_check_is_not_vacuous():
    # F's loss with D's true classes (src fake -> 1, tgt fake -> 3) instead of the flipped ones must differ from the
    # reported one, so the equality in the test above really pins the flipped labels.
    method, cfg = _method(dropout=0.0)
    method.eval()
    batch = _batch()
    got = method.train_step(batch, _ctx(method, cfg, iter_size=2))
    m, g, d = method.model, method.generator, method.discriminators["d"]
    with torch.no_grad():
        terms = {}
        for domain in ("source", "target"):
            image = batch[domain]["image"]
            out = m(image)
            terms[domain], _ = d(g(out["fc7"], out["pool4"], out["pool3"], tuple(image.shape[-2:])))
        flipped = 0.1 * (_ce(terms["source"], 3) + _ce(terms["target"], 0))
        true = 0.1 * (_ce(terms["source"], 1) + _ce(terms["target"], 3))
    assert abs(flipped - true) / 2 > 1e-2
    rest = got["loss/f"] - flipped / 2
    assert not torch.isclose(rest + true / 2, got["loss/f"], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_one_step_moves_f_g_and_d(model):
    method, cfg = _method(model)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.train_step(_batch(), _ctx(method, cfg))
    changed = {k.split(".")[0] for k, v in method.state_dict().items() if not torch.equal(v, before[k])}
    assert {"model", "generator", "discriminators"} <= changed


def test_optimizer_groups_follow_the_official_settings():
    method, cfg = _method()
    specs = method.optimizers(cfg.optim)
    groups = {g["name"]: g for g in specs["model"].groups}
    assert all(p.dim() == 1 for p in groups["backbone_bias"]["params"] + groups["head_bias"]["params"])
    assert groups["backbone_bias"]["lr_mult"] == 2.0 and groups["backbone"]["lr_mult"] == 1.0
    assert (specs["generator"].kind, specs["generator"].lr, specs["generator"].betas) == ("adam", 1e-4, (0.7, 0.999))
    assert (specs["discriminator"].lr, specs["discriminator"].betas) == (1e-4, (0.7, 0.999))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="method.d_width"):
        _method(d_width=0)
    with pytest.raises(ValueError, match="method.dropout"):
        _method(dropout=1.0)
