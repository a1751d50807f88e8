"""engine/report.py: a synthetic run directory -> plots that decode and a summary with the best and last numbers."""

import json

import numpy as np
import pytest
from PIL import Image

from segadapt.report import best_and_last
from segadapt.report import diag_names
from segadapt.report import loss_names
from segadapt.report import read_metrics
from segadapt.report import write_report

CLASSES = ("road", "sidewalk", "building")


def _eval_record(step, miou, per_class):
    return {"kind": "eval", "step": step, "miou": miou, "per_class": dict(zip(CLASSES, per_class, strict=True))}


def _write_run(run_dir, with_eval=True, torn=False):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"recipe": "demo", "method": {"name": "adaptsegnet"}}))
    records = []
    for step in range(10, 110, 10):
        records.append(
            {"kind": "train", "step": step, "lr/model": 2.5e-4, "loss/seg": 2.0 / step, "loss/adv": 0.7 + step / 1000,
             "elapsed_s": step * 0.1, "images_per_step": 2}
        )  # fmt: skip
    if with_eval:
        records.append(_eval_record(40, 31.25, [80.0, 10.0, 3.75]))
        records.append(_eval_record(70, 42.5, [90.0, 25.5, 12.0]))  # the best
        records.append(_eval_record(100, 38.125, [88.0, None, 26.5]))  # the last
    lines = [json.dumps(r) for r in records]
    if torn:
        lines.append('{"kind": "train", "step": 11')
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if with_eval:
        for step, count in ((40, 2), (100, 5)):
            folder = run_dir / "eval" / f"step_{step:07d}"
            folder.mkdir(parents=True)
            for index in range(count):
                for kind, size in (("image", (16, 8)), ("label", (32, 16)), ("pred", (32, 16))):
                    colour = np.full((size[1], size[0], 3), 40 * index, dtype=np.uint8)
                    Image.fromarray(colour).save(folder / f"val_{index}_{kind}.png")
    return run_dir


def _decodes(path):
    with Image.open(path) as picture:
        picture.load()
        return picture.size


