"""Contract tests generated from the METHODS registry (timm style), on a toy segmenter and a 2-image batch."""

import pytest
import torch

from segadapt import config
from segadapt.methods import METHODS
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer

NUM_CLASSES = 5


# The smallest segmenter each method is defined on; the toy net where any segmenter will do.
MODELS = {
    "u2pl": {"name": "deeplabv3plus", "backbone": "resnet18", "width": 4},
    "lsdseg": {"name": "fcn8s", "width": 4},
    "colorization": {"name": "hypercolumn", "width": 4},
    "mixmatch": {"name": "hypercolumn", "width": 4},
}


def _cfg(name: str) -> config.Config:
    model = {"name": "toy", "width": 4, **MODELS.get(name, {}), "num_classes": NUM_CLASSES}
    return config.load_dict({"model": model, "method": {"name": name}}, "test.toml")


def _batch(size=(32, 48)) -> dict:
    def stream(seed: int, hw) -> dict:
        g = torch.Generator().manual_seed(seed)
        label = torch.randint(0, NUM_CLASSES, (2, *hw), generator=g)
        label[:, 0, :] = 255
        image = torch.randn(2, 3, *hw, generator=g).contiguous(memory_format=torch.channels_last)
        return {"image": image, "label": label}

    streams = {"source": stream(1, size), "target": stream(2, (48, 32)), "labeled": stream(3, size)}
    return {**streams, "unlabeled": stream(4, size)}


def _build(name: str, iter_size: int = 1):
    cfg = _cfg(name)
    method = build_method(build_segmenter(cfg.model), cfg)
    specs = method.optimizers(cfg.optim)
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in specs.items()}
    ctx = StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers, iter_size)
    return method, ctx, specs


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_step_contract(name):
    method, ctx, specs = _build(name)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = method.train_step(_batch(), ctx)
    assert losses, "a method must report at least one loss"
    for key, value in losses.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{key} is not a 0-d tensor"
        assert not value.requires_grad, f"{key} is not detached"
        assert torch.isfinite(value), f"{key} is not finite"
    changed = [k for k, v in method.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("model.") for k in changed), "the segmenter did not change"
    if "discriminator" in specs:
        assert any(k.startswith("discriminators.") for k in changed), "the discriminators did not change"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_param_groups_cover_every_trainable_parameter_once(name):
    method, _, _ = _build(name)
    seen = [id(p) for groups in method.param_groups(config.Optim()).values() for g in groups for p in g["params"]]
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == trainable


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_round_trip(name, tmp_path):
    method, ctx, _ = _build(name)
    method.train_step(_batch(), ctx)
    torch.save(method.state_dict(), tmp_path / "m.pt")
    fresh, _, _ = _build(name)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    for key, value in method.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=lambda m, key=key: f"[{key}] {m}")


def test_iter_size_defers_the_step_and_averages_gradients():
    method, ctx, _ = _build("sourceonly", iter_size=2)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    ctx.micro_step = 0
    method.train_step(_batch(), ctx)
    assert all(torch.equal(v, before[k]) for k, v in method.model.state_dict().items()), "stepped on micro-step 0"
    grad = next(p for p in method.model.parameters() if p.requires_grad).grad.clone()
    method2, ctx2, _ = _build("sourceonly", iter_size=1)
    method2.load_state_dict(method.state_dict())
    out = method2.model(_batch()["source"]["image"])
    from segadapt.methods.supervised import supervised_loss

    supervised_loss(out, _batch()["source"]["label"], 0.1, True).backward()
    torch.testing.assert_close(grad, next(p for p in method2.model.parameters() if p.requires_grad).grad / 2)
