"""Every kernels/ op inside torch.compile(fullgraph=True): no graph break, same values as eager.

Every Triton launcher sits behind a torch.library custom op (opaque to Dynamo, with a fake implementation);
upsample_cross_entropy and upsample_bce add an autograd.Function on top. A graph break fails here as an exception.
The CPU tests force the Triton path (interpreter) and compile with backend="aot_eager", which runs Dynamo and AOT
autograd (fake tensors, functionalisation) but no Inductor code generation; the GPU tests use the default backend.
"""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _channels_last(*shape, dtype=torch.bfloat16, requires_grad=False):
    tensor = torch.randn(*shape, device="cuda").to(dtype=dtype, memory_format=torch.channels_last)
    return tensor.requires_grad_(requires_grad)


def _compare_with_grad(fn, leaf, *args):
    eager_leaf = leaf.detach().clone().requires_grad_(True)
    compiled_leaf = leaf.detach().clone().requires_grad_(True)
    eager = fn(eager_leaf, *args)
    compiled = torch.compile(fn, fullgraph=True)(compiled_leaf, *args)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(compiled, eager, msg=lambda m: f"[loss] {m}")
    torch.testing.assert_close(compiled_leaf.grad, eager_leaf.grad, msg=lambda m: f"[grad] {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_cross_entropy_fullgraph(align_corners):
    from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy

    logits = _channels_last(2, 19, 90, 160)
    labels = torch.randint(0, 19, (2, 720, 1280), device="cuda")
    labels[:, :64] = 255

    def loss_fn(x, y):
        return upsample_cross_entropy(x, y, align_corners=align_corners)

    _compare_with_grad(loss_fn, logits, labels)


@pytest.mark.gpu
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_upsample_bce_fullgraph(loss):
    from segadapt.kernels.upsample_bce import upsample_bce

    d_logits = _channels_last(2, 1, 41, 41)
    target = torch.randint(0, 2, (2, 321, 321), device="cuda", dtype=torch.uint8)
    target[:, :20] = 255

    def per_pixel(x, t):
        value, sigmoid = upsample_bce(x, (321, 321), t, align_corners=True, return_sigmoid=True, loss=loss)
        return value + 0 * sigmoid.sum()

    def constant(x, t):
        return upsample_bce(x, (321, 321), 1.0, align_corners=False, loss=loss)

    _compare_with_grad(per_pixel, d_logits, target)
    _compare_with_grad(constant, d_logits, target)


@pytest.mark.gpu
def test_entropy_percentile_fullgraph():
    module = pytest.importorskip("segadapt.kernels.entropy_percentile")
    logits = _channels_last(2, 19, 65, 129)
    ignore = torch.rand(2, 65, 129, device="cuda") < 0.1
    eager = module.entropy_percentile(logits, ignore, 80.0)
    compiled = torch.compile(module.entropy_percentile, fullgraph=True)(logits, ignore, 80.0)
    for label, got, want in zip(["entropy", "threshold", "reliable", "unreliable"], compiled, eager, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, label=label: f"[{label}] {m}")


@pytest.mark.gpu
def test_pseudo_label_fullgraph():
    module = pytest.importorskip("segadapt.kernels.pseudo_label")
    logits = _channels_last(2, 21, 65, 129)
    confidence = torch.rand(2, 65, 129, device="cuda")

    def fn(x, c):
        return module.pseudo_label(x, confidence_mask=c, threshold=0.2, one_hot=True)

    eager, compiled = fn(logits, confidence), torch.compile(fn, fullgraph=True)(logits, confidence)
    for label, got, want in zip(["label", "conf", "one_hot"], compiled, eager, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, label=label: f"[{label}] {m}")


@pytest.mark.gpu
def test_memory_queue_fullgraph():
    module = pytest.importorskip("segadapt.kernels.memory_queue")
    queues = [module.MemoryQueue(19, 256, 512, device="cuda") for _ in range(2)]
    features = torch.randn(1000, 256, device="cuda")
    classes = torch.randint(0, 19, (1000,), device="cuda")
    queues[0].enqueue(features, classes)
    torch.compile(queues[1].enqueue, fullgraph=True)(features, classes)
    torch.testing.assert_close(queues[1].storage, queues[0].storage, msg=lambda m: f"[storage] {m}")
    torch.testing.assert_close(queues[1].count, queues[0].count, msg=lambda m: f"[count] {m}")
    queries = torch.arange(19, device="cuda").repeat_interleave(4)
    eager = queues[0].sample(queries, 50, torch.Generator(device="cuda").manual_seed(0))
    compiled = torch.compile(queues[1].sample, fullgraph=True)(
        queries, 50, torch.Generator(device="cuda").manual_seed(0)
    )
    torch.testing.assert_close(compiled[0], eager[0], msg=lambda m: f"[neg] {m}")


# --------------------------------------------------------------------------------- CPU (Triton interpreter)
@pytest.fixture
def _triton_cpu(monkeypatch):
    # triton.jit picks the interpreter when kernels/ is imported: tests/conftest.py sets it only without a GPU.
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (set by tests/conftest.py when no GPU is present)")
    monkeypatch.setenv("SEGADAPT_KERNELS", "triton")


def _cpu_compile(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _assert_outputs_close(got, want, names):
    for name, g, w in zip(names, got, want, strict=True):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"[{name}] {m}")


def _check_loss_and_grad(fn, ref_fn, leaf, *args):
    compiled_leaf = leaf.detach().clone().requires_grad_(True)
    ref_leaf = leaf.detach().clone().requires_grad_(True)
    compiled = _cpu_compile(fn)(compiled_leaf, *args)
    reference = ref_fn(ref_leaf, *args)
    compiled.backward()
    reference.backward()
    torch.testing.assert_close(compiled, reference, msg=lambda m: f"[loss] {m}")
    torch.testing.assert_close(compiled_leaf.grad, ref_leaf.grad, msg=lambda m: f"[grad] {m}")


@pytest.mark.usefixtures("_triton_cpu")
@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_cross_entropy_fullgraph_cpu(align_corners):
    from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy
    from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy_ref

    logits = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (2, 9, 11))
    labels[:, :2] = 255

    def fn(x, y):
        return upsample_cross_entropy(x, y, align_corners=align_corners)

    def ref(x, y):
        return upsample_cross_entropy_ref(x, y, align_corners=align_corners)

    _check_loss_and_grad(fn, ref, logits, labels)


