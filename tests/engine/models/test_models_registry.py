"""The segmenter contract for every entry of MODELS, the toy segmenter, and build_segmenter's errors."""

import math

import pytest
import torch

from segadapt.config import Model
from segadapt.models import MODELS
from segadapt.models import ToySegmenter
from segadapt.models import build_segmenter


def _cfg(name: str, **changes) -> Model:
    settings = {"name": name, "backbone": "resnet18", "width": 4, "num_classes": 5, "channels_last": False}
    return Model(**{**settings, **changes})


# Output stride of "main" where it is not DESIGN.md's 8: DeepLab-v3+'s decoder predicts at stride 4 (as U2PL's),
# FCN-8s upsamples its score to the input size (as the official fcn8s); every loss upsamples to the label anyway.
MAIN_STRIDE = {"deeplabv3plus": 4, "fcn8s": 1}
NO_AUX_HEAD = {"fcn8s"}  # FCN-8s has no conv4-level classifier
# Residual branches end in a zero-initialised BatchNorm weight (U2PL's ResNet), so the convs before it get a zero
# gradient on the first step; their gradients exist but are 0.
ZERO_INIT_RESIDUAL = {"deeplabv3plus"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract(name):
    model = build_segmenter(_cfg(name)).train()
    out = model(torch.randn(2, 3, 33, 47))
    assert "main" in out and out["main"].shape[:2] == (2, 5)
    assert ("aux" in out) == (name not in NO_AUX_HEAD)
    if "aux" in out:
        assert out["aux"].shape[:2] == (2, 5)
    stride = MAIN_STRIDE.get(name, 8)
    assert out["main"].shape[2] in (math.ceil(33 / stride), math.ceil(33 / stride) + 1)  # +1 for DeepLab's ceil
    heads, backbone = model.head_parameters(), model.backbone_parameters()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(heads) + len(backbone) == len(trainable)
    assert {id(p) for p in heads} | {id(p) for p in backbone} == {id(p) for p in trainable}
    # A loss linear in the outputs, so zero-initialised score layers (FCN-8s) still receive a gradient.
    sum((value * torch.randn_like(value)).mean() for value in out.values()).backward()
    assert all(p.grad is not None for p in trainable)
    if name not in ZERO_INIT_RESIDUAL:
        assert all(p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_single_level(name):
    model = build_segmenter(_cfg(name, multi_level=False))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 24, 24))  # 2 images: train-mode BatchNorm of a 1x1 pooled branch needs them
    assert "main" in out and "aux" not in out
    assert {id(p) for p in model.head_parameters()}.isdisjoint({id(p) for p in model.backbone_parameters()})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(3)
    plain = build_segmenter(_cfg(name)).eval()
    torch.manual_seed(3)
    fast = build_segmenter(_cfg(name, channels_last=True)).eval()
    first_conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(fast(image.to(memory_format=torch.channels_last))["main"], plain(image)["main"])


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (1, 9)])
def test_toy_output_stride_8(size):
    model = ToySegmenter(3, width=4)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert tuple(out["main"].shape) == (1, 3, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    assert {id(p) for p in model.head_parameters()} == {
        id(p) for p in [*model.classifier.parameters(), *model.aux_classifier.parameters()]
    }


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"name": "pspnet"},
            r"model.name = 'pspnet' is not a segmenter; choices: deeplabv2, deeplabv3plus, fcn8s, hypercolumn, toy",
        ),
        ({"backbone": "resnet152"}, r"model.backbone = 'resnet152' .*resnet101, resnet18, resnet34, resnet50"),
        ({"name": "toy", "width": 0}, "model.width"),
    ],
)
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        build_segmenter(_cfg(changes.pop("name", "deeplabv2"), **changes))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_graph_exports_to_onnx_and_onnxruntime_agrees(name, tmp_path):
    """What `segadapt export` relies on: the eval-mode "main" output of every segmenter traces to ONNX (opset 17)."""
    import onnx
    import onnxruntime

    model = build_segmenter(_cfg(name)).eval()
    image = torch.randn(1, 3, 32, 48) * 50
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (image,), str(path), input_names=["image"], output_names=["main"], opset_version=17,
                      dynamo=False)  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["main"], {"image": image.numpy()})
    with torch.no_grad():
        want = model(image)["main"]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-3, rtol=1e-4)
