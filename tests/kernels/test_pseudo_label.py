"""pseudo_label and one_hot_labels: Triton (interpreter on CPU) against the reference and hand-computed values."""

import importlib
import math

import pytest
import torch

from segadapt.kernels.pseudo_label import one_hot_labels
from segadapt.kernels.pseudo_label import one_hot_labels_ref
from segadapt.kernels.pseudo_label import pseudo_label
from segadapt.kernels.pseudo_label import pseudo_label_ref

# kernels/__init__.py re-exports the op under the module's own name, so fetch the module itself.
module = importlib.import_module("segadapt.kernels.pseudo_label")

FORMATS = [torch.contiguous_format, torch.channels_last]


def _name(case):
    return "x".join(str(v) for v in case)


# (N, C, H, W): C = 19 / 21 are not powers of two; 33x65 odd full-res; 1x1 degenerate.
CASES = [(2, 19, 33, 65), (1, 21, 17, 9), (2, 21, 1, 1)]
# Which optional inputs are used: AdvSemiSeg (discriminator score), U2PL-like (own confidence), ignore + one-hot.
OPTIONS = ["plain", "score", "own-confidence", "ignore-one-hot"]


def _inputs(shape, option, memory_format):
    batch, channels, height, width = shape
    logits = (torch.randn(shape) * 2).contiguous(memory_format=memory_format)
    kwargs = {}
    if option == "score":
        kwargs = {"confidence_mask": torch.rand(batch, height, width), "threshold": 0.2}
    elif option == "own-confidence":
        kwargs = {"threshold": 0.3}
    elif option == "ignore-one-hot":
        kwargs = {"ignore": torch.rand(batch, height, width) < 0.3, "one_hot": True, "memory_format": memory_format}
    return logits, kwargs


def _compare(got, want, what):
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0, msg=lambda m: f"[{what} label] {m}")
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5, msg=lambda m: f"[{what} conf] {m}")
    if want[2] is None:
        assert got[2] is None, f"[{what} one_hot] expected None"
    else:
        torch.testing.assert_close(got[2], want[2], atol=0, rtol=0, msg=lambda m: f"[{what} one_hot] {m}")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", CASES, ids=_name)
def test_fp32_matches_reference(shape, memory_format, option):
    logits, kwargs = _inputs(shape, option, memory_format)
    got = pseudo_label(logits, **kwargs)
    _compare(got, pseudo_label_ref(logits, **kwargs), option)
    if got[2] is not None:
        assert got[2].is_contiguous(memory_format=memory_format), f"[one_hot] not in {memory_format}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
def test_low_precision_three_way(dtype, memory_format):
    logits = (torch.randn(2, 19, 33, 65) * 2).to(dtype).contiguous(memory_format=memory_format)
    score = torch.rand(2, 33, 65, dtype=dtype)
    label, conf, _ = pseudo_label(logits, confidence_mask=score, threshold=0.2)
    spec_label, spec_conf, _ = pseudo_label_ref(logits, confidence_mask=score, threshold=0.2)
    _, base_conf, _ = pseudo_label_ref(logits, confidence_mask=score, threshold=0.2, upcast=False)
    # The argmax of exactly upcast logits and the fp32 score comparison leave no rounding room: labels are exact.
    torch.testing.assert_close(label, spec_label, atol=0, rtol=0, msg=lambda m: f"[label] {m}")
    error = (conf - spec_conf).abs().max()
    bound = 2 * (base_conf - spec_conf).abs().max() + 1e-6
    assert error <= bound, f"[conf] triton error {float(error)} > 2 * baseline error + atol = {float(bound)}"


def test_hand_computed_values():
    # Pixel 0: logits (0, ln 3, 0) -> p = (0.2, 0.6, 0.2); pixel 1: a tie between classes 0 and 2 -> first wins.
    logits = torch.tensor([[[[0.0, 1.0]], [[3.0, 0.0]], [[0.0, 1.0]]]])
    logits[0, 1, 0, 0] = torch.log(torch.tensor(3.0))
    label, conf, encoded = pseudo_label(logits, threshold=0.5, one_hot=True)
    assert label.tolist() == [[[1, 255]]], f"[label] {label.tolist()}"
    torch.testing.assert_close(conf, torch.tensor([[[0.6, 1 / (2 + 1 / math.e)]]]), msg=lambda m: f"[conf] {m}")
    assert encoded[0, :, 0, 0].tolist() == [0.0, 1.0, 0.0] and encoded[0, :, 0, 1].tolist() == [0.0] * 3, "[one_hot]"
    label, _, _ = pseudo_label(logits)
    assert label.tolist() == [[[1, 0]]], f"[tie] first maximal class wins, got {label.tolist()}"
    score = torch.tensor([[[0.1, 0.9]]])
    label, _, _ = pseudo_label(logits, confidence_mask=score, threshold=0.2)
    assert label.tolist() == [[[255, 0]]], f"[confidence_mask] {label.tolist()}"


