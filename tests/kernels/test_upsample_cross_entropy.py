"""upsample_cross_entropy: Triton (interpreter on CPU) against upsample_cross_entropy_ref, loss and logits.grad."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from segadapt.kernels.upsample_cross_entropy import cross_entropy_sum
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy_ref

# kernels/__init__.py re-exports the op under the module's own name, so fetch the module itself.
module = importlib.import_module("segadapt.kernels.upsample_cross_entropy")

# (N, C, h, w, H, W): logit size -> label size.
SHAPES = [
    (2, 19, 5, 9, 33, 65),  # odd full-res sizes, non-integer scale, C = 19 (Cityscapes)
    (2, 21, 4, 8, 32, 64),  # exact stride-8 upsampling, C = 21 (VOC)
    (1, 19, 1, 1, 1, 1),  # 1x1 -> 1x1
    (1, 21, 1, 1, 7, 5),  # a single source pixel spread over the whole label map
    (1, 19, 9, 17, 9, 17),  # same size: bilinear is the identity
    (2, 19, 12, 20, 5, 9),  # downsampling (no antialias), odd sizes
]
FORMATS = [torch.contiguous_format, torch.channels_last]


def _name(shape):
    return "x".join(map(str, shape))


def _make(shape, memory_format, dtype=torch.float32, ignore_fraction=0.2):
    batch, classes, height, width, out_h, out_w = shape
    logits = torch.randn(batch, classes, height, width).to(dtype=dtype, memory_format=memory_format)
    labels = torch.randint(0, classes, (batch, out_h, out_w))
    labels[torch.rand(labels.shape) < ignore_fraction] = 255
    return logits, labels


def _loss_and_grad(fn, logits, labels, **kwargs):
    leaf = logits.detach().clone().requires_grad_(True)
    loss = fn(leaf, labels, **kwargs)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("shape", SHAPES, ids=_name)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_reference_fp32(shape, memory_format, align_corners, reduction):
    logits, labels = _make(shape, memory_format)
    kwargs = {"align_corners": align_corners, "reduction": reduction}
    loss, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, **kwargs)
    want_loss, want_grad = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, **kwargs)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5, msg=lambda m: f"[loss] {m}")
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"[logits.grad] {m}")
    assert grad.dtype == logits.dtype
    assert grad.is_contiguous(memory_format=memory_format), "[logits.grad] layout differs from logits"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_three_way_low_precision(dtype, memory_format, align_corners):
    """|triton - ref(upcast)| <= 2 |ref(no upcast) - ref(upcast)| + atol, for the loss and the gradient."""
    logits, labels = _make(SHAPES[0], memory_format, dtype=dtype)
    loss, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=align_corners)
    want_loss, want_grad = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, align_corners=align_corners)
    base_loss, base_grad = _loss_and_grad(
        upsample_cross_entropy_ref, logits, labels, align_corners=align_corners, upcast=False
    )
    for label, got, want, base, atol in [
        ("loss", loss, want_loss, base_loss, 1e-4),
        ("logits.grad", grad.float(), want_grad.float(), base_grad.float(), 1e-6),
    ]:
        error = (got - want).abs().max().item()
        bound = 2 * (base - want).abs().max().item() + atol
        assert error <= bound, f"[{label}] {dtype}: error {error:.3g} > bound {bound:.3g}"
    assert grad.dtype == dtype


@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_is_zero_with_zero_grad(memory_format, reduction):
    """A batch with no valid pixel: loss 0 and gradient 0 (plain F.cross_entropy's mean would be NaN)."""
    logits, labels = _make(SHAPES[0], memory_format)
    labels.fill_(255)
    for fn in (upsample_cross_entropy, upsample_cross_entropy_ref):
        loss, grad = _loss_and_grad(fn, logits, labels, align_corners=False, reduction=reduction)
        assert loss.item() == 0.0, f"[loss] {fn.__name__}: {loss.item()}"
        assert torch.count_nonzero(grad).item() == 0, f"[logits.grad] {fn.__name__} is not zero"
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
    assert math.isnan(F.cross_entropy(upsampled, labels, ignore_index=255).item())


def test_hand_computed_single_source_pixel():
    """1x1 logits upsample to a constant map: loss = logsumexp(x) - x[label] for every valid pixel."""
    logits = torch.tensor([1.0, 2.0, 0.5]).reshape(1, 3, 1, 1)
    labels = torch.tensor([[[0, 2], [255, 1]]])
    lse = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    want_sum = (lse - 1.0) + (lse - 0.5) + (lse - 2.0)
    got_sum = upsample_cross_entropy(logits, labels, align_corners=True, reduction="sum")
    got_mean = upsample_cross_entropy(logits, labels, align_corners=False)
    assert got_sum.item() == pytest.approx(want_sum, rel=1e-6)
    assert got_mean.item() == pytest.approx(want_sum / 3, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_sum_reads_channels_last_as_rows(dtype):
    """The reference's channels-last path is `F.cross_entropy(reduction="sum")` on the NCHW copy, value and gradient,
    and hands back a channels-last gradient (what the upsample before it needs for its fast CPU backward)."""
    logits, labels = _make((2, 19, 12, 20, 12, 20), torch.channels_last, dtype=dtype)
    assert not logits.is_contiguous()
    got, got_grad = _loss_and_grad(cross_entropy_sum, logits, labels)
    want, want_grad = _loss_and_grad(
        lambda x, y: F.cross_entropy(x, y, ignore_index=255, reduction="sum"), logits.contiguous(), labels
    )
    tol = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.5, "rtol": 1e-2}
    torch.testing.assert_close(got.float(), want.float(), **tol, msg=lambda m: f"[loss] {m}")
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=1e-2)
    assert got_grad.is_contiguous(memory_format=torch.channels_last), "[grad] not channels-last"
    assert want_grad.is_contiguous(), "[grad] the NCHW baseline's layout changed: the test no longer tells them apart"


