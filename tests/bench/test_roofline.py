"""bench roofline: the model's arithmetic on a hand-made AOT result, and its table from the committed one."""

import json

import pytest

from segadapt.bench import roofline


def _aot(tmp_path, per_pixel: float):
    rows = []
    for row in roofline.rows():
        for case, kernel, variant in row.kernels:
            for target in ("sm_90", "sm_80"):
                rows.append({"case": case, "kernel": kernel, "target": target, "variant": f"C=19,{variant}",
                             "compiled": True, "instructions_per_pixel": per_pixel})  # fmt: skip
                # a slower config of the same kernel: the model takes the autotuner's best
                rows.append({"case": case, "kernel": kernel, "target": target, "variant": f"C=19,{variant}",
                             "compiled": True, "instructions_per_pixel": per_pixel * 3})  # fmt: skip
    path = tmp_path / "aot.json"
    path.write_text(json.dumps({"results": rows}))
    return path


def test_prediction_is_eager_bytes_over_the_largest_floor(tmp_path):
    table = {row["op"]: row for row in roofline.predict("h100", _aot(tmp_path, 10.0))}
    sms, clock, bandwidth = roofline.DEVICES["h100"]
    pixels = 8 * 512 * 1024
    pseudo = table["pseudo_label"]
    # one kernel at 10 warp instructions per pixel; bytes: bf16 logits once + ignore, label and conf
    instruction_ms = 10.0 * pixels / (sms * 4 * clock * 1e9) * 1e3
    byte_ms = (pixels * 19 * 2 + pixels * 13) / bandwidth * 1e3
    assert pseudo["instr_floor_ms"] == pytest.approx(instruction_ms, abs=1e-3)
    assert pseudo["byte_floor_ms"] == pytest.approx(byte_ms, abs=1e-3)
    assert pseudo["predicted_ms"] == pytest.approx(max(instruction_ms, byte_ms), abs=1e-3)
    assert pseudo["speedup"] == pytest.approx(pseudo["eager_ms"] / pseudo["predicted_ms"], rel=1e-2)
    # entropy runs 6 kernels (entropy, 4 radix passes, split): 6 x 10 instructions per pixel
    assert table["entropy_percentile"]["instr_per_px"] == pytest.approx(60.0)
    # the CE scatter backward adds 4 atomics per class and pixel; the default gather form and upsample+BCE issue none
    assert table["upsample_cross_entropy fwd+bwd scatter"]["atomic_floor_ms"] == pytest.approx(
        4 * 19 * pixels / roofline.ATOMIC_RATE * 1e3, abs=1e-3
    )
    assert table["upsample_cross_entropy fwd+bwd"]["atomic_floor_ms"] == 0.0
    assert table["upsample_cross_entropy fwd+bwd fp32"]["atomic_floor_ms"] == 0.0
    assert table["upsample_bce fwd+bwd"]["atomic_floor_ms"] == 0.0


def test_missing_aot_result_names_the_command(tmp_path):
    with pytest.raises(SystemExit, match="bench aot"):
        roofline.predict("h100", tmp_path / "absent.json")


def test_committed_aot_result_covers_every_modelled_kernel():
    table = roofline.predict("h100")
    assert [row["op"] for row in table if row["missing_aot"]] == []
