"""load_pretrained: each accepted format from a synthetic file, strictness, and refusal of code-running pickles."""

import pickle

import pytest
import torch

from segadapt.config import Model
from segadapt.models import build_segmenter
from segadapt.models.deeplabv2 import DeepLabV2
from segadapt.models.weights import load_pretrained


def _small(num_classes: int = 5, seed: int = 0) -> DeepLabV2:
    torch.manual_seed(seed)
    model = DeepLabV2(num_classes, backbone="resnet18", width=4)
    with torch.no_grad():  # distinct, non-default values everywhere, buffers included
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor))
    return model


def _backbone(state):
    return {k: v for k, v in state.items() if not k.startswith(("layer5.", "layer6."))}


def _assert_same(got: dict, want: dict, keys) -> None:
    for key in keys:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=lambda m, k=key: f"[{k}] {m}")


@pytest.fixture
def source():
    return _small(seed=1)


@pytest.fixture
def target():
    return _small(seed=2)


def test_official_snapshot_plain_keys(tmp_path, source, target):
    path = tmp_path / "GTA2Cityscapes_multi.pth"
    torch.save(source.state_dict(), path)
    report = load_pretrained(target, path)
    assert report.format == "snapshot" and report.path == str(path)
    assert len(report.loaded) == len(source.state_dict()) and not report.skipped and not report.kept
    _assert_same(target.state_dict(), source.state_dict(), source.state_dict())


def test_old_snapshot_without_num_batches_tracked_and_module_prefix(tmp_path, source, target):
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    kept_counter = target.bn1.num_batches_tracked.clone()
    report = load_pretrained(target, tmp_path / "old.pth")
    assert report.format == "snapshot"
    assert report.kept and all(k.endswith("num_batches_tracked") for k in report.kept)
    assert target.bn1.num_batches_tracked.equal(kept_counter)
    _assert_same(target.state_dict(), source.state_dict(), [k[len("module.") :] for k in state])


