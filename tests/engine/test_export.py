"""engine/export/: ONNX export of checkpoints and official snapshots, each stage's check and error, TensorRT gating.

Models are tiny (DeepLab-v2 ResNet-18 at width 8, or the toy net) and images small, so everything runs on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from segadapt import config as config_module
from segadapt import export
from segadapt.models import build_segmenter

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
TINY = ["model.backbone=resnet18", "model.width=8", "eval.input_size=[96,64]", "data.synthshift.size=[96,64]"]


def _config(extra=()):
    return config_module.load("demo", [*TINY, *extra])


def _model(cfg):
    model_cfg = config_module.replace(cfg.model, pretrained="", channels_last=False)
    return build_segmenter(model_cfg).eval()


def _randomise_bn(model):
    """Non-trivial BN statistics (a mis-folded BN would not match) and label maps that vary over the image."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    with torch.no_grad():
        for conv in model.layer6.conv2d_list:  # at init the head biases outweigh the features: constant maps
            conv.bias.zero_()
    return model


@pytest.fixture(scope="module")
def segadapt_checkpoint(tmp_path_factory):
    """A segadapt training checkpoint: models.model state_dict + the plain-dict config."""
    cfg = _config()
    model = _randomise_bn(_model(cfg))
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"models": {"model": model.state_dict()}, "config": config_module.to_dict(cfg), "step": 3}, path)
    return path, model


@pytest.fixture(scope="module")
def official_snapshot(tmp_path_factory):
    """An official-format snapshot: a bare DeeplabMulti state_dict, no config."""
    model = _randomise_bn(_model(_config()))
    path = tmp_path_factory.mktemp("snapshot") / "GTA5_150000.pth"
    torch.save(model.state_dict(), path)
    return path, model


def _args(checkpoint, onnx_path, **changes):
    values = dict(
        checkpoint=str(checkpoint),
        onnx=str(onnx_path),
        recipe=None,
        overrides=[],
        images=None,
        num_images=2,
        val=False,
        tensorrt=None,
        precision="fp16",
        calib=None,
        calib_cache=None,
        timing_cache=None,
        workspace=1.0,
        max_batch=2,
    )
    values.update(changes)
    return argparse.Namespace(**values)


def _normalised_images(count=2, size=(96, 64)):
    cfg = _config()
    return export.parity_images(cfg, size, count)


# ------------------------------------------------------------------------------------------------ the wrapper
@pytest.mark.parametrize("output", export.OUTPUT_KINDS)
def test_wrapper_output_kinds(output):
    model = build_segmenter(config_module.Model(name="toy", width=4, channels_last=False)).eval()
    image = torch.randn(2, 3, 33, 65)  # odd sizes: stride-8 logits are ceil(33/8) x ceil(65/8) = 5 x 9
    got = export.ExportWrapper(model, output, align_corners=True)(image)
    logits = F.interpolate(model(image)["main"], size=(33, 65), mode="bilinear", align_corners=True)
    if output == "label":
        assert got.dtype == torch.int32 and got.shape == (2, 33, 65)
        assert torch.equal(got.long(), logits.argmax(dim=1))
    elif output == "upsampled":
        torch.testing.assert_close(got, logits)
    else:
        assert got.shape == (2, 19, 5, 9)


def test_wrapper_rejects_unknown_output():
    with pytest.raises(ValueError, match="export.output = 'probs'"):
        export.ExportWrapper(torch.nn.Identity(), "probs")


# ------------------------------------------------------------------------------------------- full export runs
def test_export_checkpoint_static_label(segadapt_checkpoint, tmp_path):
    path, model = segadapt_checkpoint
    lines = []
    assert export.run_export(_args(path, tmp_path / "m.onnx"), log=lines.append) == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = export.read_metadata(proto)
    assert meta["channel_order"] == "bgr" and meta["output"] == "label" and meta["num_classes"] == "19"
    assert [float(v) for v in meta["mean"].split(",")] == list(config_module.BGR_MEAN)
    assert meta["input_size"] == "96x64" and meta["dynamic"] == "0"
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]
    assert "argmax agreement 100.0000%" in lines[-1], lines
    # independent check: onnxruntime labels equal eager PyTorch labels on real synthshift images
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for image in _normalised_images():
        got = session.run(None, {"image": image[None].numpy()})[0]
        with torch.no_grad():
            main = model(image[None])["main"]
        want = F.interpolate(main, size=(64, 96), mode="bilinear", align_corners=True).argmax(dim=1)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want.numpy())


