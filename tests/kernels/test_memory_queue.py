"""MemoryQueue: the fused Triton enqueue (interpreter on CPU) and its reference against a list-based oracle."""

import importlib

import pytest
import torch

from segadapt.kernels.memory_queue import MemoryQueue
from segadapt.kernels.memory_queue import memory_queue_enqueue_ref
from segadapt.kernels.memory_queue import u2pl_lengths

# kernels/__init__.py re-exports the op under the module's own name, so fetch the module itself.
module = importlib.import_module("segadapt.kernels.memory_queue")

LENGTHS = [7, 3, 5, 1]
DIM = 6


class ListOracle:
    """Official-style bank: one CPU list per class, cat the new keys at the end, keep the last `length` rows."""

    def __init__(self, lengths, dim):
        self.lengths = lengths
        self.queues = [torch.zeros(0, dim) for _ in lengths]

    def enqueue(self, features, classes):
        for c, length in enumerate(self.lengths):
            self.queues[c] = torch.cat([self.queues[c], features[classes == c].float()])[-length:]


def _fifo(queue, c):
    """Class c's entries oldest first, rebuilt from the ring and its write pointer."""
    start, length = int(queue.offsets[c]), int(queue.lengths[c])
    ring, count, pointer = queue.storage[start : start + length].float(), int(queue.count[c]), int(queue.write_ptr[c])
    return ring[:count] if count < length else torch.cat([ring[pointer:], ring[:pointer]])


def _batches(seed):
    generator = torch.Generator().manual_seed(seed)
    # Sizes include an empty batch and batches bringing more rows of a class than its ring holds; 255 is dropped.
    for size in (5, 0, 2, 17, 9, 30, 1):
        classes = torch.randint(0, len(LENGTHS), (size,), generator=generator)
        classes[torch.rand(size, generator=generator) < 0.15] = 255
        yield torch.randn(size, DIM, generator=generator), classes


def _check_against_oracle(queue, oracle, what):
    for c in range(len(LENGTHS)):
        torch.testing.assert_close(
            _fifo(queue, c), oracle.queues[c], atol=0, rtol=0, msg=lambda m, c=c: f"[{what} class {c}] {m}"
        )
    assert queue.counts().tolist() == [q.shape[0] for q in oracle.queues], f"[{what} counts]"


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_queue_keeps_exactly_the_newest_entries(path, monkeypatch):
    if path == "torch":
        monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
        monkeypatch.setattr(module, "_memory_queue_enqueue", lambda *a: pytest.fail("Triton ran under torch"))
    queue, oracle = MemoryQueue(len(LENGTHS), DIM, LENGTHS, device="cpu"), ListOracle(LENGTHS, DIM)
    for step, (features, classes) in enumerate(_batches(0)):
        queue.enqueue(features, classes)
        oracle.enqueue(features, classes)
        _check_against_oracle(queue, oracle, f"{path} step {step}")


def test_triton_and_reference_write_the_same_ring_slots():
    queue = MemoryQueue(len(LENGTHS), DIM, LENGTHS, device="cpu")
    state = {name: tensor.clone() for name, tensor in queue.state_dict().items()}
    for features, classes in _batches(1):
        queue.enqueue(features, classes)
        memory_queue_enqueue_ref(
            state["storage"], queue.offsets, queue.lengths, state["write_ptr"], state["count"], features, classes
        )
        for name in ("storage", "write_ptr", "count"):
            torch.testing.assert_close(
                queue.state_dict()[name], state[name], atol=0, rtol=0, msg=lambda m, name=name: f"[{name}] {m}"
            )


def test_hand_computed_wrap_around():
    queue = MemoryQueue(2, 1, [3, 2], device="cpu")
    queue.enqueue(torch.tensor([[1.0], [2.0], [10.0]]), torch.tensor([0, 0, 1]))
    queue.enqueue(torch.tensor([[3.0], [4.0], [11.0], [12.0], [13.0]]), torch.tensor([0, 0, 1, 1, 1]))
    # Class 0 ring [1, 2, _] -> 3 fills slot 2, 4 wraps to slot 0. Class 1 ring [10, _] (pointer 1): 11, 12, 13 go to
    # slots 1, 0, 1, and only the last two (12 -> 0, 13 -> 1) are written.
    assert queue.storage[:, 0].tolist() == [4.0, 2.0, 3.0, 12.0, 13.0], f"[storage] {queue.storage[:, 0].tolist()}"
    assert queue.write_ptr.tolist() == [1, 0] and queue.counts().tolist() == [3, 2], "[write_ptr/count]"


