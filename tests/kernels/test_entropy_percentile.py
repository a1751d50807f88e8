"""entropy_percentile: Triton (interpreter on CPU) against the reference, the reference against a loop oracle."""

import importlib
import math

import numpy as np
import pytest
import torch

from segadapt.kernels.entropy_percentile import entropy_percentile
from segadapt.kernels.entropy_percentile import entropy_percentile_ref

# kernels/__init__.py re-exports the op under the module's own name, so fetch the module itself.
module = importlib.import_module("segadapt.kernels.entropy_percentile")

FORMATS = [torch.contiguous_format, torch.channels_last]


def _name(case):
    return "x".join(str(v) for v in case)


# (N, C, H, W): C = 19 / 21 are not powers of two; 33x65 is U2PL's odd full-res shape scaled down; 1x1 is degenerate.
CASES = [(2, 19, 33, 65), (1, 21, 17, 9), (2, 21, 1, 1)]


def _numpy_percentile(entropy, ignore, percentile):
    return float(np.percentile(entropy[~ignore].double().numpy(), percentile))


def _check_split(got, ignore, what):
    entropy, threshold, reliable, unreliable = got
    torch.testing.assert_close(reliable, ~ignore & (entropy < threshold), msg=lambda m: f"[{what} reliable] {m}")
    torch.testing.assert_close(unreliable, ~ignore & (entropy >= threshold), msg=lambda m: f"[{what} unreliable] {m}")


