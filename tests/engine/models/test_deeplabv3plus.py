"""DeepLab-v3+ (U2PL): output strides and channels, multi-grid dilations, trainable BN, zero-init residuals,
official key names, lr groups and the ONNX export of the eval-mode graph."""

import math

import pytest
import torch
from torch import nn

from segadapt import config
from segadapt.models import build_segmenter
from segadapt.models.deeplabv3plus import DeepLabV3Plus


def _stride4_size(size: int) -> int:
    """conv 3x3 s2 p1 -> maxpool 3x3 s2 p1 ceil_mode (U2PL's deep stem arithmetic)."""
    after_conv = (size + 2 - 3) // 2 + 1
    return math.ceil((after_conv + 2 - 3) / 2) + 1


def _stride8_size(size: int) -> int:
    return (_stride4_size(size) - 1) // 2 + 1


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_outputs_in_train_and_eval_mode(backbone):
    model = DeepLabV3Plus(5, backbone=backbone, width=4, multi_level=True).train()
    out = model(torch.randn(2, 3, 33, 50))
    h4, w4 = _stride4_size(33), _stride4_size(50)
    assert out["main"].shape == (2, 5, h4, w4)
    assert out["rep"].shape == (2, 16, h4, w4)  # 4 * width channels (256 at the official width 64)
    assert out["aux"].shape == (2, 5, _stride8_size(33), _stride8_size(50))
    model.eval()
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, 33, 50))) == {"main"}


def test_multi_grid_dilations_and_strides():
    model = DeepLabV3Plus(21, backbone="resnet50", width=4, multi_level=False)
    layer3 = [block.conv2.dilation[0] for block in model.encoder.layer3]
    layer4 = [block.conv2.dilation[0] for block in model.encoder.layer4]
    assert layer3 == [1, 2, 2, 2, 2, 2]  # replace_stride_with_dilation: first block keeps the previous dilation
    assert layer4 == [4, 8, 16]  # multi-grid (2, 2, 4) on dilation 2 -> 4
    assert model.encoder.layer2[0].conv2.stride == (2, 2)  # torchvision-style: stride on the 3x3
    assert all(block.conv2.stride == (1, 1) for block in [*model.encoder.layer3, *model.encoder.layer4])
    assert not hasattr(model, "auxor")


def test_batch_norm_trains_and_residual_branches_start_at_zero():
    model = DeepLabV3Plus(5, backbone="resnet50", width=4)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(p.requires_grad for m in norms for p in m.parameters())
    assert all(torch.all(block.bn3.weight == 0) for layer in (model.encoder.layer1, model.encoder.layer4)
               for block in layer)  # fmt: skip
    assert torch.all(model.encoder.layer1[0].bn1.weight == 1)


def test_official_key_names_and_shapes():
    state = DeepLabV3Plus(19, backbone="resnet101", width=64, aspp_rates=(12, 24, 36)).state_dict()
    expected = {
        "encoder.conv1.0.weight": (64, 3, 3, 3),
        "encoder.conv1.6.weight": (128, 64, 3, 3),
        "encoder.bn1.weight": (128,),
        "encoder.layer1.0.downsample.0.weight": (256, 128, 1, 1),
        "encoder.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "decoder.low_conv.0.weight": (256, 256, 1, 1),
        "decoder.aspp.conv1.1.weight": (256, 2048, 1, 1),
        "decoder.aspp.conv5.0.weight": (256, 2048, 3, 3),
        "decoder.head.0.weight": (256, 1280, 3, 3),
        "decoder.classifier.8.weight": (19, 256, 1, 1),
        "decoder.representation.8.weight": (256, 256, 1, 1),
        "auxor.aux.0.weight": (256, 1024, 3, 3),
        "auxor.aux.4.weight": (19, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "decoder.aspp.conv6.0.weight" not in state


def test_param_groups_cover_every_parameter_once_heads_are_decoder_and_aux():
    model = DeepLabV3Plus(5, backbone="resnet18", width=4)
    head, backbone = model.head_parameters(), model.backbone_parameters()
    ids = [id(p) for p in head + backbone]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in head} == {id(p) for p in [*model.decoder.parameters(), *model.auxor.parameters()]}


def test_registry_builds_from_config():
    cfg = config.Model(name="deeplabv3plus", backbone="resnet18", width=4, num_classes=7, aspp_rates=(1, 2, 3))
    model = build_segmenter(cfg)
    assert isinstance(model, DeepLabV3Plus) and model.decoder.aspp.num_branches == 5
    with pytest.raises(ValueError, match="model.backbone"):
        build_segmenter(config.Model(name="deeplabv3plus", backbone="vgg16"))