def test_storage_dtype_and_strided_features():
    queue = MemoryQueue(len(LENGTHS), DIM, 4, device="cpu", dtype=torch.float16)
    features = torch.randn(DIM, 10).t()  # a transposed view: rows are not contiguous
    classes = torch.arange(10) % len(LENGTHS)
    queue.enqueue(features, classes)
    oracle = ListOracle([4] * len(LENGTHS), DIM)
    oracle.enqueue(features, classes)
    for c in range(len(LENGTHS)):
        torch.testing.assert_close(
            queue.storage[c * 4 : c * 4 + queue.counts()[c]], oracle.queues[c].half(), atol=0, rtol=0
        )


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_bf16_features_into_float32_rings_are_exact(path, monkeypatch):
    """U2PL under AMP all-gathers its keys in bf16 and enqueues them as they arrive: each ring row must be the bf16
    value widened to float32 exactly (the cast happens in the kernel's store, or in the reference's .to)."""
    if path == "torch":
        monkeypatch.setenv("SEGADAPT_KERNELS", "torch")
        monkeypatch.setattr(module, "_memory_queue_enqueue", lambda *a: pytest.fail("Triton ran under torch"))
    queue, oracle = MemoryQueue(len(LENGTHS), DIM, LENGTHS, device="cpu"), ListOracle(LENGTHS, DIM)
    for step, (features, classes) in enumerate(_batches(3)):
        features = (features * 7.3).to(torch.bfloat16)  # values with a full 8-bit mantissa
        queue.enqueue(features, classes)
        oracle.enqueue(features, classes)  # features.float(): the exact widening
        _check_against_oracle(queue, oracle, f"{path} bf16 step {step}")
    assert queue.storage.dtype == torch.float32


def _filled_queue():
    queue = MemoryQueue(len(LENGTHS), DIM, LENGTHS, device="cpu")
    for features, classes in _batches(2):
        queue.enqueue(features, classes)
    return queue


def test_sample_draws_from_the_filled_part_reproducibly():
    queue = MemoryQueue(3, 2, [4, 4, 4], device="cpu")
    queue.enqueue(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), torch.tensor([0, 0, 0]))
    classes = torch.tensor([0, 1, 0, 255])
    neg, valid = queue.sample(classes, 3000, torch.Generator().manual_seed(5))
    again, _ = queue.sample(classes, 3000, torch.Generator().manual_seed(5))
    torch.testing.assert_close(neg, again, atol=0, rtol=0, msg=lambda m: f"[same seed] {m}")
    assert valid.tolist() == [True, False, True, False], f"[valid] {valid.tolist()}"
    assert float(neg[1].abs().sum()) == 0.0 and float(neg[3].abs().sum()) == 0.0, "[empty or unknown class] zeros"
    drawn = neg[0, :, 0]
    assert set(drawn.tolist()) == {1.0, 2.0, 3.0}, f"[support] only the three filled slots: {set(drawn.tolist())}"
    frequencies = torch.stack([(drawn == value).float().mean() for value in (1.0, 2.0, 3.0)])
    # 3000 draws: the standard error of each frequency is ~0.0086, so 0.05 is ~6 sigma.
    torch.testing.assert_close(frequencies, torch.full((3,), 1 / 3), atol=0.05, rtol=0, msg=lambda m: f"[uniform] {m}")
    assert not torch.equal(neg[0], neg[2]), "[queries] two queries of one class draw independently"


