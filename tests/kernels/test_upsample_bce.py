"""upsample_bce: Triton (interpreter on CPU) against upsample_bce_ref, for loss, sigmoid and d_logits.grad."""

import importlib
import math

import pytest
import torch

from segadapt.kernels.upsample_bce import upsample_bce
from segadapt.kernels.upsample_bce import upsample_bce_ref

# kernels/__init__.py re-exports the op under the module's own name, so fetch the module itself.
module = importlib.import_module("segadapt.kernels.upsample_bce")

# (N, h, w, H, W): discriminator map size -> output size.
SHAPES = [
    (2, 5, 9, 33, 65),  # odd full-res sizes, non-integer scale
    (2, 4, 8, 32, 64),  # exact stride-8 upsampling (AdaptSegNet D output is stride 32, same arithmetic)
    (1, 1, 1, 1, 1),  # 1x1 -> 1x1
    (1, 1, 1, 7, 5),  # a single source pixel spread over the whole map
    (2, 12, 20, 5, 9),  # downsampling, odd sizes
]
FORMATS = [torch.contiguous_format, torch.channels_last]
TARGETS = ["zero", "one", "uint8", "int64"]  # constant domain labels and per-pixel maps with 255 = ignore


def _name(shape):
    return "x".join(map(str, shape))


def _make(shape, memory_format, target_kind, dtype=torch.float32):
    batch, height, width, out_h, out_w = shape
    d_logits = (2 * torch.randn(batch, 1, height, width)).to(dtype=dtype, memory_format=memory_format)
    if target_kind in ("zero", "one"):
        return d_logits, float(target_kind == "one")
    target = torch.randint(0, 2, (batch, out_h, out_w))
    target[torch.rand(target.shape) < 0.25] = 255
    return d_logits, target.to(torch.uint8 if target_kind == "uint8" else torch.int64)


def _run(fn, d_logits, size, target, **kwargs):
    leaf = d_logits.detach().clone().requires_grad_(True)
    value, sigmoid = fn(leaf, size, target, return_sigmoid=True, **kwargs)
    value.backward()
    return value.detach(), sigmoid, leaf.grad


