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


def test_census_counts_the_tensors_each_op_touches_once():
    """The eager byte census on meta tensors: an op's distinct inputs and outputs at their stored bytes."""
    import torch
    import torch.nn.functional as F

    a, b = (torch.empty(1000, device="meta") for _ in range(2))
    assert roofline.eager_census(lambda: a + b)[0] == 3 * 4000
    # an expanded operand is stored once; views and allocations move nothing; an in-place output counts once
    assert roofline.eager_census(lambda: a + torch.empty(1, device="meta").expand(1000))[0] == 2 * 4000 + 4
    assert roofline.eager_census(lambda: a.view(10, 100).t())[0] == 0
    assert roofline.eager_census(lambda: torch.empty_like(a))[0] == 0
    assert roofline.eager_census(lambda: a.add_(b))[0] == 2 * 4000
    # nll_loss reads one class per pixel; its backward writes the input's gradient without reading the input
    scores = torch.empty(2, 19, 8, 8, device="meta", requires_grad=True)
    target = torch.empty(2, 8, 8, dtype=torch.int64, device="meta")
    _, ops = roofline.eager_census(lambda: F.nll_loss(scores, target, reduction="sum").backward())
    moved = dict(ops)
    assert moved["aten.nll_loss2d_forward.default"] == 128 * 8 + 128 * 4
    assert moved["aten.nll_loss2d_backward.default"] == 128 * 8 + 128 * 19 * 4


def test_census_of_the_fp32_ce_row_itemises_eager_passes():
    """The fp32 upsample+CE reference at the real shape, pass by pass: the upsample writes the full-resolution
    scores, log_softmax reads and writes them, its backward reads two and writes one; labels are read by nll_loss
    (over (N*H*W, C) rows: the channels-last logits' own memory, kernels.upsample_cross_entropy.cross_entropy_sum)."""
    row = {row.op: row for row in roofline.rows()}["upsample_cross_entropy fwd+bwd fp32"]
    total, ops = roofline.eager_census(row.eager)
    moved = dict(ops)
    full = roofline.PIXELS * roofline.CLASSES * 4
    low = roofline.CE_LOW * roofline.CLASSES * 4
    assert moved["aten.upsample_bilinear2d.default"] == full + low
    assert moved["aten._log_softmax.default"] == 2 * full
    assert moved["aten._log_softmax_backward_data.default"] == 3 * full
    assert moved["aten.nll_loss_forward.default"] == roofline.PIXELS * (8 + 4)
    assert total == sum(moved for _, moved in ops) and total > 8 * full


def test_kernels_bench_compares_with_the_default_forms_row():
    """`bench kernels` times the default (gather) backward at its precision: its "% of roofline" must take that row's
    prediction, never the scatter or matmul=high rows (an earlier lookup kept the last row per op: the scatter one)."""
    from segadapt.bench import kernels

    table = {row["op"]: row["predicted_ms"] for row in roofline.predict("h100")}
    for precision, op in (("bf16", "upsample_cross_entropy fwd+bwd"), ("fp32", "upsample_cross_entropy fwd+bwd fp32")):
        predicted = kernels._roofline_ms({"device_name": "NVIDIA H100 80GB HBM3"}, precision)
        assert predicted[("upsample_cross_entropy", "full")] == table[op]
        assert predicted[("pseudo_label", "fwd")] == table["pseudo_label"]
        assert ("memory_queue_enqueue", "fwd") not in predicted  # another row count than the bench's


def test_queue_row_counts_rows_not_pixels(tmp_path):
    """The enqueue's work unit is a gathered row: its instruction floor is instructions per row x rows, and its fused
    bytes are the launcher's counted torch ops plus the kernel's key/rank reads and kept rows read and written."""
    table = {row["op"]: row for row in roofline.predict("h100", _aot(tmp_path, 10.0))}
    sms, clock, _ = roofline.DEVICES["h100"]
    queue = table["memory_queue_enqueue"]
    assert queue["instr_floor_ms"] == pytest.approx(
        10.0 * roofline.QUEUE_ROWS / (sms * 4 * clock * 1e9) * 1e3, abs=1e-3
    )
    kept = min(roofline.QUEUE_ROWS, 50000 + 18 * 30000)
    assert queue["fused_MB"] * 1e6 >= roofline.QUEUE_ROWS * 16 + kept * roofline.QUEUE_DIM * (2 + 4)