def test_state_dict_round_trip(tmp_path):
    queue = _filled_queue()
    path = tmp_path / "queue.pt"
    torch.save(queue.state_dict(), path)
    restored = MemoryQueue(len(LENGTHS), DIM, LENGTHS, device="cpu")
    restored.load_state_dict(torch.load(path, weights_only=True))
    features, classes = torch.randn(8, DIM), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    queue.enqueue(features, classes)
    restored.enqueue(features, classes)
    for name, tensor in queue.state_dict().items():
        torch.testing.assert_close(
            restored.state_dict()[name], tensor, atol=0, rtol=0, msg=lambda m, name=name: f"[{name}] {m}"
        )
    first = queue.sample(torch.tensor([0, 3]), 5, torch.Generator().manual_seed(1))[0]
    second = restored.sample(torch.tensor([0, 3]), 5, torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(first, second, atol=0, rtol=0, msg=lambda m: f"[sample after restore] {m}")
    with pytest.raises(ValueError, match="lengths"):
        MemoryQueue(len(LENGTHS), DIM, [7, 3, 5, 2], device="cpu").load_state_dict(queue.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        restored.load_state_dict({"storage": queue.storage})


def test_u2pl_lengths():
    assert u2pl_lengths(19) == [50000] + [30000] * 18, "[u2pl_lengths] 50,000 for class 0, 30,000 otherwise"
    queue = MemoryQueue(21, 1, u2pl_lengths(21), device="cpu")
    assert queue.storage.shape == (50000 + 20 * 30000, 1) and int(queue.offsets[1]) == 50000, "[offsets]"


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda q: q.enqueue(torch.zeros(2, DIM + 1), torch.zeros(2, dtype=torch.int64)), ValueError, "features"),
        (
            lambda q: q.enqueue(torch.zeros(2, DIM, dtype=torch.int32), torch.zeros(2, dtype=torch.int64)),
            TypeError,
            "features",
        ),
        (lambda q: q.enqueue(torch.zeros(2, DIM), torch.zeros(2, dtype=torch.int32)), TypeError, "classes"),
        (lambda q: q.enqueue(torch.zeros(2, DIM), torch.zeros(3, dtype=torch.int64)), ValueError, "classes"),
        (
            lambda q: q.enqueue(torch.zeros(2, DIM, device="meta"), torch.zeros(2, dtype=torch.int64)),
            ValueError,
            "device",
        ),
        (lambda q: q.sample(torch.zeros(2, dtype=torch.int64), 0, torch.Generator()), ValueError, "k"),
        (lambda q: q.sample(torch.zeros(2, dtype=torch.int64), 3, None), ValueError, "generator"),
        (lambda q: q.sample(torch.zeros(2), 3, torch.Generator()), TypeError, "classes"),
        (lambda q: MemoryQueue(4, DIM, [1, 2], device="cpu"), ValueError, "lengths"),
        (lambda q: MemoryQueue(4, 0, 3, device="cpu"), ValueError, "dim"),
    ],
    ids=[
        "width",
        "feature-dtype",
        "class-dtype",
        "class-shape",
        "device",
        "k",
        "generator",
        "query-dtype",
        "lengths",
        "dim",
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call(MemoryQueue(len(LENGTHS), DIM, LENGTHS, device="cpu"))


@pytest.mark.gpu
def test_compiled_enqueue_on_cuda():
    lengths = u2pl_lengths(19)
    queue = MemoryQueue(19, 256, lengths, device="cuda")
    reference = {name: tensor.clone() for name, tensor in queue.state_dict().items()}
    # The sampler takes a torch.Generator and stays eager; the enqueue is the part inside the compiled step.
    compiled = torch.compile(queue.enqueue, fullgraph=True)
    for _ in range(3):
        features = torch.randn(40000, 256, device="cuda")
        classes = torch.randint(0, 19, (40000,), device="cuda")
        compiled(features, classes)
        memory_queue_enqueue_ref(
            reference["storage"],
            queue.offsets,
            queue.lengths,
            reference["write_ptr"],
            reference["count"],
            features,
            classes,
        )
    for name in ("storage", "write_ptr", "count"):
        torch.testing.assert_close(
            queue.state_dict()[name], reference[name], atol=0, rtol=0, msg=lambda m, name=name: f"[{name}] {m}"
        )