def test_export_official_snapshot_upsampled(official_snapshot, tmp_path):
    path, model = official_snapshot
    args = _args(path, tmp_path / "s.onnx", recipe="demo", overrides=[*TINY, "export.output=upsampled"])
    assert export.run_export(args, log=lambda line: None) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    image = _normalised_images(count=1)[:1]
    got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
    with torch.no_grad():
        want = F.interpolate(model(image)["main"], size=(64, 96), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_dynamic_export_runs_at_two_sizes(segadapt_checkpoint, tmp_path):
    path, model = segadapt_checkpoint
    args = _args(path, tmp_path / "d.onnx", overrides=["export.dynamic=true", "export.output=logits"])
    assert export.run_export(args, log=lambda line: None) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    assert [str(d) for d in session.get_inputs()[0].shape] == ["batch", "3", "height", "width"]
    for shape, expected in (((1, 3, 64, 96), (1, 19, 9, 13)), ((2, 3, 40, 56), (2, 19, 6, 8))):
        image = torch.randn(*shape) * 50
        got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
        with torch.no_grad():
            want = model(image)["main"]
        assert tuple(got.shape) == expected == tuple(want.shape)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_parity_with_val_reports_zero_miou_difference(segadapt_checkpoint, tmp_path):
    from segadapt.data.synthshift import generate

    generate(tmp_path / "synth", seed=3, size=(96, 64), count=4, formats=("cityscapes",))
    path, _ = segadapt_checkpoint
    overrides = [f"data.val.root={tmp_path / 'synth' / 'cityscapes'}"]
    lines = []
    export.run_export(_args(path, tmp_path / "v.onnx", overrides=overrides, val=True), log=lines.append)
    assert lines[-1].endswith("mIoU diff +0.000"), lines


# --------------------------------------------------------------------------------------------- stage failures
def test_opset_below_17_is_an_export_stage_error(segadapt_checkpoint, tmp_path):
    path, model = segadapt_checkpoint
    # From the command line the config's range check (Export.opset >= 17) refuses it first, naming the key.
    with pytest.raises(config_module.ConfigError, match=r"key 'export.opset': expected int >= 17, got 16"):
        export.run_export(_args(path, tmp_path / "o.onnx", overrides=["export.opset=16"]), log=lambda line: None)
    # A section built in code reaches the stage, which still names itself.
    section = config_module.Export(opset=16)
    wrapper = export.ExportWrapper(model, "label").eval()
    with pytest.raises(export.ExportError, match="export stage 'onnx export' failed: export.opset = 16"):
        export.export_onnx(wrapper, tmp_path / "o.onnx", section, (96, 64), 1, {})
    assert not (tmp_path / "o.onnx").exists()


def test_checker_stage_names_itself(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "broken",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1])],  # output nothing produces
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "broken.onnx")
    with pytest.raises(export.ExportError, match="export stage 'onnx checker' failed"):
        export.check_onnx(tmp_path / "broken.onnx")


def test_parity_stage_fails_when_outputs_disagree(tmp_path):
    model = build_segmenter(config_module.Model(name="toy", width=4, channels_last=False)).eval()
    wrapper = export.ExportWrapper(model, "label")
    cfg = _config()
    export.export_onnx(wrapper, tmp_path / "t.onnx", cfg.export, (96, 64), 1, export.metadata(cfg, (96, 64)))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn_like(model.classifier.weight))  # eager now differs from ONNX
    with pytest.raises(export.ExportError, match="export stage 'onnxruntime parity' failed: .*below the 99.9%"):
        export.compare_onnxruntime(tmp_path / "t.onnx", wrapper, _normalised_images(), 1)


def test_wrong_model_files_are_named(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: expected a segadapt checkpoint"):
        export.load_config_and_weights(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="missing.pt does not exist"):
        export.load_config_and_weights(tmp_path / "missing.pt")
    torch.save({"models": {"model": {}}}, tmp_path / "noconfig.pt")
    with pytest.raises(ValueError, match="noconfig.pt has 'models' but no 'config'"):
        export.load_config_and_weights(tmp_path / "noconfig.pt")


# ------------------------------------------------------------------------------------------------------- mIoU
def test_confusion_and_miou_by_hand():
    label = torch.tensor([[[0, 0, 1, 255], [2, 2, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 2], [2, 0, 1, 1]]])
    matrix = export.confusion(pred, label, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3, class 1 = 3 / (3 + 4 - 3) = 3/4, class 2 = 1 / (2 + 1 - 1) = 1/2
    assert export.miou(matrix) == pytest.approx(100 * (1 / 3 + 3 / 4 + 1 / 2) / 3)


# --------------------------------------------------------------------------------------------------- TensorRT
def test_plan_meta_roundtrip(tmp_path):
    cfg = _config()
    meta = export.metadata(cfg, (96, 64))
    export.write_plan_meta(tmp_path / "m.plan", meta, "label")
    read = export.read_plan_meta(tmp_path / "m.plan")
    assert read["mean"] == meta["mean"] and read["output_name"] == "label" and read["input_name"] == "image"
    (tmp_path / "x.plan.meta").write_text("format=other\n")
    with pytest.raises(ValueError, match="x.plan.meta: format='other'"):
        export.read_plan_meta(tmp_path / "x.plan")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the missing-dependency message cannot be shown")
def test_tensorrt_absent_says_how_to_install(segadapt_checkpoint, tmp_path):
    path, _ = segadapt_checkpoint
    args = _args(path, tmp_path / "m.onnx", tensorrt=str(tmp_path / "m.plan"))
    with pytest.raises(export.MissingDependencyError, match=r"TensorRT is not installed.*pip install"):
        export.run_export(args, log=lambda line: None)
    assert not (tmp_path / "m.onnx").exists()  # it fails before doing any work


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed (optional: pip install 'segadapt[tensorrt]')")
@pytest.mark.parametrize("dynamic", [False, True])
def test_tensorrt_fp32_engine_matches_pytorch(segadapt_checkpoint, tmp_path, dynamic):
    path, _ = segadapt_checkpoint
    overrides = ["export.dynamic=true"] if dynamic else []
    args = _args(path, tmp_path / "m.onnx", overrides=overrides, tensorrt=str(tmp_path / "m.plan"), precision="fp32")
    lines = []
    assert export.run_export(args, log=lines.append) == 0
    assert lines[-1].startswith("tensorrt-fp32:") and "100.0000%" in lines[-1], lines
    assert (tmp_path / "m.plan.meta").is_file() and (tmp_path / "m.plan.timing").is_file()


def test_snapshot_of_another_architecture_says_how_to_choose(official_snapshot):
    path, _ = official_snapshot  # a narrow ResNet-18; the default recipe builds ResNet-101
    with pytest.raises(ValueError, match=r"GTA5_150000.pth.*recipe 'adaptseg_gta2cs': choose it with --recipe"):
        export.load_segmenter(path)
