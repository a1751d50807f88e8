"""FCN-8s at-once: score at input size for any size, feature sizes, frozen bilinear upsamplers, parameter groups."""

import math

import pytest
import torch

from segadapt.config import Model
from segadapt.models import build_segmenter
from segadapt.models.fcn8s import FCN8s
from segadapt.models.fcn8s import bilinear_kernel


def _official_upsampling_weight(channels: int, kernel_size: int) -> torch.Tensor:
    """Loop transcription of model_utils.get_upsampling_weight."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    for c in range(channels):
        for i in range(kernel_size):
            for j in range(kernel_size):
                weight[c, c, i, j] = (1 - abs(i - center) / factor) * (1 - abs(j - center) / factor)
    return weight


@pytest.fixture(scope="module")
def fcn():
    torch.manual_seed(0)
    return FCN8s(5, width=4).train()


# Sizes: the official 2:1 crops scaled down, odd sizes whose ceil-mode pooling rounds at different stages, tiny.
@pytest.mark.parametrize("size", [(32, 48), (33, 47), (40, 80), (64, 64), (1, 9)])
def test_score_is_input_sized_and_features_follow_the_padded_arithmetic(fcn, size):
    out = fcn(torch.randn(2, 3, *size))
    assert tuple(out["main"].shape) == (2, 5, *size)
    padded = [s + 198 for s in size]  # conv1_1 pad 100, 3x3: H + 200 - 2
    pool3 = [math.ceil(math.ceil(math.ceil(p / 2) / 2) / 2) for p in padded]
    pool4 = [math.ceil(p / 2) for p in pool3]
    pool5 = [math.ceil(p / 2) for p in pool4]
    assert tuple(out["pool3"].shape) == (2, 16, *pool3)
    assert tuple(out["pool4"].shape) == (2, 32, *pool4)
    assert tuple(out["fc7"].shape) == (2, 256, *[p - 6 for p in pool5])  # fc6 is a 7x7 valid conv
    stride = out["main"].stride()
    assert stride[2] == out["main"].shape[3] * stride[3], "H and W must merge for the fused CE"


def test_upsamplers_are_frozen_bilinear_and_scores_start_at_zero(fcn):
    fresh = FCN8s(5, width=4)
    for name, kernel in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        layer = getattr(fresh, name)
        assert layer.bias is None and not layer.weight.requires_grad
        torch.testing.assert_close(layer.weight, _official_upsampling_weight(5, kernel))
    torch.testing.assert_close(bilinear_kernel(3, 5), _official_upsampling_weight(3, 5))  # odd kernel branch
    assert all(p.abs().sum() == 0 for p in fresh.head_parameters())
    with torch.no_grad():
        assert fresh.eval()(torch.randn(1, 3, 16, 24))["main"].abs().sum() == 0


def test_parameter_groups_and_key_layout(fcn):
    heads, backbone = fcn.head_parameters(), fcn.backbone_parameters()
    assert {id(p) for p in heads} == {id(p) for m in (fcn.score_fr, fcn.score_pool4, fcn.score_pool3)
                                      for p in m.parameters()}  # fmt: skip
    trainable = {id(p) for p in fcn.parameters() if p.requires_grad}
    assert len(heads) + len(backbone) == len(trainable) == len({id(p) for p in heads} | {id(p) for p in backbone})
    state = fcn.state_dict()
    # torchvision vgg16 `features` indices (conv1_1 = 0, conv5_3 = 28), fc6 / fc7 as convs scaled by width / 64.
    assert tuple(state["backbone.features.0.weight"].shape) == (4, 3, 3, 3)
    assert tuple(state["backbone.features.28.weight"].shape) == (32, 32, 3, 3)
    assert tuple(state["fc6.weight"].shape) == (256, 32, 7, 7) and tuple(state["fc7.weight"].shape) == (256, 256, 1, 1)
    assert fcn.backbone.features[0].padding == (100, 100)
    assert fcn.feature_channels == (256, 32, 16)


def test_gradients_reach_every_trainable_parameter(fcn):
    fcn.zero_grad()
    with torch.no_grad():  # zero-initialised score layers would stop the gradient to the backbone
        for p in fcn.head_parameters():
            p.normal_(0, 0.1)
    out = fcn(torch.randn(2, 3, 32, 48))
    (out["main"].square().mean() + out["fc7"].mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fcn.parameters() if p.requires_grad)


def test_build_from_config_and_channels_last():
    model = build_segmenter(Model(name="fcn8s", width=4, num_classes=3, channels_last=True)).eval()
    plain = FCN8s(3, width=4).eval()
    plain.load_state_dict(model.state_dict())
    image = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(image.to(memory_format=torch.channels_last))["main"], plain(image)["main"])
    with pytest.raises(ValueError, match="model.width"):
        FCN8s(3, width=0)