def test_strided_labels_and_no_grad_path():
    """Labels that are a strided view are read through their strides; no-grad calls skip the lse store."""
    logits, labels = _make(SHAPES[0], torch.channels_last)
    wide = torch.randint(0, 19, (2, 33, 130))
    view = wide[:, :, ::2]
    with torch.no_grad():
        got = upsample_cross_entropy(logits, view, align_corners=True)
    want = upsample_cross_entropy_ref(logits, view.contiguous(), align_corners=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m: f"[loss] {m}")


def test_torch_env_forces_reference(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("Triton path taken although SEGADAPT_KERNELS=torch")

    monkeypatch.setattr(module, "_fwd_op", fail)
    monkeypatch.setattr(module._UpsampleCrossEntropyFunction, "apply", fail)
    monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
    logits, labels = _make(SHAPES[0], torch.contiguous_format)
    got = upsample_cross_entropy(logits, labels, align_corners=False)
    want = upsample_cross_entropy_ref(logits, labels, align_corners=False)
    assert torch.equal(got, want)
    monkeypatch.delenv("SEGADAPT_KERNELS")
    with pytest.raises(AssertionError, match="Triton path taken"):
        upsample_cross_entropy(logits, labels, align_corners=False)


def _bad_inputs():
    logits, labels = _make(SHAPES[0], torch.contiguous_format)
    return [
        ("float64", logits.double(), labels, "mean", "logits: expected dtype"),
        ("rank3", logits[0], labels, "mean", "logits: expected rank 4"),
        ("labels_int32", logits, labels.int(), "mean", "labels: expected dtype int64"),
        ("labels_rank", logits, labels[0], "mean", "labels: expected shape"),
        ("labels_batch", logits, labels[:1], "mean", "labels: expected shape"),
        ("labels_device", logits, labels.to("meta"), "mean", "labels: on meta"),
        ("layout", logits.transpose(2, 3), labels, "mean", "logits: strides .* layout"),
        ("reduction", logits, labels, "none", "reduction='none'"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_input_names_the_argument(case):
    _, logits, labels, reduction, pattern = case
    with pytest.raises(ValueError, match=pattern):
        upsample_cross_entropy(logits, labels, align_corners=False, reduction=reduction)


def test_bilinear_scale_matches_pytorch_float32_rounding():
    assert module.bilinear_scale(90, 720, False) == 0.125
    assert module.bilinear_scale(90, 720, True) == pytest.approx(89 / 719, rel=1e-7)
    assert module.bilinear_scale(5, 1, True) == 0.0


# (N, C, h, w, H, W, align_corners): shapes that cut the sources into several gather tiles along both axes.
GATHER_SHAPES = [
    (2, 19, 24, 48, 192, 384, False),  # the demo's x8 (stride-8 logits of 384x192 crops)
    (1, 21, 33, 65, 257, 513, True),  # VOC's 321 crop at 1/8 in miniature: odd sizes, align_corners
    (1, 19, 17, 30, 131, 97, False),  # non-integer scales, a different one per axis (x7.7 and x3.2)
    (1, 5, 40, 50, 13, 77, True),  # downsampling in H, upsampling in W
    (1, 3, 6, 9, 108, 162, False),  # x18: two owned sources per tile, near the limit of the GPU tile
]


@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=_name)
@pytest.mark.parametrize("tile", [(64, 64, 8), (128, 128, 4)], ids=["gpu_tile", "interpreter_tile"])
def test_gather_backward_matches_reference_and_scatter(shape, tile, monkeypatch):
    """The gather-form backward (each program owns a block of source logits, recomputes the softmax on the outputs
    that reach it and reduces through the interpolation matrices; no atomics) equals the reference gradient and the
    scatter form's, at the GPU's tile as well as the interpreter's, so tile boundaries, halos and the window start
    (`first_output`, checked by `gather_plan`) are exercised on both geometries."""
    monkeypatch.setattr(module, "_GATHER_TILE_INTERPRET", tile)
    monkeypatch.delenv("SEGADAPT_CE_BACKWARD", raising=False)  # the default where the plan fits
    *dims, align_corners = shape
    logits, labels = _make(tuple(dims), torch.channels_last)
    assert module._gather_geometry(logits, labels, align_corners) is not None, "the gather form should run here"
    loss, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=align_corners)
    _, want = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, align_corners=align_corners)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-4, msg=lambda m: f"[gather grad] {m}")
    monkeypatch.setenv("SEGADAPT_CE_BACKWARD", "scatter")
    assert module._gather_geometry(logits, labels, align_corners) is None
    _, scatter = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=align_corners)
    torch.testing.assert_close(grad, scatter, atol=1e-6, rtol=1e-4, msg=lambda m: f"[gather vs scatter] {m}")


