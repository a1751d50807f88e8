"""Every recipe parses into the dataclasses with no unknown keys; overrides apply; official values are written."""

import pytest

from segadapt import config
from segadapt.config import ConfigError
from segadapt.config import tomllib


@pytest.mark.parametrize("recipe", config.recipe_names())
def test_recipe_parses_and_overrides(recipe):
    cfg = config.load(recipe, ["train.seed=42"])
    assert cfg.train.seed == 42 and cfg.recipe == recipe
    # One complete TOML per recipe: every section written out (STYLE.md 4.5).
    tree = tomllib.loads(config.resolve_recipe(recipe).read_text())
    assert {"model", "data", "method", "optim", "schedule", "train", "eval", "export"} <= set(tree)
    assert config.resolve_recipe(recipe).read_text().startswith("# "), "first line must be the descriptor comment"


@pytest.mark.parametrize("recipe", config.recipe_names())
def test_misspelt_key_names_file_and_key(recipe, tmp_path):
    text = config.resolve_recipe(recipe).read_text().replace("[schedule]\n", "[schedule]\ntotal_stpes = 3\n")
    path = tmp_path / f"{recipe}.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"schedule\.total_stpes.*schedule\.total_steps"):
        config.load(str(path))


def test_adaptseg_gta2cs_has_the_official_values():
    cfg = config.load("adaptseg_gta2cs")
    assert (cfg.method.lambda_seg, cfg.method.lambda_adv_target1, cfg.method.lambda_adv_target2) == (0.1, 0.0002, 0.001)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.head_lr_mult) == (2.5e-4, 0.9, 5e-4, 10)
    assert (cfg.method.d_lr, cfg.method.d_betas) == (1e-4, (0.9, 0.99))
    assert (cfg.schedule.total_steps, cfg.schedule.stop_step, cfg.schedule.power) == (250000, 150000, 0.9)
    assert cfg.data.source.resize == (1280, 720) and cfg.data.target.resize == (1024, 512)
    assert cfg.model.backbone == "resnet101" and cfg.model.aspp_sum_first_two_only
    assert cfg.eval.align_corners and cfg.eval.input_size == (1024, 512)


def test_variants_differ_only_where_the_readme_says():
    single, lsgan = config.load("adaptseg_gta2cs_single"), config.load("adaptseg_gta2cs_lsgan")
    assert (single.method.lambda_seg, single.method.lambda_adv_target1, single.method.lambda_adv_target2) == (
        0,
        0,
        0.001,
    )
    assert lsgan.method.gan == "ls" and lsgan.method.lambda_adv_target2 == 0.01
    assert config.load("adaptseg_synthia2cs").data.source.dataset == "synthia"
    assert config.load("sourceonly_gta2cs").method.name == "sourceonly"
