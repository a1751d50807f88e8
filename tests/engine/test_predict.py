"""engine/predict.py: checkpoint and ONNX back-ends give identical label maps; outputs; clear errors for bad models."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segadapt import config as config_module
from segadapt import export
from segadapt import predict
from segadapt.models import build_segmenter

TINY = ["model.backbone=resnet18", "model.width=8", "eval.input_size=[96,64]", "data.synthshift.size=[96,64]"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real synthshift "photo" images at 96x64 plus one at another size (predict resizes it and back)."""
    from segadapt.data.synthshift import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=5, size=(96, 64), count=4, formats=("cityscapes",))
    folder = tmp_path_factory.mktemp("images")
    for path in sorted(root.glob("cityscapes/leftImg8bit/*/*/*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    Image.open(path).resize((80, 50), Image.BICUBIC).save(folder / "odd_size.png")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A segadapt checkpoint and its static-label and dynamic-logits ONNX exports."""
    root = tmp_path_factory.mktemp("models")
    cfg = config_module.load("demo", TINY)
    model = build_segmenter(config_module.replace(cfg.model, channels_last=False)).eval()
    with torch.no_grad():
        for conv in model.layer6.conv2d_list:  # at init the head biases outweigh the features: constant maps
            conv.bias.zero_()
    ckpt = root / "checkpoint.pt"
    torch.save({"models": {"model": model.state_dict()}, "config": config_module.to_dict(cfg)}, ckpt)
    for name, overrides in (("static.onnx", []), ("dynamic.onnx", ["export.dynamic=true", "export.output=logits"])):
        args = argparse.Namespace(
            checkpoint=str(ckpt),
            onnx=str(root / name),
            recipe=None,
            overrides=overrides,
            images=None,
            num_images=1,
            val=False,
            tensorrt=None,
        )
        export.run_export(args, log=lambda line: None)
    return {"checkpoint": ckpt, "static": root / "static.onnx", "dynamic": root / "dynamic.onnx", "model": model}


def _run(model_path, images, out):
    args = argparse.Namespace(
        model=str(model_path),
        images=[str(images)],
        out=str(out),
        recipe=None,
        overrides=[],
        device="cpu",
        alpha=0.5,
        no_progress=True,
    )
    assert predict.run_predict(args, log=lambda line: None) == 0
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*_trainIds.png"))}


def test_checkpoint_and_onnx_give_identical_label_maps(models, images, tmp_path):
    from_checkpoint = _run(models["checkpoint"], images, tmp_path / "ckpt")
    from_static = _run(models["static"], images, tmp_path / "static")
    from_dynamic = _run(models["dynamic"], images, tmp_path / "dynamic")
    assert len(from_checkpoint) == 4 and from_checkpoint.keys() == from_static.keys() == from_dynamic.keys()
    for name, label in from_checkpoint.items():
        np.testing.assert_array_equal(from_static[name], label, err_msg=f"static onnx, {name}")
        np.testing.assert_array_equal(from_dynamic[name], label, err_msg=f"dynamic onnx, {name}")
    assert from_checkpoint["odd_size_trainIds.png"].shape == (50, 80)  # mapped back to the image's own size
    assert len({int(v) for label in from_checkpoint.values() for v in np.unique(label)}) > 1  # not a constant map


def test_label_map_follows_the_bgr_input_contract(models, images):
    """Labels equal a by-hand forward: RGB -> BGR, minus the Caffe mean, no std, bilinear upsampling, argmax."""
    backend = predict.open_model(models["checkpoint"], device="cpu")
    path = sorted(images.glob("synth_*.png"))[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bgr = torch.from_numpy(rgb[..., ::-1].copy()).float() - torch.tensor(config_module.BGR_MEAN)
    with torch.no_grad():
        main = models["model"](bgr.permute(2, 0, 1)[None])["main"]
    want = F.interpolate(main, size=rgb.shape[:2], mode="bilinear", align_corners=True).argmax(dim=1)[0]
    np.testing.assert_array_equal(predict.label_map(backend, rgb), want.numpy().astype(np.uint8))


def test_overlay_blends_and_keeps_ignore_pixels():
    from segadapt.data.labels import colorize

    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1, 255], [2, 255, 0]], dtype=np.uint8)
    got = predict.overlay(image, label, alpha=0.5)
    want = np.floor(0.5 * 100 + 0.5 * colorize(label).astype(np.float64) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got[label != 255], want[label != 255])
    np.testing.assert_array_equal(got[label == 255], image[label == 255])


