"""The trainer on a toy segmenter and a tiny synthshift set: resume equality, atomic checkpoints, NaN stop."""

import json

import pytest
import torch

from segadapt import checkpoint
from segadapt import config
from segadapt.data.synthshift import generate
from segadapt.train import NonFiniteLoss
from segadapt.train import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, size=(64, 32), count=12)
    return root


def _cfg(synth, run_dir, stop_step, method="adaptsegnet", **extra) -> config.Config:
    tree = {
        "model": {"name": "toy", "width": 4, "channels_last": True, "compile": "off"},
        "data": {
            "loader": "torch",
            "num_workers": 0,
            "source": {"dataset": "gta5", "root": str(synth / "gta5"), "batch_size": 2, "flip": True},
            "target": {"dataset": "cityscapes", "root": str(synth / "cityscapes"), "batch_size": 2, "flip": True},
        },
        "method": {"name": method, "lambda_adv_target1": 0.01, "lambda_adv_target2": 0.02}
        if method == "adaptsegnet"
        else {"name": method},
        "optim": {"lr": 0.01},
        "schedule": {"total_steps": 6, "stop_step": stop_step},
        "train": {
            "run_dir": str(run_dir),
            "device": "cpu",
            "precision": "fp32",
            "log_every": 1,
            "checkpoint_every": 3,
            "progress": False,
            "tensorboard": False,
        },
    }
    for key, value in extra.items():
        config._set_dotted(tree, key, value)
    return config.load_dict(tree, "test.toml", recipe="t")


def _losses(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k.startswith("loss/")} | {"step": r["step"]}
        for r in records
        if r["kind"] == "train"
    ]


def test_resume_reproduces_the_uninterrupted_loss_sequence(synth, tmp_path):
    train(_cfg(synth, tmp_path / "a", 6))
    train(_cfg(synth, tmp_path / "b", 3))  # "interrupted" after the step-3 checkpoint
    train(_cfg(synth, tmp_path / "b", 6), resume="auto")
    uninterrupted, resumed = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert len(uninterrupted) == 6
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), f"{key} at step {a['step']}"


def test_checkpoint_holds_everything_and_loads_weights_only(synth, tmp_path):
    train(_cfg(synth, tmp_path, 3))
    state = checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))
    assert state["step"] == 3
    assert set(state) >= {"models", "optimizers", "scaler", "streams", "rng", "config", "best"}
    assert set(state["optimizers"]) == {"model", "discriminator"}
    assert any(k.startswith("discriminators.") for k in state["models"]["extra"])
    assert set(state["streams"]) == {"source", "target"}


def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, {"w": torch.arange(4)})

    def torn_save(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": torch.zeros(4)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["w"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "a temp file was left behind"


def test_malicious_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ValueError, match="evil.pt"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_non_finite_loss_stops_with_name_and_step_and_keeps_last_good_checkpoint(synth, tmp_path, monkeypatch):
    from segadapt.methods.supervised import Supervised

    real = Supervised.train_step

    def poisoned(self, batch, ctx):
        losses = real(self, batch, ctx)
        if ctx.step_index == 4:  # the 5th step
            return {"loss/seg": losses["loss/seg"] * float("nan")}
        return losses

    monkeypatch.setattr(Supervised, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"loss/seg is nan at step 5"):
        train(_cfg(synth, tmp_path, 6, method="sourceonly"))
    assert checkpoint.latest(tmp_path / "checkpoints").name == "step_0000003.pt"
    assert checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))["step"] == 3


def test_a_full_disk_on_the_metrics_log_names_the_file(tmp_path):
    """ENOSPC while appending to metrics.jsonl reaches the CLI's one-line OSError handler with the file named."""
    import errno

    from segadapt.train import MetricsLogger

    class FullDisk:
        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.handle.close()
    logger.handle = FullDisk()
    with pytest.raises(OSError) as caught:
        logger.write({"kind": "train", "step": 1})
    assert caught.value.filename == str(tmp_path / "metrics.jsonl") and caught.value.errno == errno.ENOSPC
    assert logger.lines == 0


def test_matmul_precision_is_applied_for_the_run(synth, tmp_path):
    """train.matmul_precision reaches torch.set_float32_matmul_precision when the run is built (the fused CE backward
    reads it for fp32 logits); the default is PyTorch's own, "highest"."""
    from segadapt.train import build_everything

    saved = torch.get_float32_matmul_precision()
    try:
        build_everything(_cfg(synth, tmp_path / "high", 1, **{"train.matmul_precision": "high"}))
        assert torch.get_float32_matmul_precision() == "high"
        build_everything(_cfg(synth, tmp_path / "default", 1))
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("channels_last", [True, False])
def test_discriminators_follow_the_segmenter_layout(synth, tmp_path, channels_last):
    """model.channels_last puts AdaptSegNet's FC discriminators in channels-last too (their input, the softmax of the
    segmenter's logits, is channels-last; NCHW weights would be reordered at every conv); off leaves them NCHW."""
    from segadapt.train import build_everything

    run = build_everything(_cfg(synth, tmp_path, 1, **{"model.channels_last": channels_last}))
    weights = [m.weight for d in run.method.discriminators.values() for m in d.modules() if hasattr(m, "weight")]
    assert len(weights) == 10
    for weight in weights:
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