def test_report_of_an_evaluated_run(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    summary_path = write_report(run_dir)
    report = run_dir / "report"
    assert summary_path == report / "summary.md"
    for name in ("losses.png", "miou.png", "per_class_iou.png", "samples.png"):
        width, height = _decodes(report / name)
        assert width > 50 and height > 50, name
    summary = summary_path.read_text()
    # best and last as computed from the jsonl above: 42.50 at step 70, 38.12 at step 100
    assert "| best | 42.50 | 70 |" in summary
    assert "| last | 38.12 | 100 |" in summary
    assert "best-on-val" in summary
    assert "| sidewalk | - | 25.50 |" in summary  # last (None) then best
    assert "| road | 88.00 | 90.00 |" in summary
    assert "eval/step_0000100" in summary  # samples come from the newest folder
    assert "demo" in summary and "adaptsegnet" in summary
    assert "| loss/seg | 0.02 |" in summary  # 2.0 / 100
    for link in ("losses.png", "miou.png", "per_class_iou.png", "samples.png"):
        assert f"({link})" in summary
    assert not list(report.glob(".*.tmp"))  # atomic writes leave no temp files


def test_diagnosis_curves_get_their_own_plot_and_table(tmp_path):
    """`diag/*` entries (what the methods log for diagnosis) are kept out of the loss panels and plotted apart."""
    run_dir = _write_run(tmp_path / "run")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        if record["kind"] == "train":
            record["diag/pl_coverage"] = record["step"] / 200
            record["diag/d_acc_real"] = 0.75
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    train, _, _ = read_metrics(run_dir / "metrics.jsonl")
    assert loss_names(train) == ["loss/seg", "loss/adv"]
    assert diag_names(train) == ["diag/pl_coverage", "diag/d_acc_real"]
    summary = write_report(run_dir).read_text()
    assert _decodes(run_dir / "report" / "diagnosis.png")[0] > 50
    assert "| diag/pl_coverage | 0.5 |" in summary and "(diagnosis.png)" in summary
    assert "| diag/d_acc_real" not in summary.split("## Diagnosis")[0]  # not among the losses


def test_samples_grid_has_one_row_per_image_up_to_four(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    write_report(run_dir)
    _, four_rows = _decodes(run_dir / "report" / "samples.png")
    (run_dir / "eval" / "step_0000100").rename(run_dir / "eval" / "old")  # step_40 with 2 images is now newest
    write_report(run_dir)
    _, two_rows = _decodes(run_dir / "report" / "samples.png")
    assert four_rows > 1.6 * two_rows
    assert "eval/step_0000040" in (run_dir / "report" / "summary.md").read_text()


def test_report_without_evaluation(tmp_path):
    run_dir = _write_run(tmp_path / "run", with_eval=False, torn=True)
    summary = write_report(run_dir).read_text()
    assert "No evaluation yet" in summary
    assert "line 11 is incomplete" in summary
    assert "- steps: 100" in summary
    assert _decodes(run_dir / "report" / "losses.png")[0] > 50
    assert not (run_dir / "report" / "miou.png").exists()
    assert not (run_dir / "report" / "diagnosis.png").exists()  # nothing to diagnose: no plot


def test_read_metrics_keeps_the_last_record_of_a_repeated_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"kind": "train", "step": 20, "loss": 1.0},
        {"kind": "train", "step": 10, "loss": 3.0, "lr/model": 0.1, "elapsed_s": 1.0},
        {"kind": "train", "step": 20, "loss": 2.0},  # resumed run, same step again
        {"kind": "eval", "step": 20, "miou": 5.0, "per_class": {}},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    train, evals, notes = read_metrics(path)
    assert [(r["step"], r["loss"]) for r in train] == [(10, 3.0), (20, 2.0)]
    assert loss_names(train) == ["loss"]
    assert [r["miou"] for r in evals] == [5.0] and notes == []


def test_best_is_earliest_of_equal_scores():
    evals = [{"step": 1, "miou": 3.0}, {"step": 2, "miou": 5.0}, {"step": 3, "miou": 5.0}, {"step": 4, "miou": 1.0}]
    best, last = best_and_last(evals)
    assert best["step"] == 2 and last["step"] == 4
    assert best_and_last([]) == (None, None)


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="metrics.jsonl does not exist"):
        write_report(tmp_path)
    path = tmp_path / "metrics.jsonl"
    path.write_text('not json\n{"kind": "train", "step": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1 is not JSON"):
        read_metrics(path)
    path.write_text('{"kind": "train", "step": "one"}\n{"kind": "train", "step": 1}\n')
    with pytest.raises(ValueError, match="line 1: expected an object with an integer 'step'"):
        read_metrics(path)


def test_binary_metrics_log_is_an_error_naming_the_file_and_line(tmp_path, capsys):
    # issue 19 point 7: the message was "'utf-8' codec can't decode byte 0x89 ...", without the file
    from segadapt import cli

    run_dir = _write_run(tmp_path / "run", with_eval=False)
    path = run_dir / "metrics.jsonl"
    path.write_bytes(path.read_bytes() + b"\x89PNG\r\n\x1a\n\x00\xff")
    (run_dir / "config.json").write_bytes(b"\xff\xfe binary")  # the title then goes without recipe and method
    with pytest.raises(ValueError, match=rf"^{path}: line 11 is not text \(byte \d+ is not UTF-8\)"):
        read_metrics(path)
    assert cli.main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"segadapt: error: {path}: line 11 is not text")


def test_corrupt_sample_png_is_left_out_with_a_note(tmp_path):
    # issue 19 point 7: a corrupt prediction PNG ended `segadapt report` in a traceback
    run_dir = _write_run(tmp_path / "run")
    folder = run_dir / "eval" / "step_0000100"
    (folder / "val_1_pred.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    summary = write_report(run_dir).read_text()
    assert f"- note: sample left out, unreadable PNG {folder / 'val_1_pred.png'}: " in summary
    _, three_rows = _decodes(run_dir / "report" / "samples.png")
    for stale in [*folder.glob("val_1_*.png"), *folder.glob("val_4_*.png")]:
        stale.unlink()  # leaves val_0, val_2, val_3: the three the report kept
    write_report(run_dir)
    assert _decodes(run_dir / "report" / "samples.png")[1] == three_rows
