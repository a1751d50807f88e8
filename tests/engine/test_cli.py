"""The `segadapt` command line: --help documents every field, data tools, and clear errors for missing data."""

import pytest

from engine import cli


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