def test_deeplab_init_scale_prefix_skips_classifier(tmp_path, source, target):
    # DeepLab_resnet_pretrained_init: `Scale.` keys, no num_batches_tracked, a 21-class layer5 on layer4 features.
    state = {f"Scale.{k}": v for k, v in _backbone(source.state_dict()).items() if "num_batches" not in k}
    classifier = {}
    for i in range(4):
        classifier[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(21, source.layer4_channels, 3, 3)
        classifier[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(21)
    torch.save({**state, **classifier}, tmp_path / "DeepLab_resnet_pretrained_init.pth")
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(("layer5.", "layer6."))}
    report = load_pretrained(target, tmp_path / "DeepLab_resnet_pretrained_init.pth")
    assert report.format == "deeplab_init"
    assert sorted(report.skipped) == sorted(classifier)
    assert set(heads_before) <= set(report.kept)
    assert len(report.loaded) == len(state)
    _assert_same(target.state_dict(), source.state_dict(), [k[len("Scale.") :] for k in state])
    _assert_same(target.state_dict(), heads_before, heads_before)  # heads keep their own init


def test_torchvision_resnet_skips_fc(tmp_path, source, target):
    state = dict(_backbone(source.state_dict()))
    state["fc.weight"] = torch.randn(1000, source.layer4_channels)
    state["fc.bias"] = torch.randn(1000)
    torch.save(state, tmp_path / "resnet.pth")
    report = load_pretrained(target, tmp_path / "resnet.pth")
    assert report.format == "torchvision"
    assert report.skipped == ("fc.weight", "fc.bias")
    assert any("stride" in note for note in report.notes)
    _assert_same(target.state_dict(), source.state_dict(), _backbone(source.state_dict()))


def test_segadapt_checkpoint(tmp_path, source, target):
    checkpoint = {
        "models": {"model": source.state_dict(), "discriminator": {"conv1.weight": torch.zeros(1)}},
        "step": 5000,
        "config": {"model": {"name": "deeplabv2"}},
    }
    torch.save(checkpoint, tmp_path / "step_5000.pt")
    report = load_pretrained(target, tmp_path / "step_5000.pt")
    assert report.format == "segadapt"
    _assert_same(target.state_dict(), source.state_dict(), source.state_dict())


def test_missing_unexpected_and_mismatched_keys_raise_naming_file_and_keys(tmp_path, target):
    other = _small(num_classes=7)
    state = other.state_dict()
    del state["conv1.weight"]
    state["layer9.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(target, path)
    message = str(info.value)
    assert str(path) in message
    assert "missing (1): conv1.weight" in message and "unexpected (1): layer9.weight" in message
    assert "layer6.conv2d_list.0.weight: (7, 32, 3, 3) vs (5, 32, 3, 3)" in message
    _assert_same(target.state_dict(), before, before)  # nothing loaded on failure


def test_non_strict_loads_what_fits_and_reports_the_rest(tmp_path, target):
    other = _small(num_classes=7)
    state = other.state_dict()
    del state["conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    report = load_pretrained(target, tmp_path / "partial.pth", strict=False)
    assert report.missing == ("conv1.weight",)
    assert len(report.mismatched) == 16  # every ASPP tensor of both heads has 7 classes
    _assert_same(target.state_dict(), other.state_dict(), ["layer2.0.conv1.weight", "bn1.running_mean"])


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_code_running_pickle_is_refused(tmp_path, target, writer):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    else:
        torch.save({"conv1.weight": _Evil(str(marker))}, path)
    with pytest.raises(ValueError, match="not a weights-only torch file") as info:
        load_pretrained(target, path)
    assert "Unsupported global" in str(info.value) and "open" in str(info.value)
    assert "weights_only` set to `False" not in str(info.value)
    assert not marker.exists()


def test_bad_files(tmp_path, target):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(target, tmp_path / "nowhere.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: expected a non-empty state_dict"):
        load_pretrained(target, tmp_path / "list.pth")
    torch.save({"conv1.weight": 3}, tmp_path / "ints.pth")
    with pytest.raises(ValueError, match="offending keys: conv1.weight"):
        load_pretrained(target, tmp_path / "ints.pth")
    torch.save({"models": {"discriminator": {}}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="'models' must be a dict with a 'model'"):
        load_pretrained(target, tmp_path / "ckpt.pt")


def test_build_segmenter_loads_pretrained(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "snapshot.pth")
    cfg = Model(backbone="resnet18", width=4, num_classes=5, pretrained=str(tmp_path / "snapshot.pth"))
    model = build_segmenter(cfg)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same(model.state_dict(), source.state_dict(), source.state_dict())


# ------------------------------------------------------------------ other stages' checkpoints, torchvision VGG-16
def _hypercolumn(num_classes: int = 5, multi_level: bool = False, width: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = build_segmenter(Model(name="hypercolumn", width=width, num_classes=num_classes, multi_level=multi_level))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor))
    return model


def _checkpoint(model, path, name="hypercolumn"):
    torch.save({"models": {"model": model.state_dict()}, "step": 7, "config": {"model": {"name": name}}}, path)


def test_segadapt_checkpoint_with_another_head_loads_the_backbone_and_reports_the_head(tmp_path):
    source = _hypercolumn(num_classes=5, multi_level=True, seed=1)
    _checkpoint(source, tmp_path / "stage.pt")
    target = _hypercolumn(num_classes=7, multi_level=False, seed=2)
    classifier_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.2.")}
    report = load_pretrained(target, tmp_path / "stage.pt")
    assert report.format == "segadapt" and "model 'hypercolumn'" in report.notes[0] and "step 7" in report.notes[0]
    assert sorted(report.kept) == ["head.2.bias", "head.2.weight"]
    assert sorted(report.skipped) == ["aux_head.bias", "aux_head.weight", "head.2.bias", "head.2.weight"]
    shared = [k for k in target.state_dict() if not k.startswith("head.2.")]
    _assert_same(target.state_dict(), source.state_dict(), shared)  # backbone, fc6/fc7 and the MLP's first layer
    _assert_same(target.state_dict(), classifier_before, classifier_before)


def test_segadapt_checkpoint_backbone_mismatch_still_raises(tmp_path):
    _checkpoint(_hypercolumn(width=8), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"shape mismatch .*backbone\.features\.0\.weight: \(8, 1, 3, 3\) vs \(4, 1"):
        load_pretrained(_hypercolumn(width=4), tmp_path / "wide.pt")
    state = _hypercolumn().state_dict()
    del state["backbone.features.1.running_var"]
    torch.save({"models": {"model": state}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing \(1\): backbone\.features\.1\.running_var"):
        load_pretrained(_hypercolumn(), tmp_path / "partial.pt")


class _VGGNet(torch.nn.Module):
    """An FCN-style holder of engine.models.vgg.VGG16 as `backbone` plus convs named fc6 / fc7 (LSD-seg's layout)."""

    def __init__(self, width: int = 4, fc: int = 16, batch_norm: bool = True):
        super().__init__()
        from segadapt.models.vgg import VGG16

        self.backbone = VGG16(width=width, batch_norm=batch_norm)
        self.fc6 = torch.nn.Conv2d(8 * width, fc, 7)
        self.fc7 = torch.nn.Conv2d(fc, fc, 1)
        self.score = torch.nn.Conv2d(fc, 3, 1)


def _torchvision_vgg(width: int = 4, fc: int = 16, batch_norm: bool = True) -> dict:
    """A torchvision vgg16(_bn) state_dict at a tiny width: features.N.*, classifier.0/3/6.*."""
    from segadapt.models.vgg import VGG16

    features = {f"features.{k}": torch.rand_like(v) if v.is_floating_point() else v
                for k, v in VGG16(width=width, batch_norm=batch_norm).features.state_dict().items()}  # fmt: skip
    classifier = {
        "classifier.0.weight": torch.randn(fc, 8 * width * 49),
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc),
        "classifier.3.bias": torch.randn(fc),
        "classifier.6.weight": torch.randn(1000, fc),
        "classifier.6.bias": torch.randn(1000),
    }
    return {**features, **classifier}


def test_torchvision_vgg16_bn_into_a_backbone_with_fc6_fc7(tmp_path):
    state = _torchvision_vgg()
    torch.save(state, tmp_path / "vgg16_bn.pth")
    model = _VGGNet()
    score_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("score.")}
    report = load_pretrained(model, tmp_path / "vgg16_bn.pth")
    assert report.format == "torchvision_vgg"
    assert sorted(report.skipped) == ["classifier.6.bias", "classifier.6.weight"]
    assert sorted(report.kept) == ["score.bias", "score.weight"]
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith("features."):
            torch.testing.assert_close(own[f"backbone.{key}"], value, rtol=0, atol=0)
    torch.testing.assert_close(own["fc6.weight"], state["classifier.0.weight"].reshape(16, 32, 7, 7), rtol=0, atol=0)
    torch.testing.assert_close(own["fc7.weight"], state["classifier.3.weight"].reshape(16, 16, 1, 1), rtol=0, atol=0)
    torch.testing.assert_close(own["fc6.bias"], state["classifier.0.bias"], rtol=0, atol=0)
    _assert_same(own, score_before, score_before)


def test_torchvision_vgg16_bn_into_the_grey_hypercolumn_net(tmp_path):
    state = _torchvision_vgg()
    torch.save(state, tmp_path / "vgg16_bn.pth")
    model = _hypercolumn()
    report = load_pretrained(model, tmp_path / "vgg16_bn.pth")
    assert any("summed over its 3 input channels" in note for note in report.notes)
    assert {"classifier.0.weight", "classifier.3.weight", "classifier.6.weight"} <= set(report.skipped)  # no fc6/fc7
    torch.testing.assert_close(model.backbone.features[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone.features[1].running_mean, state["features.1.running_mean"])


def test_torchvision_vgg16_without_bn_into_a_bn_backbone_raises(tmp_path):
    torch.save(_torchvision_vgg(batch_norm=False), tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match=r"torchvision_vgg weights do not fit the model; missing"):
        load_pretrained(_VGGNet(), tmp_path / "vgg16.pth")


def _official_res_deeplab_keys(blocks=(3, 4, 23, 3)) -> list[str]:
    """The state_dict keys of hfslyc/AdvSemiSeg model/deeplab.py `Res_Deeplab` (ResNet(Bottleneck, [3, 4, 23, 3])):
    conv1/bn1, layerN.i.conv1-3/bn1-3 with downsample.0/.1 on each layer's first block, and the one classifier
    `self.layer5 = self._make_pred_layer(Classifier_Module, [6, 12, 18, 24], ...)` (deeplab.py:135), whose
    conv2d_list holds 4 convs with bias."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{k}" for k in bn)]
    for layer, count in enumerate(blocks, start=1):
        for index in range(count):
            block = f"layer{layer}.{index}"
            for n in (1, 2, 3):
                keys += [f"{block}.conv{n}.weight", *(f"{block}.bn{n}.{k}" for k in bn)]
            if index == 0:
                keys += [f"{block}.downsample.0.weight", *(f"{block}.downsample.1.{k}" for k in bn)]
    return keys + [f"layer5.conv2d_list.{i}.{k}" for i in range(4) for k in ("weight", "bias")]


@pytest.mark.parametrize("num_classes", [21, 91])
def test_official_advsemiseg_res_deeplab_layout_loads_into_the_single_level_model(tmp_path, num_classes):
    """An official AdvSemiSeg snapshot (train.py saves VOC_<step>.pth = Res_Deeplab.state_dict()) and an init in that
    layout with another classifier size (train.py:211-217 copies only tensors whose name and size match)."""
    torch.manual_seed(0)
    single = dict(num_classes=21, backbone="resnet101", width=4, multi_level=False)
    source = DeepLabV2(**{**single, "num_classes": num_classes})
    official = {("layer5." + k[len("layer6.") :] if k.startswith("layer6.") else k): v
                for k, v in source.state_dict().items()}  # fmt: skip
    assert list(official) == _official_res_deeplab_keys()  # the file speaks the official class's key names
    path = tmp_path / "VOC_20000.pth"
    torch.save(official, path)
    target = DeepLabV2(**single)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_pretrained(target, path)
    assert report.format == "res_deeplab"
    got = target.state_dict()
    for key, value in official.items():
        ours = "layer6." + key[len("layer5.") :] if key.startswith("layer5.") else key
        if num_classes == 21 or not key.startswith("layer5."):
            assert torch.equal(got[ours], value), key
        else:  # another class count: the head keeps its init, as the official size check leaves it
            assert torch.equal(got[ours], before[ours]) and key in report.skipped, key