def test_reference_matches_loop_oracle():
    logits = torch.randn(2, 3, 4, 5) * 3
    ignore = torch.rand(2, 4, 5) < 0.3
    entropy_oracle = torch.zeros(2, 4, 5, dtype=torch.float64)
    for n in range(2):
        for h in range(4):
            for w in range(5):
                values = [float(logits[n, c, h, w]) for c in range(3)]
                total = sum(math.exp(v) for v in values)
                entropy_oracle[n, h, w] = -sum(math.exp(v) / total * math.log(math.exp(v) / total) for v in values)
    valid_values = [float(entropy_oracle[index]) for index in np.ndindex(2, 4, 5) if not bool(ignore[index])]
    for percentile in (0.0, 20.0, 50.0, 80.0, 100.0):
        entropy, threshold, reliable, unreliable = entropy_percentile_ref(logits, ignore, percentile)
        torch.testing.assert_close(
            entropy.double(), entropy_oracle, atol=1e-6, rtol=1e-6, msg=lambda m: f"[entropy] {m}"
        )
        want = float(np.percentile(valid_values, percentile))
        assert abs(float(threshold) - want) <= 1e-5 * abs(want), (
            f"[threshold p={percentile}] {float(threshold)} != {want}"
        )
        for index in np.ndindex(2, 4, 5):
            value, valid = float(entropy[index]), not bool(ignore[index])
            assert bool(unreliable[index]) == (valid and value >= float(threshold)), f"[unreliable {index}]"
            assert bool(reliable[index]) == (valid and value < float(threshold)), f"[reliable {index}]"


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", CASES, ids=_name)
@pytest.mark.parametrize("percentile", [80.0, 37.5])
def test_fp32_matches_reference(shape, memory_format, percentile):
    logits = (torch.randn(shape) * 2).contiguous(memory_format=memory_format)
    ignore = torch.rand(shape[0], shape[2], shape[3]) < 0.25
    ignore[0, 0, 0] = False
    got = entropy_percentile(logits, ignore, percentile)
    want = entropy_percentile_ref(logits, ignore, percentile)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, msg=lambda m: f"[entropy] {m}")
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5, msg=lambda m: f"[threshold] {m}")
    # The selection itself is exact: the threshold is numpy's percentile of the kernel's own entropies.
    exact = _numpy_percentile(got[0], ignore, percentile)
    assert abs(float(got[1]) - exact) <= 1e-5 * abs(exact), f"[threshold vs numpy] {float(got[1])} != {exact}"
    _check_split(got, ignore, "triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
def test_low_precision_three_way(dtype, memory_format):
    logits = (torch.randn(2, 19, 33, 65) * 2).to(dtype).contiguous(memory_format=memory_format)
    ignore = torch.rand(2, 33, 65) < 0.25
    got = entropy_percentile(logits, ignore, 80.0)
    spec = entropy_percentile_ref(logits, ignore, 80.0, upcast=True)
    base = entropy_percentile_ref(logits, ignore, 80.0, upcast=False)
    for index, label in ((0, "entropy"), (1, "threshold")):
        error = (got[index] - spec[index]).abs().max()
        bound = 2 * (base[index] - spec[index]).abs().max() + 1e-5
        assert error <= bound, f"[{label}] triton error {float(error)} > 2 * baseline error + atol = {float(bound)}"
    _check_split(got, ignore, "triton")


def test_percentile_extremes_and_ties():
    # Constant logits on most pixels: many identical entropies (log C) around the selected ranks.
    logits = torch.randn(2, 21, 9, 11)
    logits[:, :, :6] = 0.0
    ignore = torch.zeros(2, 9, 11, dtype=torch.bool)
    for percentile in (0.0, 50.0, 100.0, 99.9):
        entropy, threshold, _, unreliable = entropy_percentile(logits, ignore, percentile)
        want = _numpy_percentile(entropy, ignore, percentile)
        assert abs(float(threshold) - want) <= 1e-6 * abs(want), (
            f"[threshold p={percentile}] {float(threshold)} != {want}"
        )
    assert float(entropy_percentile(logits, ignore, 0.0)[1]) == float(entropy.min()), "[p=0] threshold is the minimum"
    assert bool(unreliable.any()), "[p=99.9] the maximum entropy is unreliable"


def test_all_ignored_gives_inf_and_empty_masks():
    logits = torch.randn(2, 19, 5, 7)
    ignore = torch.ones(2, 5, 7, dtype=torch.bool)
    for impl in (entropy_percentile, entropy_percentile_ref):
        entropy, threshold, reliable, unreliable = impl(logits, ignore, 80.0)
        assert float(threshold) == float("inf"), f"[{impl.__name__} threshold] expected +inf, got {float(threshold)}"
        assert not reliable.any() and not unreliable.any(), f"[{impl.__name__} masks] expected all False"
        torch.testing.assert_close(entropy, entropy_percentile_ref(logits, ignore, 0.0)[0], atol=1e-5, rtol=1e-5)


def test_single_valid_pixel_and_tensor_percentile():
    logits = torch.randn(1, 19, 4, 6)
    ignore = torch.ones(1, 4, 6, dtype=torch.bool)
    ignore[0, 2, 3] = False
    for percentile in (0.0, torch.tensor(63.0), 100.0):
        entropy, threshold, reliable, unreliable = entropy_percentile(logits, ignore, percentile)
        assert float(threshold) == float(entropy[0, 2, 3]), f"[threshold p={percentile}] not the single value"
        assert int(unreliable.sum()) == 1 and int(reliable.sum()) == 0, "[masks] the single pixel is >= threshold"
    # A 0-d tensor percentile above 100 is clamped on the device.
    logits = torch.randn(2, 21, 3, 5)
    ignore = torch.zeros(2, 3, 5, dtype=torch.bool)
    got = entropy_percentile(logits, ignore, torch.tensor(130.0))[1]
    torch.testing.assert_close(got, entropy_percentile_ref(logits, ignore, 100.0)[1], msg=lambda m: f"[clamp] {m}")


def test_forced_torch_uses_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Triton launcher ran although SEGADAPT_KERNELS=torch")

    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
    monkeypatch.setattr(module, "_entropy_percentile_fwd", refuse)
    logits, ignore = torch.randn(1, 19, 3, 5), torch.zeros(1, 3, 5, dtype=torch.bool)
    got = entropy_percentile(logits, ignore, 80.0)
    want = entropy_percentile_ref(logits, ignore, 80.0)
    for index, label in enumerate(("entropy", "threshold", "reliable", "unreliable")):
        torch.testing.assert_close(got[index], want[index], atol=0, rtol=0, msg=lambda m, label=label: f"[{label}] {m}")


@pytest.mark.parametrize(
    "logits, ignore, percentile, error, words",
    [
        (
            torch.zeros(1, 19, 3, 5, dtype=torch.int64),
            torch.zeros(1, 3, 5, dtype=torch.bool),
            80.0,
            TypeError,
            "logits",
        ),
        (torch.zeros(19, 3, 5), torch.zeros(1, 3, 5, dtype=torch.bool), 80.0, ValueError, "rank 4"),
        (torch.zeros(1, 19, 5, 3).transpose(2, 3), torch.zeros(1, 3, 5, dtype=torch.bool), 80.0, ValueError, "strides"),
        (torch.zeros(1, 19, 3, 5), torch.zeros(1, 3, 5), 80.0, TypeError, "ignore"),
        (torch.zeros(1, 19, 3, 5), torch.zeros(1, 3, 4, dtype=torch.bool), 80.0, ValueError, "ignore"),
        (torch.zeros(1, 19, 3, 5), torch.zeros(1, 3, 5, dtype=torch.bool, device="meta"), 80.0, ValueError, "device"),
        (torch.zeros(1, 19, 3, 5), torch.zeros(1, 3, 5, dtype=torch.bool), 150.0, ValueError, "percentile"),
        (torch.zeros(1, 19, 3, 5), torch.zeros(1, 3, 5, dtype=torch.bool), "80", TypeError, "percentile"),
    ],
    ids=["dtype", "rank", "layout", "ignore-dtype", "ignore-shape", "device", "range", "percentile-type"],
)
def test_bad_input_names_the_argument(logits, ignore, percentile, error, words):
    with pytest.raises(error, match=words):
        entropy_percentile(logits, ignore, percentile)


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
def test_compiled_fullgraph_on_cuda(memory_format):
    logits = torch.randn(2, 19, 129, 257, device="cuda").contiguous(memory_format=memory_format)
    ignore = torch.rand(2, 129, 257, device="cuda") < 0.2
    compiled = torch.compile(entropy_percentile, fullgraph=True)
    got = compiled(logits, ignore, torch.tensor(80.0, device="cuda"))
    want = entropy_percentile_ref(logits, ignore, 80.0)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, msg=lambda m: f"[entropy] {m}")
    exact = _numpy_percentile(got[0].cpu(), ignore.cpu(), 80.0)
    assert abs(float(got[1]) - exact) <= 1e-5 * abs(exact), f"[threshold] {float(got[1])} != {exact}"
    _check_split(got, ignore, "compiled")


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_thresholds_in_one_call_equal_one_call_per_percentile(memory_format):
    # U2PL's three per step: drop_percent (unsupervised loss), alpha and 100 - alpha (contrastive split); 0 and 100
    # are the extremes of numpy's linear rule (numpy/lib/function_base.py, _quantile with method="linear").
    logits = (torch.randn(2, 19, 9, 13) * 2).contiguous(memory_format=memory_format)
    ignore = torch.rand(2, 9, 13) < 0.25
    percentiles = [80.0, 20.0, 80.0, 0.0, 100.0, 37.5]
    entropy, thresholds = module.entropy_thresholds(logits, ignore, percentiles)
    assert thresholds.shape == (len(percentiles),) and thresholds.dtype == torch.float32
    for index, percentile in enumerate(percentiles):
        want_entropy, want, _, _ = entropy_percentile(logits, ignore, percentile)
        torch.testing.assert_close(thresholds[index], want, rtol=0, atol=0, msg=lambda m, p=percentile: f"[p={p}] {m}")
        numpy_value = _numpy_percentile(want_entropy, ignore, percentile)
        assert thresholds[index].item() == pytest.approx(numpy_value, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(entropy, want_entropy, rtol=0, atol=0)
    all_ignored = module.entropy_thresholds(logits, torch.ones_like(ignore), [10.0, 90.0])[1]
    assert torch.isinf(all_ignored).all()


def test_thresholds_reject_a_bad_percentile_list():
    logits, ignore = torch.randn(1, 19, 3, 3), torch.zeros(1, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="percentiles"):
        module.entropy_thresholds(logits, ignore, [])
    with pytest.raises(ValueError, match="percentile"):
        module.entropy_thresholds(logits, ignore, [20.0, 120.0])
