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