@pytest.mark.usefixtures("_triton_cpu")
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_upsample_bce_fullgraph_cpu(loss):
    from segadapt.kernels.upsample_bce import upsample_bce
    from segadapt.kernels.upsample_bce import upsample_bce_ref

    d_logits = torch.randn(2, 1, 3, 4)
    target = torch.randint(0, 2, (2, 9, 11), dtype=torch.uint8)
    target[:, :2] = 255

    def per_pixel(op):
        def fn(x, t):
            value, sigmoid = op(x, (9, 11), t, align_corners=True, return_sigmoid=True, loss=loss)
            return value + 0.5 * sigmoid.sum()

        return fn

    def constant(op):
        return lambda x, t: op(x, (9, 11), 1.0, align_corners=False, loss=loss)

    _check_loss_and_grad(per_pixel(upsample_bce), per_pixel(upsample_bce_ref), d_logits, target)
    torch._dynamo.reset()
    _check_loss_and_grad(constant(upsample_bce), constant(upsample_bce_ref), d_logits, target)


@pytest.mark.usefixtures("_triton_cpu")
@pytest.mark.parametrize("percentile", [80.0, 0.0, "tensor"])
def test_entropy_percentile_fullgraph_cpu(percentile):
    from segadapt.kernels.entropy_percentile import entropy_percentile
    from segadapt.kernels.entropy_percentile import entropy_percentile_ref

    logits = torch.randn(2, 5, 4, 6).contiguous(memory_format=torch.channels_last)
    ignore = torch.rand(2, 4, 6) < 0.2
    percentile = torch.tensor(30.0) if percentile == "tensor" else percentile
    got = _cpu_compile(entropy_percentile)(logits, ignore, percentile)
    want = entropy_percentile_ref(logits, ignore, percentile)
    _assert_outputs_close(got, want, ["entropy", "threshold", "reliable", "unreliable"])
    assert int(got[2].sum() + got[3].sum()) == int((~ignore).sum())


@pytest.mark.usefixtures("_triton_cpu")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_pseudo_label_fullgraph_cpu(memory_format):
    from segadapt.kernels.pseudo_label import pseudo_label
    from segadapt.kernels.pseudo_label import pseudo_label_ref

    logits = torch.randn(2, 5, 4, 6)
    confidence = torch.rand(2, 4, 6)
    ignore = torch.rand(2, 4, 6) < 0.2
    options = {"threshold": 0.4, "ignore": ignore, "one_hot": True, "memory_format": memory_format}
    got = _cpu_compile(lambda x, c: pseudo_label(x, confidence_mask=c, **options))(logits, confidence)
    want = pseudo_label_ref(logits, confidence_mask=confidence, **options)
    _assert_outputs_close(got, want, ["label", "conf", "one_hot"])
    assert got[2].is_contiguous(memory_format=memory_format)
    assert bool((got[0] == 255).any()) and bool((got[0] != 255).any())

    torch._dynamo.reset()
    got = _cpu_compile(lambda x: pseudo_label(x, threshold=0.4))(logits)
    want = pseudo_label_ref(logits, threshold=0.4)
    assert got[2] is None
    _assert_outputs_close(got[:2], want[:2], ["label (conf threshold)", "conf (conf threshold)"])


@pytest.mark.usefixtures("_triton_cpu")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_one_hot_labels_fullgraph_cpu(memory_format):
    from segadapt.kernels.pseudo_label import one_hot_labels
    from segadapt.kernels.pseudo_label import one_hot_labels_ref

    label = torch.randint(0, 5, (2, 4, 6))
    label[:, 0] = 255
    got = _cpu_compile(lambda y: one_hot_labels(y, 5, memory_format))(label)
    torch.testing.assert_close(got, one_hot_labels_ref(label, 5, memory_format))
    assert got.is_contiguous(memory_format=memory_format)


@pytest.mark.usefixtures("_triton_cpu")
def test_memory_queue_enqueue_fullgraph_cpu():
    from segadapt.kernels.memory_queue import MemoryQueue
    from segadapt.kernels.memory_queue import memory_queue_enqueue_ref

    compiled_queue, ref_queue = (MemoryQueue(3, 4, [5, 3, 2], device="cpu") for _ in range(2))
    enqueue = _cpu_compile(compiled_queue.enqueue)
    for _ in range(2):  # the second call wraps class 1 and class 2 around their rings
        features = torch.randn(7, 4)
        classes = torch.tensor([0, 1, 1, 2, 2, 2, 5])
        enqueue(features, classes)
        state = (ref_queue.storage, ref_queue.offsets, ref_queue.lengths, ref_queue.write_ptr, ref_queue.count)
        memory_queue_enqueue_ref(*state, features, classes)
    for name in ("storage", "write_ptr", "count"):
        got, want = getattr(compiled_queue, name), getattr(ref_queue, name)
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"[{name}] {m}")
    assert compiled_queue.count.tolist() == [2, 3, 2]
