"""DeepLab-v2: official parameter / state_dict counts, key names, output size, frozen BN, ASPP quirk, lr groups."""

import math

import pytest
import torch
import torch.nn.functional as F

from segadapt.models.deeplabv2 import ASPP
from segadapt.models.deeplabv2 import DeepLabV2


def _stride8_size(size: int) -> int:
    """conv1 7x7 s2 p3 -> maxpool 3x3 s2 p1 ceil_mode -> layer2 1x1 s2 (official DeeplabMulti arithmetic)."""
    after_conv1 = (size + 2 * 3 - 7) // 2 + 1
    after_pool = math.ceil((after_conv1 + 2 * 1 - 3) / 2) + 1
    # PyTorch drops the last ceil_mode window when it would start in the right padding; it never does here.
    assert (after_pool - 1) * 2 < after_conv1 + 1
    return (after_pool - 1) // 2 + 1


@pytest.fixture(scope="module")
def resnet101():
    return DeepLabV2(19)


def test_official_parameter_and_state_dict_counts(resnet101):
    # METHODS.md A1, measured on the official DeeplabMulti(num_classes=19).
    assert sum(p.numel() for p in resnet101.parameters()) == 44_601_560
    state = resnet101.state_dict()
    # 104 BatchNorms x 5 (incl. num_batches_tracked) + 104 convs + 2 heads x 4 branches x (weight, bias).
    assert len(state) == 640
    assert sum(key.endswith("num_batches_tracked") for key in state) == 104
    assert sum(b.numel() for b in resnet101.buffers()) == 105_448


def test_official_key_names(resnet101):
    state = resnet101.state_dict()
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.0.conv1.weight": (128, 256, 1, 1),
        "layer3.22.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.bn3.weight": (2048,),
        "layer5.conv2d_list.3.weight": (19, 1024, 3, 3),
        "layer6.conv2d_list.0.bias": (19,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer3.23.conv1.weight" not in state
    assert not any(key.startswith("layer6.conv2d_list.4") for key in state)


def test_stride_and_dilation_placement(resnet101):
    # Official Bottleneck: stride on the 1x1 conv1; layer3/4 dilated 2/4 with padding = dilation, stride 1.
    assert resnet101.layer2[0].conv1.stride == (2, 2) and resnet101.layer2[0].conv2.stride == (1, 1)
    assert resnet101.layer3[0].conv2.dilation == (2, 2) and resnet101.layer3[0].conv2.padding == (2, 2)
    assert resnet101.layer4[1].conv2.dilation == (4, 4) and resnet101.layer4[0].conv1.stride == (1, 1)
    assert resnet101.maxpool.ceil_mode is True
    assert [c.dilation[0] for c in resnet101.layer6.conv2d_list] == [6, 12, 18, 24]
    assert [c.padding[0] for c in resnet101.layer5.conv2d_list] == [6, 12, 18, 24]


def test_official_full_size_output_arithmetic():
    # METHODS.md: 1x3x512x1024 -> 1x19x65x129 (ceil_mode makes it 65x129, not 64x128).
    assert (_stride8_size(512), _stride8_size(1024)) == (65, 129)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size", [(65, 97), (64, 96)])  # odd, and even where ceil_mode adds a row/column
def test_output_shape_matches_formula(backbone, size):
    model = DeepLabV2(5, backbone=backbone, width=8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    expected = (2, 5, _stride8_size(size[0]), _stride8_size(size[1]))
    assert set(out) == {"main", "aux"}
    assert tuple(out["main"].shape) == expected and tuple(out["aux"].shape) == expected


def test_single_level_has_no_layer5():
    model = DeepLabV2(3, backbone="resnet18", width=4, multi_level=False)
    assert not hasattr(model, "layer5")
    assert not any(key.startswith("layer5") for key in model.state_dict())
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, 33, 33))) == {"main"}


