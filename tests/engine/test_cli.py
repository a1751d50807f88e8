"""The `segadapt` command line: --help documents every field, data tools, and clear errors for missing data."""

import json

import pytest
import torch

from segadapt import cli
from segadapt import config


def test_train_help_lists_documented_fields(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "method.lambda_adv_target1" in text and "LAMBDA_ADV_TARGET1" in text
    assert "data.source.resize" in text and "eval.align_corners" in text


def test_missing_dataset_shows_layout_and_how_to_point_at_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    assert cli.main(["train", "adaptseg_gta2cs"]) == 2
    err = capsys.readouterr().err
    assert "data.source.root = 'data/GTA5' does not exist" in err
    assert "images/" in err and "labels/" in err
    assert "--set data.source.root=" in err


def test_unknown_key_is_an_error_naming_the_key(capsys):
    assert cli.main(["train", "demo", "--set", "train.sed=1"]) == 2
    assert "train.seed" in capsys.readouterr().err


def test_data_synthshift_and_check(tmp_path, capsys):
    assert cli.main(["data", "synthshift", "--out", str(tmp_path), "--size", "64x32", "--count", "8"]) == 0
    assert cli.main(["data", "check", str(tmp_path / "gta5"), "--dataset", "gta5"]) == 0
    label = sorted((tmp_path / "gta5" / "labels").iterdir())[0]
    label.write_bytes(b"\x89PNG truncated")
    capsys.readouterr()
    assert cli.main(["data", "check", str(tmp_path / "gta5"), "--dataset", "gta5"]) == 1
    assert label.name in capsys.readouterr().out
    assert cli.main(["data", "synthshift", "--out", str(tmp_path / "x"), "--size", "64by32"]) == 2


def _toy_demo_sets(tmp_path, run_dir=None, **changes):
    """`--set` arguments of the demo recipe at a toy size, on synthshift generated under tmp_path."""
    sets = {
        "model.width": "8",
        "data.synthshift.out": f'"{tmp_path / "synth"}"',
        "data.synthshift.count": "8",
        "data.synthshift.size": "[64, 32]",
        "data.source.root": f'"{tmp_path / "synth" / "gta5"}"',
        "data.target.root": f'"{tmp_path / "synth" / "cityscapes"}"',
        "data.val.root": f'"{tmp_path / "synth" / "cityscapes"}"',
        "data.num_workers": "0",
        "schedule.stop_step": "4",
        "schedule.total_steps": "4",
        "train.eval_every": "2",
        "train.checkpoint_every": "2",
        "train.progress": "false",
        "train.run_dir": f'"{run_dir or tmp_path / "runs" / "{method}"}"',
        "start.recipe": '""',  # the demo's own start trains 500 steps on 200 images; the start tests set a toy one
        **changes,
    }
    return [x for key, value in sets.items() for x in ("--set", f"{key}={value}")]


def test_demo_code_path_at_toy_size(tmp_path, capsys):
    """`run.sh demo` end to end at a toy size: generate, train both methods, table, then evaluate and report."""
    args = _toy_demo_sets(tmp_path)
    assert cli.main(["train", "demo", *args]) == 0
    out = capsys.readouterr().out
    assert "| class | adaptsegnet | sourceonly |" in out and "**mIoU**" in out
    for method in ("adaptsegnet", "sourceonly"):
        results = json.loads((tmp_path / "runs" / method / "results.json").read_text())
        assert results["steps"] == 4 and results["best"]["step"] in (2, 4)
        assert results["best"]["miou"] >= results["last"]["miou"]
    best = tmp_path / "runs" / "adaptsegnet" / "best.pt"
    assert cli.main(["evaluate", "demo", "--checkpoint", str(best), "--out", str(tmp_path / "ev"), *args]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    results = json.loads((tmp_path / "runs" / "adaptsegnet" / "results.json").read_text())
    assert metrics["miou"] == pytest.approx(results["best"]["miou"], abs=1e-6)  # best.pt reproduces its score
    assert cli.main(["report", str(tmp_path / "runs" / "adaptsegnet")]) == 0
    assert (tmp_path / "runs" / "adaptsegnet" / "report" / "summary.md").is_file()


def _toy_start(tmp_path, **changes):
    """`start.set=[...]` of a toy start: the toy demo as source-only on its own synthshift draw (seed 1000, under
    tmp_path/pool), trained in tmp_path/start, without a start of its own."""
    sets = {"train.compare_methods": "[]", "train.tensorboard": "false", "data.synthshift.seed": "1000", **changes}
    toy = _toy_demo_sets(tmp_path / "pool", tmp_path / "start", **sets)[1::2]
    own = ['method={name="sourceonly"}', 'start.recipe=""', *toy]
    return "start.set=[" + ", ".join(f"'{text}'" for text in own) + "]"


def test_start_recipe_is_trained_once_and_every_method_starts_from_it(tmp_path, capsys, monkeypatch):
    """The demo's pretrained start (issue 18 goal 5): `start.recipe` is trained first, once, and its final weights
    become model.pretrained of the method and its compare_methods baseline; a start directory holding other settings
    is an error naming the key, never overwritten."""
    from segadapt import checkpoint

    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")  # the kernels are the toy demo test's; here the interpreter's cost

    start_ckpt = tmp_path / "start" / "checkpoints" / "step_0000004.pt"
    # lr 1e-30: the main runs' weights stay their start's exactly (BatchNorm buffers still move), so the final
    # checkpoints show what was loaded
    args = [*_toy_demo_sets(tmp_path, **{"optim.lr": "1e-30"}), "--set", "start.recipe=demo"]
    assert cli.main(["train", "demo", *args, "--set", _toy_start(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "start: training demo (sourceonly)" in out
    start_config = json.loads((tmp_path / "start" / "config.json").read_text())
    assert start_config["method"]["name"] == "sourceonly" and start_config["data"]["synthshift"]["seed"] == 1000
    assert start_config["data"]["source"]["root"] == str(tmp_path / "pool" / "synth" / "gta5")
    start_weights = checkpoint.load(start_ckpt)["models"]["model"]
    for method in ("adaptsegnet", "sourceonly"):
        run = tmp_path / "runs" / method
        held = json.loads((run / "config.json").read_text())
        assert held["model"]["pretrained"] == str(start_ckpt) and held["start"] == {"recipe": "", "set": []}
        weights = checkpoint.load(run / "checkpoints" / "step_0000004.pt")["models"]["model"]
        trained = [k for k in start_weights if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert len(trained) > 50
        for key in trained:
            torch.testing.assert_close(weights[key], start_weights[key], rtol=0, atol=1e-20, msg=key)
        assert any(not torch.equal(weights[k], start_weights[k]) for k in start_weights if k.endswith("running_mean"))

    written = start_ckpt.stat().st_mtime_ns
    two_steps = {"schedule.stop_step": "2", "schedule.total_steps": "2", "train.compare_methods": "[]"}
    again = [*_toy_demo_sets(tmp_path, tmp_path / "again" / "{method}", **two_steps), "--set", "start.recipe=demo"]
    assert cli.main(["train", "demo", *again, "--set", _toy_start(tmp_path)]) == 0
    assert f"start: demo as trained in {tmp_path / 'start'}" in capsys.readouterr().out
    assert start_ckpt.stat().st_mtime_ns == written

    other = _toy_start(tmp_path, **{"data.synthshift.seed": "1001"})
    assert cli.main(["train", "demo", *again, "--set", other]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'start'} holds a run of other settings (data.synthshift.seed)" in err
    assert start_ckpt.stat().st_mtime_ns == written


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ({"train.run_dir": '"{RUNS}/sourceonly"'}, "would train in {RUNS}/sourceonly, a directory this job's own"),
        ({"start.recipe": "demo"}, "that run has start.recipe = 'demo' of its own"),
    ],
)
def test_start_recipe_errors_before_anything_trains(tmp_path, capsys, start, expected):
    runs = tmp_path / "runs"
    start = {k: v.replace("{RUNS}", str(runs)) for k, v in start.items()}
    text = _toy_start(tmp_path)  # the case's overrides come last in start.set, so they win
    text = text[:-1] + ", " + ", ".join(f"'{k}={v}'" for k, v in start.items()) + "]"
    args = [*_toy_demo_sets(tmp_path, runs / "{method}"), "--set", "start.recipe=demo", "--set", text]
    assert cli.main(["train", "demo", *args]) == 2
    assert expected.replace("{RUNS}", str(runs)) in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "start").exists()
    with pytest.raises(config.ConfigError, match="key 'start.recipe': expected '' while model.pretrained = 'w.pt'"):
        config.load("demo", ["start.recipe=demo", "model.pretrained=w.pt"])


@pytest.mark.parametrize(("recipe", "stream"), [("semi_demo_advsemiseg", "labeled"), ("demo", "source")])
def test_supervised_baseline_trains_on_the_main_methods_labelled_stream(recipe, stream):
    from segadapt.cli import baseline_section

    section = baseline_section(config.load(recipe), "supervised")
    assert section.name == "supervised" and section.stream == stream


def test_unknown_baseline_is_named():
    from segadapt.cli import baseline_section

    with pytest.raises(config.ConfigError, match="train.compare_methods names 'oracle'"):
        baseline_section(config.load("demo"), "oracle")


def _short_sets(tmp_path, run_dir):
    """Two steps of the demo method alone, without TensorBoard: for the tests that stop before or at the start."""
    changes = {"schedule.stop_step": "2", "schedule.total_steps": "2", "train.tensorboard": "false",
               "train.compare_methods": "[]"}  # fmt: skip
    return _toy_demo_sets(tmp_path, run_dir, **changes)


def test_impossible_run_directory_is_one_line_naming_it(tmp_path, capsys):
    # issue 19 point 7: this was a chained traceback
    (tmp_path / "file").write_text("not a directory")
    run_dir = tmp_path / "file" / "run"
    assert cli.main(["train", "demo", *_short_sets(tmp_path, run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"segadapt: error: {run_dir}: ") and "Traceback" not in err


def test_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    from segadapt import checkpoint

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "demo", *_short_sets(tmp_path, run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"segadapt: error: {run_dir / 'config.json'}: No space left on device\n"


class _Payload:
    """A pickle that would create a file when unpickled with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_from_a_code_payload_is_one_line_without_torchs_advice(tmp_path, capsys):
    # issue 19 point 7: torch's message advises weights_only=False, which would run this file's code
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": _Payload(tmp_path / "ran")}, protocol=2))
    args = ["train", "demo", *_short_sets(tmp_path, tmp_path / "run"), "--resume", str(evil)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"segadapt: error: checkpoint {evil} could not be loaded safely")
    assert "weights_only=False" not in err and "will likely succeed" not in err
    assert not (tmp_path / "ran").exists()


def test_resuming_a_foreign_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    # issue 19 point 7: a bare state_dict gave a KeyError, another width a size-mismatch traceback
    import torch

    from segadapt.models import build_segmenter

    sets = _short_sets(tmp_path, tmp_path / "run")
    cfg = config.load("demo", sets[1::2])
    weights = build_segmenter(cfg.model).state_dict()
    saved = tmp_path / "step_0000002.pt"  # what train.save_checkpoint writes, with empty optimizer/stream states
    torch.save({"models": {"model": weights, "extra": {}}, "optimizers": {}, "scaler": {}, "streams": {}, "rng": {},
                "step": 2, "best": {}, "config": config.to_dict(cfg)}, saved)  # fmt: skip
    bare = tmp_path / "bare.pt"
    torch.save(weights, bare)
    cases = [
        (bare, [], f"--resume: {bare} is not a segadapt training checkpoint (it has no models, optimizers"),
        (saved, ["--set", "model.width=16"], f"--resume: {saved} was trained with model.width = 8, this run has 16"),
        (saved, ["--set", 'method={name = "sourceonly"}'],
         f"--resume: {saved} was trained with method.name = 'adaptsegnet', this run has 'sourceonly'"),
    ]  # fmt: skip
    for path, more, expected in cases:
        capsys.readouterr()
        run_dir = ["--set", f'train.run_dir="{tmp_path / "other"}"']
        assert cli.main(["train", "demo", *sets, *more, *run_dir, "--resume", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"segadapt: error: {expected}"), err


def _model_with_external_data(path, location):
    """A one-Conv ONNX model whose weight lives in an external file at `location` (relative to the model)."""
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnx import helper
    from onnx import numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["out"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8, 8])],
        initializer=[weight],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].external_data


def test_broken_onnx_files_are_one_line_naming_the_file(tmp_path, capsys):
    # issue 19 point 7: both gave onnxruntime / onnx tracebacks
    import numpy as np
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    outside = tmp_path / "models" / "outside.onnx"
    outside.parent.mkdir()
    _model_with_external_data(outside, "../../secret.bin")  # onnx refuses it: good, but say so in one line
    cases = [
        (empty, f"{empty}: empty file (0 bytes), not an ONNX model"),
        (outside, f"{outside}: cannot load the ONNX model: Data of TensorProto ( tensor name: w) should be file"),
    ]
    for model, expected in cases:
        capsys.readouterr()
        assert cli.main(["predict", "--model", str(model), str(image), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"segadapt: error: {expected}"), err
