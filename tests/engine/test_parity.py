"""Ten demo-recipe steps give the same losses step by step on the torch and Triton kernel paths, and on the
torch and DALI loaders (augmentation off), so switching a fast path never changes what is trained."""

import json

import pytest

from segadapt import config
from segadapt.data.synthshift import generate
from segadapt.train import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, size=(64, 32), count=8)
    return root


def _demo(synth, run_dir, **overrides) -> config.Config:
    sets = {
        "model.width": 8,
        "data.synthshift.generate": False,
        "data.num_workers": 1,
        "data.source.root": str(synth / "gta5"),
        "data.source.batch_size": 2,
        "data.source.flip": False,
        "data.source.resize": [0, 0],  # native size: no resize filter, so the two loaders are bit-identical
        "data.target.root": str(synth / "cityscapes"),
        "data.target.batch_size": 2,
        "data.target.flip": False,
        "data.target.resize": [0, 0],
        "data.val.dataset": "",
        "method.d_upsample_output": True,  # exercise upsample_bce as well as upsample_cross_entropy
        "method.lambda_adv_target1": 0.01,
        "method.lambda_adv_target2": 0.02,
        # The demo's lr 0.01 (heads 0.1) is deliberately aggressive; at that rate float-rounding differences between
        # two correct implementations grow chaotically within 10 steps. A smaller step keeps the comparison about
        # the computation, not about the dynamics.
        "optim.lr": 1e-3,
        "schedule.stop_step": 10,
        "schedule.total_steps": 10,
        "train.run_dir": str(run_dir),
        "train.device": "cpu",
        "train.precision": "fp32",
        "train.log_every": 1,
        "train.checkpoint_every": 0,
        "train.compare_methods": [],
        "train.progress": False,
        "train.tensorboard": False,
        **overrides,
    }
    return config.load("demo", [f"{k}={json.dumps(v)}" for k, v in sets.items()])


def _losses(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k.startswith("loss/")} for x in lines if '"train"' in x]


def _assert_same(a, b, rel, what):
    assert len(a) == len(b) == 10
    for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        assert x.keys() == y.keys() == {"loss/seg", "loss/adv", "loss/d"}
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-6), f"{what}: {key} differs at step {step}"


def test_torch_and_triton_kernels_give_the_same_losses(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
    train(_demo(synth, tmp_path / "torch", **{"data.loader": "torch"}))
    monkeypatch.setenv("SEGADAPT_KERNELS", "triton")  # CPU: the Triton interpreter
    train(_demo(synth, tmp_path / "triton", **{"data.loader": "torch"}))
    # Summation order in the Triton kernels changes the last bits (step 1 is bit-identical here); over 10 SGD
    # steps that stays below 1e-4 relative.
    _assert_same(_losses(tmp_path / "torch"), _losses(tmp_path / "triton"), 1e-4, "kernels")


def test_torch_and_dali_loaders_give_the_same_losses(synth, tmp_path, monkeypatch):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
    train(_demo(synth, tmp_path / "torch", **{"data.loader": "torch"}))
    train(_demo(synth, tmp_path / "dali", **{"data.loader": "dali"}))
    # No resize at native size: the loaders are bit-identical, so the losses must match to float rounding.
    _assert_same(_losses(tmp_path / "torch"), _losses(tmp_path / "dali"), 1e-5, "loaders")