def test_gather_plan_owns_what_the_window_can_hold(monkeypatch):
    """Largest own <= 14 whose outputs fit the tile (x8: 6 sources per 64 outputs, 14 per 128); None past ~x19 at
    the GPU tile (~x41 at the interpreter's),
    where the scatter form takes over (and then still matches the reference)."""
    assert module.gather_plan(65, 512, False, 64) == 6
    assert module.gather_plan(65, 512, False, 128) == 14
    assert module.gather_plan(512, 65, False, 64) == 14  # downsampling: few outputs per source
    assert module.gather_plan(2, 256, True, 64) is None
    logits, labels = _make((1, 4, 2, 3, 256, 200), torch.contiguous_format)
    monkeypatch.setenv("SEGADAPT_CE_BACKWARD", "gather")
    assert module._gather_geometry(logits, labels, True) is None
    _, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=True)
    _, want = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, align_corners=True)
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-4, msg=lambda m: f"[scatter fallback] {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("memory_format", FORMATS, ids=["nchw", "channels_last"])
def test_real_size_cuda(memory_format):
    """The production shape: 1280x720 labels from 160x90 logits."""
    logits = torch.randn(2, 19, 90, 160, device="cuda").to(memory_format=memory_format)
    labels = torch.randint(0, 19, (2, 720, 1280), device="cuda")
    labels[:, :100] = 255
    loss, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=True)
    want_loss, want_grad = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, align_corners=True)
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5, msg=lambda m: f"[loss] {m}")
    torch.testing.assert_close(grad, want_grad, atol=1e-7, rtol=1e-3, msg=lambda m: f"[logits.grad] {m}")


def test_gather_backward_is_default_and_finite_on_huge_logits(monkeypatch):
    """The gather form is the default where its plan fits and SEGADAPT_CE_BACKWARD=scatter forces the scatter form.
    On a diverging run's logits (~1e9) the gradient stays finite and bounded (an earlier gather form, whose z came
    from dots, overflowed exp into inf * 0 = NaN there in LSD-seg's resume test)."""
    monkeypatch.delenv("SEGADAPT_CE_BACKWARD", raising=False)
    logits, labels = _make((1, 5, 4, 8, 32, 64), torch.channels_last)
    assert module._gather_geometry(logits, labels, True) is not None
    monkeypatch.setenv("SEGADAPT_CE_BACKWARD", "scatter")
    assert module._gather_geometry(logits, labels, True) is None
    monkeypatch.delenv("SEGADAPT_CE_BACKWARD")
    _, grad = _loss_and_grad(upsample_cross_entropy, logits * 1e9, labels, align_corners=True, reduction="sum")
    assert torch.isfinite(grad).all()
    # |softmax - onehot| <= 1 per output, spread with bilinear weights that sum to ~(32 / 4) * (64 / 8) per source
    assert grad.abs().max() <= 2 * (32 / 4) * (64 / 8)


