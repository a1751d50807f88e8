"""Config loading: precedence, type errors that name file/key/type/nearest key, field docs for --help."""

import pytest

from segadapt import config
from segadapt.config import ConfigError


def test_precedence_set_over_toml_over_defaults(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[train]\nseed = 7\nlog_every = 3\n[method]\nname = "adaptsegnet"\ngan = "ls"\n')
    cfg = config.load(str(path), ["train.seed=9", "method.d_lr=2e-4", "model.aspp_rates=[1, 2]"])
    assert cfg.train.seed == 9  # --set wins
    assert cfg.train.log_every == 3  # TOML wins over the default
    assert cfg.train.iter_size == config.Train().iter_size  # default
    assert cfg.method.gan == "ls" and cfg.method.d_lr == pytest.approx(2e-4)
    assert cfg.model.aspp_rates == (1, 2)
    assert cfg.recipe == "r"


def test_unknown_key_names_file_key_and_nearest(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nmomentun = 0.9\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    message = str(info.value)
    assert str(path) in message and "optim.momentun" in message and "optim.momentum" in message


def test_wrong_type_names_expected_type(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[train]\nseed = "one"\n')
    with pytest.raises(ConfigError, match=r"train\.seed.*expected int"):
        config.load(str(path))
    with pytest.raises(ConfigError, match=r"eval\.input_size.*expected 2 values"):
        config.load_dict({"eval": {"input_size": [1, 2, 3]}}, "x.toml")


def test_method_section_is_chosen_by_name():
    cfg = config.load_dict({"method": {"name": "supervised", "stream": "labeled"}}, "x.toml")
    assert isinstance(cfg.method, config.Supervised) and cfg.method.stream == "labeled"
    with pytest.raises(ConfigError, match="adaptsegnet"):
        config.load_dict({"method": {"name": "adaptsegnte"}}, "x.toml")
    with pytest.raises(ConfigError, match="method.gan"):  # a field of another method's section
        config.load_dict({"method": {"name": "sourceonly", "gan": "ls"}}, "x.toml")


def test_round_trip_and_replace():
    cfg = config.load_dict({"method": {"name": "adaptsegnet"}}, "x.toml", ["data.source.resize=[64, 32]"])
    assert config.load_dict(config.to_dict(cfg), "y") == cfg
    changed = config.replace(cfg, **{"train.seed": 5, "data.source.batch_size": 3})
    assert changed.train.seed == 5 and changed.data.source.batch_size == 3 and cfg.train.seed == 1234


def test_every_field_is_documented():
    docs = config.field_docs()
    text = config.describe_fields()
    for cls in [
        config.Model,
        config.Stream,
        config.Data,
        config.Optim,
        config.Train,
        config.Eval,
        *config.METHOD_SECTIONS.values(),
    ]:
        for name in cls.__dataclass_fields__:
            assert docs.get(f"{cls.__name__}.{name}"), f"{cls.__name__}.{name} has no docstring"
    assert "method.lambda_adv_target2" in text and "data.source.resize" in text


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        config.parse_override("train.seed")
    assert config.parse_override("train.run_dir=runs/x") == ("train.run_dir", "runs/x")


def test_no_field_is_copied_between_sections():
    """A field declared with the same type, default and docstring in two classes is a copy: it belongs in a field
    group (issue 15 point 6). Inherited fields keep their docstring for --help."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(config))
    seen: dict[str, str] = {}
    copies = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for first, second in zip(body, body[1:], strict=False):
            if isinstance(first, ast.AnnAssign) and isinstance(second, ast.Expr):
                key = ast.dump(first) + ast.dump(second)
                if key in seen:
                    copies.append(f"{seen[key]} and {node.name}.{first.target.id}")
                seen.setdefault(key, f"{node.name}.{first.target.id}")
    assert not copies
    docs = config.field_docs()
    assert docs["AdaptSegNet.d_betas"] == docs["AdvSemiSeg.d_betas"] == docs["_Discriminator.d_betas"]
    assert docs["SourceOnly.name"] == "Method name; selects this section's fields."
    assert config.AdaptSegNet().d_width == 64 and config.AdaptSegNet().lambda_seg == 0.1


@pytest.mark.parametrize(
    ("overrides", "key", "expected", "got"),
    [  # issue 19 point 6: each of these trained nothing, exited 0 or ended in a raw traceback
        (["schedule.stop_step=0"], "schedule.stop_step", "int >= 1", "0"),
        (["schedule.stop_step=-5"], "schedule.stop_step", "int >= 1", "-5"),
        (["schedule.total_steps=0", "schedule.stop_step=1"], "schedule.total_steps", "int >= 1", "0"),
        (["train.log_every=0"], "train.log_every", "int >= 1", "0"),
        (["train.iter_size=0"], "train.iter_size", "int >= 1", "0"),
        (["train.eval_every=-1"], "train.eval_every", "int >= 0", "-1"),
        (["train.checkpoint_every=-2"], "train.checkpoint_every", "int >= 0", "-2"),
        (["data.num_workers=-1"], "data.num_workers", "int >= 0", "-1"),
        (["data.source.batch_size=0"], "data.source.batch_size", "int >= 1", "0"),
        (["data.val.fraction=0"], "data.val.fraction", "float in (0, 1]", "0.0"),
        (["optim.lr=-0.1"], "optim.lr", "float > 0", "-0.1"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas[1]", "float in [0, 1)", "1.0"),
        (["model.aspp_rates=[6, 0]"], "model.aspp_rates[1]", "int >= 1", "0"),
        (["method.name=u2pl", "method.cutmix_p=1.5"], "method.cutmix_p", "float in [0, 1]", "1.5"),
        (["method.name=adaptsegnet", "method.d_lr=0"], "method.d_lr", "float > 0", "0.0"),
        (["export.opset=13"], "export.opset", "int >= 17", "13"),
        (['train.matmul_precision="tf32"'], "train.matmul_precision", "one of 'highest', 'high', 'medium'", "'tf32'"),
        # ranges that depend on another field
        (
            ["schedule.total_steps=100", "schedule.stop_step=101"],
            "schedule.stop_step",
            "<= schedule.total_steps (100) under policy 'poly'",
            "101",
        ),
        (["schedule.policy=step", "schedule.step_size=0"], "schedule.step_size", ">= 1 under policy 'step'", "0"),
        (
            ["schedule.policy=multistep", "schedule.milestones=[20, 10]"],
            "schedule.milestones",
            "increasing steps",
            "(20, 10)",
        ),
        (["data.source.scale_range=[1.5, 0.5]"], "data.source.scale_range", "(min, max) with min <= max", "(1.5, 0.5)"),
        (["method.name=u2pl", "method.low_rank=20"], "method.low_rank", "< method.high_rank (20)", "20"),
    ],
)
def test_numeric_ranges_name_file_key_expected_and_got(tmp_path, overrides, key, expected, got):
    path = tmp_path / "r.toml"
    path.write_text("[train]\nseed = 1\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(path), overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)) and f"key '{key}'" in message, message
    assert f"expected {expected}" in message and message.endswith(f"got {got}"), message


def test_ranges_accept_their_bounds_and_reject_non_finite():
    cfg = config.load_dict(
        {},
        "x.toml",
        [
            "schedule.total_steps=5",
            "schedule.stop_step=5",
            "train.eval_every=0",
            "data.num_workers=0",
            "optim.momentum=0",
            "schedule.power=0",
        ],
    )
    assert (cfg.schedule.stop_step, cfg.train.eval_every, cfg.data.num_workers) == (5, 0, 0)
    # a stop past the horizon is fine where the learning rate does not depend on it
    cfg = config.load_dict({}, "x.toml", ["schedule.policy=constant", "schedule.total_steps=5", "schedule.stop_step=9"])
    assert cfg.schedule.stop_step == 9
    with pytest.raises(ConfigError, match=r"key 'optim.weight_decay': expected float \(finite\), got float nan"):
        config.load_dict({"optim": {"weight_decay": float("nan")}}, "x.toml")
    with pytest.raises(ConfigError, match=r"key 'data.mean\[0\]': expected float \(finite\), got float inf"):
        config.load_dict({}, "x.toml", ["data.mean=[inf, 1, 1]"])
    assert "schedule.stop_step (int >= 1, default 150000)" in config.describe_fields()
