"""LSD-seg: G and D shapes, and one step's losses and gradients against a transcription of trainer_LSD.py."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods.lsdseg import Discriminator
from segadapt.methods.lsdseg import label_for_d
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


def _official_label_for_d(label, size, swapped=True):
    """segmentation_datasets.py:144-154 transform_label_forD, per image, written with PIL as the official code does:
    PIL NEAREST resize((size[0], size[1])), i.e. width = D's h and height = D's w (swapped); then trainer_LSD.py:231
    `label_forD[i] = ...` copies the (w, h) array into the (h, w) buffer, row-major under PyTorch 0.2 (a reshape).
    swapped=False: the argument order PIL means, resize((w, h)). Our ignore label 255 passes through PIL unchanged
    (the official -1 -> 19 -> -1)."""
    h, w = size
    out = []
    for image in label.numpy().astype(np.uint8):
        pil = Image.fromarray(image).resize((h, w) if swapped else (w, h), Image.NEAREST)
        out.append(torch.from_numpy(np.array(pil, dtype=np.int64)).reshape(h, w))
    return torch.stack(out)


def _official_losses(method, cfg, batch, swapped=True):
    """trainer_LSD.train_epoch, one graph: the forwards of trainer_LSD.py:211-221 once, in that order, then L_D
    (252-260), L_G (267-274), L_F (280-286) as written there."""
    m, g, d = method.model, method.generator, method.discriminators["d"]
    mean, std = torch.tensor(cfg.data.mean).view(1, 3, 1, 1), torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    src, tgt, label = batch["source"]["image"], batch["target"]["image"], batch["source"]["label"]
    src_d, tgt_d = (src * std + mean) / 255, (tgt * std + mean) / 255
    out = m(src)
    g_src = g(out["fc7"], out["pool4"], out["pool3"], tuple(src.shape[-2:]))
    src_fake_s, src_fake_c = d(g_src)
    src_real_s, src_real_c = d(src_d)
    tout = m(tgt)
    g_tgt = g(tout["fc7"], tout["pool4"], tout["pool3"], tuple(tgt.shape[-2:]))
    tgt_real_s, _ = d(tgt_d)
    tgt_fake_s, _ = d(g_tgt)
    label_d = _official_label_for_d(label, tuple(src_fake_c.shape[-2:]), swapped)
    n = len(src)
    loss_d = (_ce(src_real_s, 0) + _ce(src_fake_s, 1) + _ce(src_real_c, label_d) + _ce(tgt_real_s, 2)
              + _ce(tgt_fake_s, 3)) / n  # fmt: skip
    l1 = torch.nn.functional.l1_loss(g_src, src_d) + torch.nn.functional.l1_loss(g_tgt, tgt_d)
    loss_g = (_ce(src_fake_c, label_d) + 0.1 * (_ce(src_fake_s, 0) + _ce(tgt_fake_s, 2)) + 1.0 * l1) / n
    seg = _ce(out["main"], label)
    # trainer_LSD.py:281: lossF_src_adv_s = cross_entropy2d(outD_src_fake_s, domain_labels_tgt_real) -> class 2
    loss_f = (seg + 0.1 * (_ce(src_fake_s, 2) + _ce(tgt_fake_s, 0)) + 0.1 * _ce(src_fake_c, label_d)) / n
    return {"loss/seg": seg / n, "loss/d": loss_d, "loss/g": loss_g, "loss/f": loss_f}


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("swapped", [True, False])
def test_one_step_equals_the_official_losses_and_gradients(dropout, swapped):
    # dropout 0.5: the official loop runs each network once per iteration (trainer_LSD.py:211-221), so L_D, L_G and
    # L_F share one set of dropout masks (G's and D's ResnetBlocks, FCN's drop6 / drop7); on the CPU the same seed
    # and the same forward order give the same masks, so only a single forward in the official order can match.
    method, cfg = _method(dropout=dropout, label_d_swapped_hw=swapped)
    method.train() if dropout else method.eval()  # eval: no dropout anywhere (FCN's Dropout2d too)
    with torch.no_grad():  # non-zero score layers, so that F's gradient reaches the backbone
        for p in method.model.head_parameters():
            p.normal_(0, 0.1)
        # D's domain head away from uniform, so that F's class 2 (official) and 3 give measurably different losses
        method.discriminators["d"].out_s.bias.copy_(torch.tensor([0.0, 0.0, 2.0, -2.0]))
    batch = _batch(source=(40, 80), target=(40, 80))
    torch.manual_seed(7)
    want = _official_losses(method, cfg, batch, swapped)
    nets = {"d": method.discriminators, "g": method.generator, "f": method.model}
    params = {k: [p for p in net.parameters() if p.requires_grad] for k, net in nets.items()}
    grads = {k: torch.autograd.grad(want[f"loss/{k}"], params[k], retain_graph=True) for k in params}

    ctx = _ctx(method, cfg, iter_size=2)  # micro-step 0 of 2: gradients accumulate (halved), nothing steps
    torch.manual_seed(7)
    got = method.train_step(batch, ctx)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value.detach(), rtol=1e-4, atol=1e-3, msg=lambda m, k=key: f"[{k}] {m}")
    for k in params:
        for index, (p, g) in enumerate(zip(params[k], grads[k], strict=True)):
            assert g.abs().sum() > 0 or k == "f", f"[{k}.{index}] official gradient is zero: test is vacuous"
            # atol: a conv bias right before InstanceNorm has a zero gradient in exact arithmetic (float32 rounding of
            # pixel sums, ~1e-4 here); rtol: the same sums in another order
            msg = lambda m, k=k, i=index: f"[{k}.{i}] {m}"  # noqa: E731
            torch.testing.assert_close(p.grad * 2, g, rtol=2e-3, atol=3e-4 * max(1.0, float(g.abs().max())), msg=msg)


def test_f_scores_generated_source_images_as_target_real():
    # trainer_LSD.py:281 lossF_src_adv_s = cross_entropy2d(outD_src_fake_s, domain_labels_tgt_real): class 2, and
    # :282 lossF_tgt_adv_s with domain_labels_src_real: class 0. The reported loss/f must hold class 2 and differ
    # measurably from class 3 (target-fake, what segadapt used before issue 17).
    method, cfg = _method(dropout=0.0)
    method.eval()
    m, g, d = method.model, method.generator, method.discriminators["d"]
    with torch.no_grad():  # D leaning to "target-real" (2) over "target-fake" (3): the two labels' losses differ
        d.out_s.bias.copy_(torch.tensor([0.0, 0.0, 2.0, -2.0]))
    batch = _batch(source=(40, 80), target=(40, 80))
    got = method.train_step(batch, _ctx(method, cfg, iter_size=2))
    with torch.no_grad():
        terms = {}
        for domain in ("source", "target"):
            image = batch[domain]["image"]
            out = m(image)
            terms[domain], c = d(g(out["fc7"], out["pool4"], out["pool3"], tuple(image.shape[-2:])))
            if domain == "source":
                label_d = _official_label_for_d(batch["source"]["label"], tuple(c.shape[-2:]))
                rest = _ce(out["main"], batch["source"]["label"]) + 0.1 * _ce(c, label_d)
        n = len(batch["source"]["image"])
        official = (rest + 0.1 * (_ce(terms["source"], 2) + _ce(terms["target"], 0))) / n
        class_3 = (rest + 0.1 * (_ce(terms["source"], 3) + _ce(terms["target"], 0))) / n
    error = abs(got["loss/f"] - official)
    assert error <= 1e-4 * official  # float32 sums over pixels in another order
    assert abs(official - class_3) > 100 * error  # class 3 would be told apart


def test_one_forward_of_each_network_per_iteration():
    # trainer_LSD.py:212-221: F twice (source, target), G twice, D four times (G(src), src, tgt, G(tgt)); before
    # issue 17 segadapt ran G 4 times and D 6 times.
    method, cfg = _method()
    calls = {"f": 0, "g": 0, "d": 0}
    for key, module in (("f", method.model), ("g", method.generator), ("d", method.discriminators["d"])):
        module.register_forward_hook(lambda *_, k=key: calls.__setitem__(k, calls[k] + 1))
    method.train_step(_batch(), _ctx(method, cfg))
    assert calls == {"f": 2, "g": 2, "d": 4}


@pytest.mark.parametrize(("shape", "size"), [((64, 128), (8, 16)), ((32, 48), (4, 6)), ((37, 71), (7, 9))])
def test_label_for_d_reproduces_the_official_swapped_map(shape, size):
    # segmentation_datasets.py:144-154 transform_label_forD + trainer_LSD.py:229-231 (see _official_label_for_d): the
    # paper's ratio (512x1024 -> D 64x128) and sizes where PIL's fixed-point NEAREST and floor((i + 0.5) * in / out)
    # part on ties (32 -> 6 rows: PIL reads row 23 for output 4, the exact formula 24).
    g = torch.Generator().manual_seed(3)
    label = torch.randint(0, 19, (2, *shape), generator=g)
    label[:, :3] = 255
    swapped = label_for_d(label, size, swapped_hw=True)
    assert torch.equal(swapped, _official_label_for_d(label, size, swapped=True))
    correct = label_for_d(label, size, swapped_hw=False)
    assert torch.equal(correct, _official_label_for_d(label, size, swapped=False))
    assert not torch.equal(swapped, correct)  # the switch matters at these sizes
    assert (swapped == 255).any()  # the ignore label survives the official path (-1 -> 19 -> -1 there)


@pytest.mark.parametrize("recipe", ["lsd_gta2cs", "lsd_synthia2cs"])
def test_paper_recipes_follow_the_official_schedule_and_switches(recipe):
    cfg = config.load(recipe)
    # trainer_LSD.py:354 max_epoch = int(math.ceil(self.max_iter / min(len(train), len(target)))) under Python 2:
    # 100000 / 2975 is integer division (33), so 33 epochs of 2975 target images = 98,175 iterations; the break at
    # :318 (iteration >= max_iter) is never reached.
    iterations = int(math.ceil(100000 // 2975)) * 2975
    assert iterations == 98175
    assert cfg.schedule.total_steps == cfg.schedule.stop_step == iterations
    assert cfg.method.label_d_swapped_hw  # the official (PyTorch 0.2) y_D map
    # eval_cityscapes.py:126-131: argmax at the input size, then PIL NEAREST to the label size (beside the standard)
    assert (cfg.eval.protocol, cfg.eval.metric) == ("lsd_cityscapes", "nanmean")
    if recipe == "lsd_gta2cs":
        # segmentation_datasets.py:326-334 GTA5: w_new = 1280, h_new = int(w_new / float(w / h)) for 1914x1052
        assert list(cfg.data.source.resize) == [1280, int(1280 / (1914 / float(1052)))] == [1280, 703]


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
