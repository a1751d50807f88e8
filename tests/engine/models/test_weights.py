"""load_pretrained: each accepted format from a synthetic file, strictness, and refusal of code-running pickles."""

import pickle

import pytest
import torch

from engine.config import Model
from engine.models import build_segmenter
from engine.models.deeplabv2 import DeepLabV2
from engine.models.weights import load_pretrained


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
