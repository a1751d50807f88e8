"""Every kernels/ op inside torch.compile(fullgraph=True) on CUDA: no graph break, same values as eager.

upsample_cross_entropy and upsample_bce wrap their launchers in torch.library custom ops (opaque to Dynamo) under an
autograd.Function; the other ops trace their launchers directly. A graph break fails here as an exception.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu


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


@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_cross_entropy_fullgraph(align_corners):
    from kernels.upsample_cross_entropy import upsample_cross_entropy

    logits = _channels_last(2, 19, 90, 160)
    labels = torch.randint(0, 19, (2, 720, 1280), device="cuda")
    labels[:, :64] = 255

    def loss_fn(x, y):
        return upsample_cross_entropy(x, y, align_corners=align_corners)

    _compare_with_grad(loss_fn, logits, labels)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_upsample_bce_fullgraph(loss):
    from kernels.upsample_bce import upsample_bce

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


def test_entropy_percentile_fullgraph():
    module = pytest.importorskip("kernels.entropy_percentile")
    logits = _channels_last(2, 19, 65, 129)
    ignore = torch.rand(2, 65, 129, device="cuda") < 0.1
    eager = module.entropy_percentile(logits, ignore, 80.0)
    compiled = torch.compile(module.entropy_percentile, fullgraph=True)(logits, ignore, 80.0)
    for label, got, want in zip(["entropy", "threshold", "reliable", "unreliable"], compiled, eager, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, label=label: f"[{label}] {m}")


def test_pseudo_label_fullgraph():
    module = pytest.importorskip("kernels.pseudo_label")
    logits = _channels_last(2, 21, 65, 129)
    confidence = torch.rand(2, 65, 129, device="cuda")

    def fn(x, c):
        return module.pseudo_label(x, confidence_mask=c, threshold=0.2, one_hot=True)

    eager, compiled = fn(logits, confidence), torch.compile(fn, fullgraph=True)(logits, confidence)
    for label, got, want in zip(["label", "conf", "one_hot"], compiled, eager, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, label=label: f"[{label}] {m}")


def test_memory_queue_fullgraph():
    module = pytest.importorskip("kernels.memory_queue")
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