@pytest.mark.parametrize("shape", SHAPES, ids=_name)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_matches_reference_fp32(shape, memory_format, target_kind, align_corners, loss):
    d_logits, target = _make(shape, memory_format, target_kind)
    size = shape[-2:]
    kwargs = {"align_corners": align_corners, "loss": loss}
    value, sigmoid, grad = _run(upsample_bce, d_logits, size, target, **kwargs)
    want_value, want_sigmoid, want_grad = _run(upsample_bce_ref, d_logits, size, target, **kwargs)
    assert value.dtype == torch.float32 and value.dim() == 0
    torch.testing.assert_close(value, want_value, atol=1e-5, rtol=1e-5, msg=lambda m: f"[loss] {m}")
    torch.testing.assert_close(sigmoid, want_sigmoid, atol=1e-6, rtol=1e-5, msg=lambda m: f"[sigmoid] {m}")
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"[d_logits.grad] {m}")
    assert grad.is_contiguous(memory_format=memory_format), "[d_logits.grad] layout differs from d_logits"
    assert not sigmoid.requires_grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("target_kind", ["one", "uint8"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_three_way_low_precision(dtype, target_kind, loss):
    """|triton - ref(upcast)| <= 2 |ref(no upcast) - ref(upcast)| + atol, for loss, sigmoid and gradient."""
    d_logits, target = _make(SHAPES[0], torch.channels_last, target_kind, dtype=dtype)
    kwargs = {"align_corners": False, "loss": loss}
    got = _run(upsample_bce, d_logits, (33, 65), target, **kwargs)
    want = _run(upsample_bce_ref, d_logits, (33, 65), target, **kwargs)
    base = _run(upsample_bce_ref, d_logits, (33, 65), target, upcast=False, **kwargs)
    for index, (label, atol) in enumerate([("loss", 1e-4), ("sigmoid", 1e-5), ("d_logits.grad", 1e-6)]):
        error = (got[index].float() - want[index].float()).abs().max().item()
        bound = 2 * (base[index].float() - want[index].float()).abs().max().item() + atol
        assert error <= bound, f"[{label}] {dtype}: error {error:.3g} > bound {bound:.3g}"
    assert got[2].dtype == dtype


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_all_ignored_is_zero_with_zero_grad(memory_format, loss):
    d_logits, target = _make(SHAPES[0], memory_format, "uint8")
    target.fill_(255)
    for fn in (upsample_bce, upsample_bce_ref):
        value, _, grad = _run(fn, d_logits, (33, 65), target, align_corners=True, loss=loss)
        assert value.item() == 0.0, f"[loss] {fn.__name__}: {value.item()}"
        assert torch.count_nonzero(grad).item() == 0, f"[d_logits.grad] {fn.__name__} is not zero"


def test_hand_computed_single_source_pixel():
    """1x1 logit x upsampled to a constant map: BCE = log(1 + exp(-x)) for target 1, MSE = (x - t)^2 on valid."""
    d_logits = torch.full((1, 1, 1, 1), 0.75)
    bce = upsample_bce(d_logits, (3, 4), 1.0, align_corners=False)
    assert bce.item() == pytest.approx(math.log1p(math.exp(-0.75)), rel=1e-6)
    target = torch.tensor([[[0, 1, 255], [1, 1, 255]]], dtype=torch.uint8)
    mse = upsample_bce(d_logits, (2, 3), target, align_corners=True, loss="mse")
    assert mse.item() == pytest.approx((0.75**2 + 3 * 0.25**2) / 4, rel=1e-6)


def test_no_grad_path_and_strided_target():
    d_logits, _ = _make(SHAPES[0], torch.contiguous_format, "one")
    wide = torch.randint(0, 2, (2, 33, 130))
    view = wide[:, :, ::2]
    with torch.no_grad():
        value = upsample_bce(d_logits, (33, 65), view, align_corners=False)
    want = upsample_bce_ref(d_logits, (33, 65), view.contiguous(), align_corners=False)
    torch.testing.assert_close(value, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"[loss] {m}")


def test_torch_env_forces_reference(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("Triton path taken although SEGADAPT_KERNELS=torch")

    monkeypatch.setattr(module, "_fwd_op", fail)
    monkeypatch.setattr(module._UpsampleBCEFunction, "apply", fail)
    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
    d_logits, target = _make(SHAPES[0], torch.contiguous_format, "int64")
    got = upsample_bce(d_logits, (33, 65), target, align_corners=False)
    assert torch.equal(got, upsample_bce_ref(d_logits, (33, 65), target, align_corners=False))
    monkeypatch.delenv("SEGADAPT_KERNELS")
    with pytest.raises(AssertionError, match="Triton path taken"):
        upsample_bce(d_logits, (33, 65), target, align_corners=False)


def _bad_inputs():
    d_logits, target = _make(SHAPES[0], torch.contiguous_format, "int64")
    size = (33, 65)
    return [
        ("float64", d_logits.double(), size, target, "bce", ValueError, "d_logits: expected dtype"),
        ("two_channels", d_logits.expand(2, 2, 5, 9), size, target, "bce", ValueError, "d_logits: expected shape"),
        ("rank3", d_logits[0], size, target, "bce", ValueError, "d_logits: expected shape"),
        ("layout", d_logits.transpose(2, 3), (33, 65), 1.0, "bce", ValueError, "d_logits: strides .* layout"),
        ("size", d_logits, (33,), target, "bce", ValueError, "size: expected"),
        ("target_shape", d_logits, (32, 65), target, "bce", ValueError, "target: expected shape"),
        ("target_dtype", d_logits, size, target.int(), "bce", ValueError, "target: expected dtype"),
        ("target_device", d_logits, size, target.to("meta"), "bce", ValueError, "target: on meta"),
        ("target_type", d_logits, size, "1", "bce", TypeError, "target: expected a float or a tensor"),
        ("loss", d_logits, size, target, "hinge", ValueError, "loss='hinge'"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_input_names_the_argument(case):
    _, d_logits, size, target, loss, error, pattern = case
    with pytest.raises(error, match=pattern):
        upsample_bce(d_logits, size, target, align_corners=False, loss=loss)


# (N, h, w, H, W, align_corners): discriminator maps cut into several gather tiles along both axes.
GATHER_SHAPES = [
    (2, 6, 10, 192, 320, False),  # x32: AdaptSegNet's 1/32 discriminator map in miniature (2 x 2 owned per tile)
    (1, 9, 17, 129, 257, True),  # x16, align_corners (AdvSemiSeg's D output upsampled to the crop)
    (1, 13, 7, 90, 61, False),  # non-integer scales, a different one per axis
]


@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=_name)
@pytest.mark.parametrize("target_kind", ["one", "int64"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_gather_backward_matches_reference_and_scatter(shape, target_kind, loss, monkeypatch):
    """The gather-form backward (each program owns a block of the discriminator map, recomputes the loss gradient
    on the outputs that reach it, reduces through the interpolation matrices; no atomics) equals the reference and
    the scatter form, with tile boundaries and halos on both axes."""
    *dims, align_corners = shape
    d_logits, target = _make(tuple(dims), torch.channels_last, target_kind)
    size = tuple(dims[3:])
    assert module._gather_axis(dims[1], size[0], align_corners) is not None
    assert module._gather_axis(dims[2], size[1], align_corners) is not None
    kwargs = {"align_corners": align_corners, "loss": loss}
    _, _, grad = _run(upsample_bce, d_logits, size, target, **kwargs)
    _, _, want = _run(upsample_bce_ref, d_logits, size, target, **kwargs)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-4, msg=lambda m: f"[gather grad] {m}")
    monkeypatch.setenv("SEGADAPT_BCE_BACKWARD", "scatter")
    _, _, scatter = _run(upsample_bce, d_logits, size, target, **kwargs)
    torch.testing.assert_close(grad, scatter, atol=1e-6, rtol=1e-4, msg=lambda m: f"[gather vs scatter] {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("target_kind", ["one", "uint8"])
def test_real_size_cuda(target_kind):
    """AdvSemiSeg's shape: D output at stride 8 upsampled to a 321x321 crop (odd), channels-last."""
    d_logits, target = _make((8, 41, 41, 321, 321), torch.channels_last, target_kind)
    d_logits = d_logits.cuda()
    target = target.cuda() if isinstance(target, torch.Tensor) else target
    got = _run(upsample_bce, d_logits, (321, 321), target, align_corners=True)
    want = _run(upsample_bce_ref, d_logits, (321, 321), target, align_corners=True)
    for label, index in [("loss", 0), ("sigmoid", 1), ("d_logits.grad", 2)]:
        torch.testing.assert_close(
            got[index], want[index], atol=1e-6, rtol=1e-4, msg=lambda m, label=label: f"[{label}] {m}"
        )


@pytest.mark.gpu
def test_real_size_gather_backward_is_deterministic_cuda():
    """AdaptSegNet's x32 discriminator map at the recipe's shape: the gather backward matches the reference and two
    runs give bitwise the same gradient (the scatter form's atomic order varied)."""
    d_logits = (2 * torch.randn(8, 1, 16, 32, device="cuda")).requires_grad_(False)
    size = (512, 1024)
    assert module._gather_axis(16, 512, False) is not None and module._gather_axis(32, 1024, False) is not None
    _, _, grad = _run(upsample_bce, d_logits, size, 1.0, align_corners=False)
    _, _, again = _run(upsample_bce, d_logits, size, 1.0, align_corners=False)
    _, _, want = _run(upsample_bce_ref, d_logits, size, 1.0, align_corners=False)
    torch.testing.assert_close(grad, want, atol=1e-7, rtol=1e-4, msg=lambda m: f"[d_logits.grad] {m}")
    assert torch.equal(grad, again), "[d_logits.grad] the gather backward differs between two runs"
