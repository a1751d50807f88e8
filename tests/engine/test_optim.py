"""Learning-rate policies against their formulas, and which optimizers follow the schedule."""

import pytest
import torch

from segadapt.config import Schedule
from segadapt.methods.base import OptimizerSpec
from segadapt.optim import lr_factor
from segadapt.optim import make_optimizer
from segadapt.optim import set_lr


@pytest.mark.parametrize("step", [0, 1, 499, 999])
def test_poly_is_the_official_lr_poly(step):
    assert lr_factor(Schedule(policy="poly", power=0.9, total_steps=1000), step) == pytest.approx(
        (1 - step / 1000) ** 0.9
    )


@pytest.mark.parametrize(("step", "expected"), [(0, 1.0), (23799, 1.0), (23800, 0.1), (47600, 0.01)])
def test_step_decays_every_step_size(step, expected):
    assert lr_factor(Schedule(policy="step", gamma=0.1, step_size=23800), step) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 1.0), (23999, 1.0), (24000, 0.1), (36000, 0.01), (41999, 0.001)])
def test_multistep_counts_the_milestones_passed(step, expected):
    schedule = Schedule(policy="multistep", gamma=0.1, milestones=(24000, 36000, 40000))
    assert lr_factor(schedule, step) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (Schedule(policy="cosine"), "schedule.policy = 'cosine'"),
        (Schedule(policy="step", step_size=0), "schedule.step_size = 0"),
        (Schedule(policy="multistep", milestones=(10, 5)), r"schedule.milestones = \(10, 5\)"),
    ],
)
def test_bad_schedules_name_the_key(schedule, match):
    with pytest.raises(ValueError, match=match):
        lr_factor(schedule, 0)


def test_unscheduled_optimizers_keep_their_rate_and_every_rate_takes_the_world_scale():
    weight = torch.nn.Parameter(torch.zeros(2))
    other = torch.nn.Parameter(torch.zeros(2))
    specs = {
        "model": OptimizerSpec([{"params": [weight], "lr_mult": 10.0, "name": "head"}], "sgd", 0.01),
        "generator": OptimizerSpec([{"params": [other], "lr_mult": 1.0, "name": "g"}], "adam", 1e-4, scheduled=False),
    }
    optimizers = {name: make_optimizer(spec, torch.device("cpu"), "off") for name, spec in specs.items()}
    set_lr(optimizers, specs, factor=0.1, scale=2.0)
    assert optimizers["model"].param_groups[0]["lr"] == pytest.approx(0.01 * 10 * 0.1 * 2)
    assert optimizers["generator"].param_groups[0]["lr"] == pytest.approx(1e-4 * 2)


# ------------------------------------------------------------------ optim.official_repeated_groups (issue 17.1)
def _official_1x_params(model):
    """Our statement of AdaptSegNet model/deeplab_multi.py:185-207 (AdvSemiSeg model/deeplab.py:179-202),
    get_1x_lr_params_NOscale: for each of conv1, bn1, layer1..4, for each module j of block.modules(), yield each
    trainable parameter of j.parameters() (recursive)."""
    for block in (model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.layer4):
        for module in block.modules():
            for parameter in module.parameters():
                if parameter.requires_grad:
                    yield parameter


def _deeplab(backbone="resnet18", width=4, seed=0):
    from segadapt.models.deeplabv2 import DeepLabV2

    torch.manual_seed(seed)
    return DeepLabV2(5, backbone=backbone, width=width, multi_level=True).double()


def test_official_repeated_backbone_lists_each_parameter_once_per_module_on_its_path():
    from segadapt.optim import official_repeated_backbone

    model = _deeplab("resnet101", width=4)
    listed = official_repeated_backbone(model)
    names = {id(p): n for n, p in model.named_parameters()}
    counts = {}
    for p in listed:
        counts[names[id(p)]] = counts.get(names[id(p)], 0) + 1
    # A parameter named block.i.conv.weight is reached from block, block.i and block.i.conv: one per dotted level.
    assert counts == {n: n.count(".") for n in counts}
    tally = {}
    for k in counts.values():
        tally[k] = tally.get(k, 0) + 1
    assert tally == {1: 1, 3: 99, 4: 4}  # issue 17.1: 99 tensors 3x, the 4 downsample convs 4x, the stem once
    assert {id(p) for p in listed} == {id(p) for p in model.backbone_parameters()}


def _official_sgd_replay(model, grads, lrs, steps, momentum=0.9, weight_decay=5e-4):
    """torch.optim.SGD on its single-tensor path over the official groups (backbone repeated, heads once)."""
    groups = [{"params": list(_official_1x_params(model)), "lr": lrs[0]},
              {"params": model.head_parameters(), "lr": lrs[1]}]  # fmt: skip
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = torch.optim.SGD(groups, lr=lrs[0], momentum=momentum, weight_decay=weight_decay, foreach=False)
    for step in range(steps):
        for p, g in zip(model.parameters(), grads[step], strict=True):
            p.grad = g.clone() if p.requires_grad else None
        optimizer.step()


def _segadapt_steps(model, grads, steps, official: bool, fused="on"):
    from segadapt.config import Optim
    from segadapt.methods.base import segmenter_optimizer

    spec = segmenter_optimizer(model, Optim(lr=2.5e-3, official_repeated_groups=official))
    optimizer = make_optimizer(spec, torch.device("cpu"), fused)
    for step in range(steps):
        for p, g in zip(model.parameters(), grads[step], strict=True):
            p.grad = g.clone() if p.requires_grad else None
        optimizer.step()
    return optimizer


