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