def test_outputs_are_written_per_image(models, images, tmp_path):
    _run(models["static"], images, tmp_path)
    overlay = np.asarray(Image.open(tmp_path / "odd_size_overlay.png"))
    assert overlay.shape == (50, 80, 3) and overlay.dtype == np.uint8
    assert len(list(tmp_path.glob("*_overlay.png"))) == 4


def test_static_onnx_info_comes_from_metadata_and_graph(models):
    info = predict.open_model(models["static"]).info
    assert (info.kind, info.input_size, info.batch_size, info.output) == ("onnx", (96, 64), 1, "label")
    assert info.data.channel_order == "bgr" and info.data.mean == pytest.approx(config_module.BGR_MEAN)
    dynamic = predict.open_model(models["dynamic"]).info
    assert (dynamic.input_size, dynamic.output) == ((96, 64), "logits")


# ------------------------------------------------------------------------------------------------- bad inputs
def test_missing_model_file(tmp_path):
    with pytest.raises(ValueError, match=r"--model .*nothing.onnx does not exist"):
        predict.open_model(tmp_path / "nothing.onnx")


def test_wrong_kind_of_model_file(tmp_path):
    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"weights.txt: unknown model kind '.txt'; expected a segadapt checkpoint"):
        predict.open_model(tmp_path / "weights.txt")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xff definitely not protobuf \xff" * 10)
    with pytest.raises(ValueError, match="garbage.onnx: not a valid ONNX model"):
        predict.open_model(tmp_path / "garbage.onnx")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt"):
        predict.open_model(tmp_path / "garbage.pt")


def test_onnx_without_segadapt_metadata(models, tmp_path):
    proto = onnx.load(str(models["static"]))
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match=r"bare.onnx: no segadapt metadata \(channel_order, mean"):
        predict.open_model(tmp_path / "bare.onnx")


def test_recipe_flags_only_for_checkpoints(models):
    with pytest.raises(ValueError, match="--recipe/--set only apply to checkpoints"):
        predict.open_model(models["static"], overrides=["eval.input_size=[32,32]"])


def test_image_inputs(tmp_path):
    with pytest.raises(ValueError, match="image input .*nope does not exist"):
        export.image_files([str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="no images"):
        export.image_files([str(tmp_path)])


def test_cli_wiring(models, images, tmp_path):
    from segadapt import cli

    status = cli.main(
        ["predict", "--model", str(models["static"]), str(images), "--out", str(tmp_path), "--no-progress"]
    )
    assert status == 0 and len(list(tmp_path.glob("*_trainIds.png"))) == 4
    assert cli.main(["predict", "--model", str(tmp_path / "x.bin"), str(images), "--out", str(tmp_path)]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed (optional: pip install tensorrt)"
)
def test_tensorrt_fp32_engine_gives_the_checkpoint_label_maps(models, images, tmp_path):
    args = argparse.Namespace(
        checkpoint=str(models["checkpoint"]),
        onnx=str(tmp_path / "m.onnx"),
        recipe=None,
        overrides=[],
        images=None,
        num_images=1,
        val=False,
        tensorrt=str(tmp_path / "m.plan"),
        precision="fp32",
        calib=None,
        calib_cache=None,
        timing_cache=None,
        workspace=1.0,
        max_batch=1,
    )
    export.run_export(args, log=lambda line: None)
    from_checkpoint = _run(models["checkpoint"], images, tmp_path / "ckpt")
    from_engine = _run(tmp_path / "m.plan", images, tmp_path / "plan")
    for name, label in from_checkpoint.items():
        np.testing.assert_array_equal(from_engine[name], label, err_msg=name)