def test_all_ignored_batch():
    logits = torch.randn(2, 21, 5, 7)
    ignore = torch.ones(2, 5, 7, dtype=torch.bool)
    label, conf, encoded = pseudo_label(logits, ignore=ignore, one_hot=True)
    assert bool((label == 255).all()), "[label] every pixel is ignored"
    assert float(encoded.abs().sum()) == 0.0, "[one_hot] ignored pixels give zero rows"
    torch.testing.assert_close(conf, torch.softmax(logits, 1).amax(1), msg=lambda m: f"[conf] {m}")


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "num_classes, height, width", [(19, 33, 65), (21, 1, 1), (21, 4, 3)], ids=["c19-33x65", "c21-1x1", "c21-4x3"]
)
def test_one_hot_labels(num_classes, height, width, memory_format):
    label = torch.randint(0, num_classes, (2, height, width))
    label[torch.rand(2, height, width) < 0.3] = 255
    got = one_hot_labels(label, num_classes, memory_format=memory_format)
    torch.testing.assert_close(
        got, one_hot_labels_ref(label, num_classes), atol=0, rtol=0, msg=lambda m: f"[one_hot] {m}"
    )
    assert got.is_contiguous(memory_format=memory_format), f"[one_hot] not in {memory_format}"
    # Each row sums to 1 except at 255, and the hot channel is the label.
    torch.testing.assert_close(got.sum(1), (label != 255).float(), msg=lambda m: f"[row sums] {m}")
    kept = label != 255
    assert bool((got.argmax(1)[kept] == label[kept]).all()), "[hot channel] differs from the label"


def test_forced_torch_uses_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Triton launcher ran although SEGADAPT_KERNELS=torch")

    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
    monkeypatch.setattr(module, "_pseudo_label_fwd", refuse)
    monkeypatch.setattr(module, "_one_hot_labels_fwd", refuse)
    logits = torch.randn(1, 19, 3, 5)
    _compare(
        pseudo_label(logits, threshold=0.1, one_hot=True),
        pseudo_label_ref(logits, threshold=0.1, one_hot=True),
        "torch",
    )
    label = torch.tensor([[[0, 255, 18]]])
    torch.testing.assert_close(one_hot_labels(label, 19), one_hot_labels_ref(label, 19), atol=0, rtol=0)


_LOGITS = torch.zeros(1, 19, 3, 5)
_BAD_PSEUDO = [
    ((torch.zeros(1, 19, 3, 5, dtype=torch.int32),), {}, TypeError, "logits"),
    ((torch.zeros(19, 3, 5),), {}, ValueError, "rank 4"),
    ((torch.zeros(1, 19, 5, 3).transpose(2, 3),), {}, ValueError, "strides"),
    ((_LOGITS,), {"confidence_mask": torch.zeros(1, 3, 5)}, ValueError, "threshold"),
    ((_LOGITS,), {"confidence_mask": torch.zeros(1, 3, 4), "threshold": 0.2}, ValueError, "confidence_mask"),
    (
        (_LOGITS,),
        {"confidence_mask": torch.zeros(1, 3, 5, dtype=torch.int64), "threshold": 0.2},
        TypeError,
        "confidence_mask",
    ),
    ((_LOGITS,), {"ignore": torch.zeros(1, 3, 5)}, TypeError, "ignore"),
    ((_LOGITS,), {"ignore": torch.zeros(1, 3, 5, dtype=torch.bool, device="meta")}, ValueError, "device"),
    ((_LOGITS,), {"threshold": "0.2"}, TypeError, "threshold"),
    ((_LOGITS,), {"one_hot": True, "memory_format": torch.preserve_format}, ValueError, "memory_format"),
]


@pytest.mark.parametrize(
    "args, kwargs, error, words", _BAD_PSEUDO, ids=[f"{case[-1]}-{i}" for i, case in enumerate(_BAD_PSEUDO)]
)
def test_pseudo_label_bad_input_names_the_argument(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        pseudo_label(*args, **kwargs)


@pytest.mark.parametrize(
    "label, num_classes, memory_format, error, words",
    [
        (torch.zeros(1, 3, 5, dtype=torch.int32), 19, torch.contiguous_format, TypeError, "label"),
        (torch.zeros(3, 5, dtype=torch.int64), 19, torch.contiguous_format, ValueError, "rank 3"),
        (torch.zeros(1, 5, 3, dtype=torch.int64).transpose(1, 2), 19, torch.contiguous_format, ValueError, "strides"),
        (torch.zeros(1, 3, 5, dtype=torch.int64), 0, torch.contiguous_format, ValueError, "num_classes"),
        (torch.zeros(1, 3, 5, dtype=torch.int64), 19, torch.preserve_format, ValueError, "memory_format"),
    ],
    ids=["dtype", "rank", "layout", "num_classes", "memory_format"],
)
def test_one_hot_bad_input_names_the_argument(label, num_classes, memory_format, error, words):
    with pytest.raises(error, match=words):
        one_hot_labels(label, num_classes, memory_format=memory_format)


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "nhwc"])
def test_compiled_fullgraph_on_cuda(memory_format):
    logits = torch.randn(2, 21, 129, 257, device="cuda").contiguous(memory_format=memory_format)
    score = torch.rand(2, 129, 257, device="cuda")
    ignore = torch.rand(2, 129, 257, device="cuda") < 0.1
    kwargs = {
        "confidence_mask": score,
        "threshold": 0.2,
        "ignore": ignore,
        "one_hot": True,
        "memory_format": memory_format,
    }
    compiled = torch.compile(lambda x: pseudo_label(x, **kwargs), fullgraph=True)
    _compare(compiled(logits), pseudo_label_ref(logits, **kwargs), "compiled")
    label = torch.randint(0, 21, (2, 129, 257), device="cuda")
    compiled_one_hot = torch.compile(lambda y: one_hot_labels(y, 21, memory_format=memory_format), fullgraph=True)
    torch.testing.assert_close(compiled_one_hot(label), one_hot_labels_ref(label, 21), atol=0, rtol=0)
