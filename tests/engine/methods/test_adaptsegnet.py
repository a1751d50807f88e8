"""AdaptSegNet's step equals a direct transcription of the official train_gta2cityscapes_multi.py iteration."""

import pytest
import torch
import torch.nn.functional as F
from test_methods import NUM_CLASSES
from test_methods import _batch

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer
from segadapt.train import discriminators_channels_last


def _official_gradients(method, batch, cfg):
    """Transcription of one official iteration (METHODS.md A1 'Order of each step'); returns (model, D) grads."""
    model, d_main, d_aux = method.model, method.discriminators["d_main"], method.discriminators["d_aux"]

    def interp(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    def bce(out, label):
        return F.binary_cross_entropy_with_logits(out, torch.full_like(out, float(label)))

    src, tgt = batch["source"], batch["target"]
    out_s = model(src["image"])
    pred1, pred2 = interp(out_s["aux"], src["image"]), interp(out_s["main"], src["image"])
    loss_seg = F.cross_entropy(pred2, src["label"], ignore_index=255) + cfg.lambda_seg * F.cross_entropy(
        pred1, src["label"], ignore_index=255
    )
    out_t = model(tgt["image"])
    pt1, pt2 = interp(out_t["aux"], tgt["image"]), interp(out_t["main"], tgt["image"])
    loss_adv = cfg.lambda_adv_target1 * bce(d_aux(F.softmax(pt1, 1)), 0) + cfg.lambda_adv_target2 * bce(
        d_main(F.softmax(pt2, 1)), 0
    )
    model_params = [p for p in model.parameters() if p.requires_grad]
    model_grads = torch.autograd.grad(loss_seg + loss_adv, model_params)
    loss_d = (
        bce(d_aux(F.softmax(pred1.detach(), 1)), 0) / 2
        + bce(d_main(F.softmax(pred2.detach(), 1)), 0) / 2
        + bce(d_aux(F.softmax(pt1.detach(), 1)), 1) / 2
        + bce(d_main(F.softmax(pt2.detach(), 1)), 1) / 2
    )
    d_params = list(method.discriminators.parameters())
    return model_grads, torch.autograd.grad(loss_d, d_params)


@pytest.mark.parametrize("layout", ["as-built", "channels-last"])
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_gradients_match_the_official_iteration(kernels, layout, monkeypatch):
    """channels-last: the trainer's layout (segmenter and FC discriminators channels-last, so the upsample's gradient
    hook and the cross-entropy's channels-last rows run) against the same NCHW-agnostic transcription."""
    monkeypatch.setenv("SEGADAPT_KERNELS", kernels)
    cfg = config.load_dict(
        {
            "model": {"name": "toy", "width": 4, "num_classes": NUM_CLASSES},
            # Large adversarial weights so a wrong order or a missing freeze shows in the gradients.
            "method": {"name": "adaptsegnet", "lambda_adv_target1": 0.3, "lambda_adv_target2": 0.7},
        },
        "test.toml",
    )
    method = build_method(build_segmenter(cfg.model), cfg)
    if layout == "channels-last":
        method.model.to(memory_format=torch.channels_last)
        discriminators_channels_last(method)
        weight = method.discriminators["d_main"].conv1.weight
        assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
        logits = method.model(_batch()["source"]["image"])["main"]
        assert not logits.is_contiguous(), "the channels-last paths would not run: the logits are NCHW"
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in method.optimizers(cfg.optim).items()}
    # iter_size 2 at micro-step 0: gradients accumulate (divided by 2) and nothing steps, so they can be read.
    ctx = StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers, iter_size=2)
    batch = _batch()
    want_model, want_d = _official_gradients(method, batch, cfg.method)
    method.train_step(batch, ctx)
    got_model = [p.grad * 2 for p in method.model.parameters() if p.requires_grad]
    got_d = [p.grad * 2 for p in method.discriminators.parameters()]
    for i, (got, want) in enumerate(zip(got_model, want_model, strict=True)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, i=i: f"[model param {i}] {m}")
    for i, (got, want) in enumerate(zip(got_d, want_d, strict=True)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, i=i: f"[D param {i}] {m}")


def test_single_level_has_no_aux_discriminator_and_ls_gan_uses_mse():
    cfg = config.load_dict(
        {
            "model": {"name": "toy", "width": 4, "num_classes": NUM_CLASSES},
            "method": {"name": "adaptsegnet", "lambda_adv_target1": 0.0, "gan": "ls"},
        },
        "test.toml",
    )
    method = build_method(build_segmenter(cfg.model), cfg)
    assert list(method.discriminators) == ["d_main"]
    d_out = torch.tensor([[[[0.5, -1.0]]]])
    from segadapt.methods.losses import adversarial_loss

    assert adversarial_loss(d_out, 1, "ls").item() == pytest.approx(((0.5 - 1) ** 2 + (-1 - 1) ** 2) / 2)
    upsampled = adversarial_loss(d_out, 1, "ls", upsample_to=(4, 6))
    want = F.mse_loss(F.interpolate(d_out, size=(4, 6), mode="bilinear", align_corners=True), torch.ones(1, 1, 4, 6))
    torch.testing.assert_close(upsampled, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
def test_channel_softmax_feeds_the_discriminator_the_same_bits(layout, dtype):
    """channel_softmax only changes the layout D reads: softmax, D's output and every gradient (D's parameters and the
    upsampled map's) are bitwise those of torch.softmax(pred, 1), in fp32 and under CPU bf16 autocast; a channels-last
    map comes back channels-last (so D's first convolution makes no copy), an NCHW one NCHW."""
    from segadapt.methods.losses import channel_softmax
    from segadapt.models import build_discriminator

    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels-last" else torch.contiguous_format
    base = torch.randn(2, NUM_CLASSES, 48, 64).to(dtype=dtype, memory_format=fmt)
    d_net = build_discriminator(NUM_CLASSES, ndf=8).to(memory_format=torch.channels_last)

    def run(softmax):
        pred = base.clone().requires_grad_()
        d_net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            prob = softmax(pred)
            out = d_net(prob)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return prob, out, pred.grad, [p.grad.clone() for p in d_net.parameters()]

    prob, out, grad, d_grads = run(channel_softmax)
    want_prob, want_out, want_grad, want_d_grads = run(lambda x: torch.softmax(x, dim=1))
    assert prob.is_contiguous(memory_format=fmt) and (layout == "nchw") == prob.is_contiguous()
    assert torch.equal(prob, want_prob) and torch.equal(out, want_out) and torch.equal(grad, want_grad)
    assert all(torch.equal(a, b) for a, b in zip(d_grads, want_d_grads, strict=True))


def test_unknown_gan_is_named():
    cfg = config.load_dict({"model": {"name": "toy"}, "method": {"name": "adaptsegnet", "gan": "wgan"}}, "t.toml")
    with pytest.raises(ValueError, match="method.gan"):
        build_method(build_segmenter(cfg.model), cfg)


@pytest.mark.parametrize("recipe", ["adaptseg_gta2cs", "adaptseg_gta2cs_lsgan", "adaptseg_gta2cs_single",
                                    "adaptseg_synthia2cs"])  # fmt: skip
def test_paper_recipes_use_the_official_repeated_backbone_group(recipe):
    # wasidennis/AdaptSegNet model/deeplab_multi.py:185-207 get_1x_lr_params_NOscale, optim_parameters (:222-224)
    assert config.load(recipe).optim.official_repeated_groups is True