def test_batchnorm_affine_frozen_running_stats_update():
    model = DeepLabV2(4, backbone="resnet18", width=8).train()
    before = model.bn1.running_mean.clone()
    out = model(torch.randn(2, 3, 41, 41) * 3 + 1)
    (out["main"].sum() + out["aux"].sum()).backward()
    assert not model.bn1.running_mean.equal(before)
    assert int(model.layer3[0].downsample[1].num_batches_tracked) == 1
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not p.requires_grad and p.grad is None for m in norms for p in m.parameters())
    assert model.conv1.weight.grad is not None and model.layer6.conv2d_list[0].weight.grad is not None


def test_head_and_backbone_parameters_partition(resnet101):
    heads = resnet101.head_parameters()
    backbone = resnet101.backbone_parameters()
    trainable = [p for p in resnet101.parameters() if p.requires_grad]
    # 2 heads x 2 summed branches x (weight, bias); the quirk freezes branches 2 and 3. 104 conv weights (BN frozen).
    assert len(heads) == 8 and len(backbone) == 104
    used = [c for head in (resnet101.layer5, resnet101.layer6) for c in head.conv2d_list[:2]]
    assert {id(p) for p in heads} == {id(p) for c in used for p in c.parameters()}
    assert len({id(p) for p in heads + backbone}) == len(heads) + len(backbone) == len(trainable)
    assert {id(p) for p in heads + backbone} == {id(p) for p in trainable}


def _official_classifier_forward(x, weights, biases):
    """Loop-free transcription of the official Classifier_Module.forward: `return` inside the loop after one add."""
    out = F.conv2d(x, weights[0], biases[0], padding=6, dilation=6)
    out += F.conv2d(x, weights[1], biases[1], padding=12, dilation=12)
    return out


def _four_branch_sum(x, weights, biases):
    return (
        F.conv2d(x, weights[0], biases[0], padding=6, dilation=6)
        + F.conv2d(x, weights[1], biases[1], padding=12, dilation=12)
        + F.conv2d(x, weights[2], biases[2], padding=18, dilation=18)
        + F.conv2d(x, weights[3], biases[3], padding=24, dilation=24)
    )


@pytest.mark.parametrize("quirk", [True, False], ids=["sum_first_two_only", "all_four"])
def test_official_reference_aspp(quirk):
    aspp = ASPP(6, 19, (6, 12, 18, 24), sum_first_two_only=quirk)
    weights = [c.weight.detach() for c in aspp.conv2d_list]
    biases = [c.bias.detach() for c in aspp.conv2d_list]
    x = torch.randn(2, 6, 30, 37)
    reference = _official_classifier_forward if quirk else _four_branch_sum
    torch.testing.assert_close(aspp(x), reference(x, weights, biases), rtol=1e-5, atol=1e-6)
    # The branches the quirk drops still change the 4-branch output (so the test can tell them apart).
    assert not torch.allclose(_official_classifier_forward(x, weights, biases), _four_branch_sum(x, weights, biases))
    assert sum(p.numel() for p in aspp.parameters()) == 4 * (19 * 6 * 9 + 19)


def test_quirk_branches_get_no_gradient_and_are_frozen():
    aspp = ASPP(4, 3, sum_first_two_only=True)
    aspp(torch.randn(1, 4, 9, 9)).sum().backward()
    assert [c.weight.grad is not None for c in aspp.conv2d_list] == [True, True, False, False]
    assert [c.weight.requires_grad for c in aspp.conv2d_list] == [True, True, False, False]
    assert all(p.requires_grad for p in ASPP(4, 3, sum_first_two_only=False).parameters())


def test_aspp_init_is_normal_001():
    aspp = ASPP(256, 64)
    weight = torch.cat([c.weight.flatten() for c in aspp.conv2d_list])
    assert abs(weight.std().item() - 0.01) < 5e-4 and abs(weight.mean().item()) < 5e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "resnet152"}, "model.backbone"),
        ({"width": 0}, "model.width"),
        ({"num_classes": 0}, "model.num_classes"),
        ({"aspp_rates": (6,)}, "model.aspp_sum_first_two_only"),
        ({"aspp_rates": (6, -1)}, "model.aspp_rates"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    arguments = {"num_classes": 3, "backbone": "resnet18", "width": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        DeepLabV2(**arguments)
