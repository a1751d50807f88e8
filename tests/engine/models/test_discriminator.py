"""FCDiscriminator: official parameter count, key names, output size, and a functional reference forward."""

import pytest
import torch
import torch.nn.functional as F

from segadapt.models import build_discriminator
from segadapt.models.discriminator import FCDiscriminator


def _halvings(size: int, times: int = 5) -> int:
    for _ in range(times):
        size = (size + 2 * 1 - 4) // 2 + 1  # conv k4 s2 p1 == floor(size / 2)
    return size


def test_official_parameter_count_and_keys():
    model = build_discriminator(19)
    # METHODS.md A1: 2,781,121 = (19*64 + 64*128 + 128*256 + 256*512 + 512) * 16 + 64 + 128 + 256 + 512 + 1.
    assert sum(p.numel() for p in model.parameters()) == 2_781_121
    names = ["conv1", "conv2", "conv3", "conv4", "classifier"]
    assert list(model.state_dict()) == [f"{n}.{t}" for n in names for t in ("weight", "bias")]
    assert [tuple(model.state_dict()[f"{n}.weight"].shape[:2]) for n in names] == [
        (64, 19),
        (128, 64),
        (256, 128),
        (512, 256),
        (1, 512),
    ]


def test_full_size_arithmetic():
    assert (_halvings(512), _halvings(1024)) == (16, 32)  # METHODS.md: 1x19x512x1024 -> 1x1x16x32


@pytest.mark.parametrize("size", [(64, 100), (97, 161)])
def test_output_shape_and_reference_forward(size):
    model = FCDiscriminator(7, ndf=8)
    x = torch.rand(2, 7, *size).softmax(dim=1)
    out = model(x)
    assert tuple(out.shape) == (2, 1, _halvings(size[0]), _halvings(size[1]))
    # Reference: LeakyReLU(0.2) after the first four convs, none after the classifier, no sigmoid.
    want = x
    for name in ("conv1", "conv2", "conv3", "conv4"):
        conv = getattr(model, name)
        want = F.leaky_relu(F.conv2d(want, conv.weight, conv.bias, stride=2, padding=1), 0.2)
    want = F.conv2d(want, model.classifier.weight, model.classifier.bias, stride=2, padding=1)
    torch.testing.assert_close(out, want)


def test_logits_not_probabilities():
    model = FCDiscriminator(3, ndf=4)
    with torch.no_grad():
        model.classifier.bias.fill_(-5.0)
    assert model(torch.rand(1, 3, 64, 64)).max() < 0  # a sigmoid would make every value positive


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        FCDiscriminator(0)
    with pytest.raises(ValueError, match="ndf must be a positive int"):
        FCDiscriminator(19, ndf=2.5)
