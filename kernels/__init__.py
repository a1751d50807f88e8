"""Fused Triton ops for segadapt's hot paths, each with a pure-PyTorch reference that is its specification.

`OPS` maps every public op to (reference, public function); the public function dispatches through
`use_triton` at call time (SEGADAPT_KERNELS=torch|triton forces a path).
"""

from segadapt.kernels._dispatch import use_triton
from segadapt.kernels.entropy_percentile import entropy_percentile
from segadapt.kernels.entropy_percentile import entropy_percentile_ref
from segadapt.kernels.memory_queue import MemoryQueue
from segadapt.kernels.memory_queue import memory_queue_enqueue
from segadapt.kernels.memory_queue import memory_queue_enqueue_ref
from segadapt.kernels.memory_queue import u2pl_lengths
from segadapt.kernels.pseudo_label import one_hot_labels
from segadapt.kernels.pseudo_label import one_hot_labels_ref
from segadapt.kernels.pseudo_label import pseudo_label
from segadapt.kernels.pseudo_label import pseudo_label_ref
from segadapt.kernels.upsample_bce import upsample_bce
from segadapt.kernels.upsample_bce import upsample_bce_ref
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy_ref

OPS: dict[str, tuple] = {
    "entropy_percentile": (entropy_percentile_ref, entropy_percentile),
    "pseudo_label": (pseudo_label_ref, pseudo_label),
    "one_hot_labels": (one_hot_labels_ref, one_hot_labels),
    "memory_queue_enqueue": (memory_queue_enqueue_ref, memory_queue_enqueue),
    "upsample_bce": (upsample_bce_ref, upsample_bce),
    "upsample_cross_entropy": (upsample_cross_entropy_ref, upsample_cross_entropy),
}

__all__ = ["OPS", "MemoryQueue", "u2pl_lengths", "use_triton", *OPS]