def test_official_repeated_groups_step_as_torch_sgd_over_the_official_lists():
    """Several steps with momentum and weight decay: segadapt's optimizer equals torch.optim.SGD over groups built
    like get_1x_lr_params_NOscale (official train.py / train_gta2cityscapes_multi.py optim.SGD(optim_parameters))."""
    steps = 4
    reference, ours, plain = _deeplab(), _deeplab(), _deeplab()
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in reference.parameters()]
             for _ in range(steps)]  # fmt: skip
    _official_sgd_replay(reference, grads, lrs=(2.5e-3, 2.5e-2), steps=steps)
    _segadapt_steps(ours, grads, steps, official=True, fused="on")  # "on" must not reach the repeated group
    _segadapt_steps(plain, grads, steps, official=False, fused="off")
    start = _deeplab()
    for (name, p), q, r, s in zip(reference.named_parameters(), ours.parameters(), plain.parameters(),
                                  start.parameters(), strict=True):  # fmt: skip
        assert torch.equal(p, q), name
        if name in ("layer1.0.conv1.weight", "layer2.0.downsample.0.weight"):
            ratio = float((p - s).abs().sum().detach() / (r - s).abs().sum().detach())
            assert ratio > 2.5, (name, ratio)  # the official walk moves them ~3x / ~4x as far as one listing


def test_repeated_sgd_is_one_update_per_occurrence_with_a_shared_momentum_buffer():
    """The semantics the optim module docstring states (torch.optim.SGD single-tensor path, _init_group reading
    state[p] before the loop): step 1, k fresh buffers, the last kept; later steps, one buffer updated k times; weight
    decay read from the parameter as the previous occurrence left it."""
    k, lr, m, wd, steps = 3, 0.1, 0.9, 0.05, 3
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(4, generator=gen, dtype=torch.float64) for _ in range(steps)]
    p = torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))
    expected, buffer = p.detach().clone(), None
    for step in range(steps):
        for _ in range(k):
            d = grads[step] + wd * expected
            buffer = d.clone() if step == 0 else m * buffer + d
            expected = expected - lr * buffer
    spec = OptimizerSpec([{"params": [p] * k, "lr_mult": 1.0, "name": "backbone"}], "sgd", lr, m, weight_decay=wd)
    optimizer = make_optimizer(spec, torch.device("cpu"), "auto")
    for step in range(steps):
        p.grad = grads[step].clone()
        optimizer.step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], buffer, rtol=1e-12, atol=1e-12)
    restored = make_optimizer(spec, torch.device("cpu"), "auto")
    restored.load_state_dict(optimizer.state_dict())  # a checkpoint keeps the one shared buffer
    torch.testing.assert_close(restored.state[p]["momentum_buffer"], buffer, rtol=0, atol=0)


def test_repeated_groups_unscale_each_gradient_once_under_a_grad_scaler():
    """GradScaler.unscale_ would divide a repeated parameter's gradient once per occurrence; the step must equal the
    unscaled one, and a step with an inf gradient is skipped."""
    gen = torch.Generator().manual_seed(3)
    grad = torch.randn(4, generator=gen)
    start = torch.randn(4, generator=gen)
    moved = []
    for scaled in (False, True):
        p = torch.nn.Parameter(start.clone())
        spec = OptimizerSpec([{"params": [p] * 3, "lr_mult": 1.0, "name": "backbone"}], "sgd", 0.1, 0.9)
        optimizer = make_optimizer(spec, torch.device("cpu"), "auto")
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
        scaler.scale((p * grad).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        moved.append(p.detach().clone())
    torch.testing.assert_close(moved[1], moved[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(moved[0], start - 0.3 * grad, rtol=1e-6, atol=1e-7)
    p = torch.nn.Parameter(start.clone())
    optimizer = make_optimizer(OptimizerSpec([{"params": [p] * 3, "lr_mult": 1.0, "name": "b"}], "sgd", 0.1),
                               torch.device("cpu"), "auto")  # fmt: skip
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((p * torch.tensor([float("inf"), 0, 0, 0])).sum()).backward()
    scaler.step(optimizer)
    assert torch.equal(p.detach(), start)


@pytest.mark.parametrize("scaled", [False, True])
def test_repeated_sgd_runs_each_step_hook_once_after_a_plain_sgd_exists(scaled):
    """Found by the shared AdaptSegNet parity script, whose recorder is a step pre-hook: once a plain torch.optim.SGD
    had been built (which wraps SGD.step with the hook runner, in place), RepeatedGroupSGD's super().step ran the
    hooks a second time and the recorder saw two 'model' steps per iteration. Hooks fire once per step, as on any
    torch optimizer, whatever was built before; the step itself is still one update per occurrence."""
    p = torch.nn.Parameter(torch.ones(3))
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # wraps torch.optim.SGD.step for the process
    spec = OptimizerSpec([{"params": [p] * 3, "lr_mult": 1.0, "name": "backbone"}], "sgd", 0.1)
    optimizer = make_optimizer(spec, torch.device("cpu"), "auto")
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, enabled=scaled)
    scaler.scale(p.sum()).backward()
    scaler.step(optimizer)
    assert calls == ["pre", "post"]
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.3))


def test_official_repeated_groups_need_sgd_and_a_deeplab_backbone():
    from segadapt.config import Optim
    from segadapt.methods.base import segmenter_optimizer

    model = _deeplab()
    spec = segmenter_optimizer(model, Optim(name="adam", official_repeated_groups=True))
    with pytest.raises(ValueError, match="optim.name = 'adam'"):
        make_optimizer(spec, torch.device("cpu"), "auto")
    with pytest.raises(ValueError, match="optim.official_repeated_groups = true walks"):
        segmenter_optimizer(torch.nn.Conv2d(3, 3, 1), Optim(official_repeated_groups=True))