def test_gather_backward_is_as_accurate_as_scatter_on_confident_pixels(monkeypatch):
    """Confident logits (the label class ~30 above the rest, where p - 1 is a difference of nearly equal numbers):
    against a float64 reference, the gather form's gradient error stays within 1.5x the scatter form's. It failed
    while the gather kernel recomputed z by dots (another association than the forward's, whose log-sum-exp it
    used): its error was 3.8x the scatter form's here, and the 2-rank-vs-1-process DDP test drifted past its
    tolerance."""
    torch.manual_seed(0)
    classes = torch.randint(0, 19, (2, 12, 20))
    logits = torch.randn(2, 19, 12, 20) * 2 + 30.0 * torch.nn.functional.one_hot(classes, 19).permute(0, 3, 1, 2)
    labels = torch.nn.functional.interpolate(classes[:, None].float(), size=(96, 160), mode="nearest")[:, 0].long()
    labels[:, :3] = 255
    _, want = _loss_and_grad(upsample_cross_entropy_ref, logits.double(), labels, align_corners=False)
    errors = {}
    for form in ("gather", "scatter"):
        monkeypatch.setenv("SEGADAPT_CE_BACKWARD", form)
        _, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=False)
        errors[form] = (grad.double() - want).abs().max().item()
    assert errors["gather"] <= 1.5 * errors["scatter"], f"[logits.grad] error vs float64: {errors}"


@pytest.mark.gpu
def test_real_size_bf16_gather_backward_cuda(monkeypatch):
    """bf16 channels-last at the recipe's shape: the gather backward's TF32 dots stay within twice the error that
    bf16 arithmetic itself makes (three-way bound), and two runs give bitwise the same gradient (no atomics)."""
    logits = torch.randn(2, 19, 65, 129, device="cuda").to(torch.bfloat16).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 19, (2, 512, 1024), device="cuda")
    labels[:, :64] = 255
    monkeypatch.setenv("SEGADAPT_CE_BACKWARD", "gather")
    assert module._gather_geometry(logits, labels, False) is not None
    _, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=False)
    _, again = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=False)
    _, want = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, align_corners=False)
    _, base = _loss_and_grad(upsample_cross_entropy_ref, logits, labels, align_corners=False, upcast=False)
    error = (grad.float() - want.float()).abs().max().item()
    bound = 2 * (base.float() - want.float()).abs().max().item() + 1e-7
    assert error <= bound, f"[logits.grad] bf16 gather: error {error:.3g} > bound {bound:.3g}"
    assert torch.equal(grad, again), "[logits.grad] the gather backward differs between two runs"


def _tf32_bound(logits, labels, align_corners):
    """Per-source bound on the error of a reduction whose terms are rounded to TF32 (operands 2^-11 each): 2^-9 times
    the interpolation backward of |dL/dz| (the sum of the terms' magnitudes), in float64."""
    source = logits.detach().double().requires_grad_(True)
    upsampled = F.interpolate(source, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    valid = labels != 255
    onehot = F.one_hot(labels.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).double()
    grad_z = (torch.softmax(upsampled.detach(), dim=1) - onehot) * valid[:, None] / valid.sum().clamp_min(1)
    (magnitude,) = torch.autograd.grad(upsampled, source, grad_z.abs())
    return 2.0**-9 * magnitude + 1e-9


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fp32_logits_follow_torch_matmul_precision(device, monkeypatch):
    """fp32 logits take TF32 reduction dots under torch.set_float32_matmul_precision("high") (the 64 x 64 tile on
    sm_90, 2.2x eager on paper against 1.17x with FMA dots: bench roofline) and FMA dots under PyTorch's default
    "highest". Under "high" each source's gradient stays within the TF32 rounding of its terms (2^-9 of the sum of
    their magnitudes); under "highest" within fp32 rounding. CPU: the interpreter at a small shape (the selection);
    GPU: the recipe's shape on tensor cores."""
    monkeypatch.delenv("SEGADAPT_CE_BACKWARD", raising=False)
    torch.manual_seed(0)
    shape = (2, 19, 65, 129, 512, 1024) if device == "cuda" else (2, 19, 6, 10, 44, 76)
    logits, labels = _make(shape, torch.channels_last)
    logits, labels = logits.to(device), labels.to(device)
    assert module._gather_geometry(logits, labels, False) is not None
    _, want = _loss_and_grad(upsample_cross_entropy_ref, logits.double(), labels, align_corners=False)
    bound = _tf32_bound(logits, labels, False)
    saved = torch.get_float32_matmul_precision()
    try:
        for precision, dots in (("high", "tf32"), ("highest", "ieee")):
            torch.set_float32_matmul_precision(precision)
            assert module._gather_precision(torch.float32) == dots
            assert module._gather_precision(torch.bfloat16) == "tf32"
            _, grad = _loss_and_grad(upsample_cross_entropy, logits, labels, align_corners=False)
            error = (grad.double() - want).abs()
            if dots == "tf32":
                assert (error <= bound).all(), f"[logits.grad] TF32 dots: worst error/bound {(error / bound).max():.3g}"
            else:
                torch.testing.assert_close(grad.double(), want, atol=1e-8, rtol=1e-4, msg=lambda m: f"[ieee] {m}")
    finally:
        torch.set_float32_matmul_precision(saved)
