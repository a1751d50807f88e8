"""Fused Triton ops for segadapt's hot paths, each with a pure-PyTorch reference that is its specification.

`OPS` maps every public op to (reference, public function); the public function dispatches through
`use_triton` at call time (SEGADAPT_KERNELS=torch|triton forces a path).
"""

from kernels._dispatch import use_triton

__all__ = ["OPS", "use_triton"]

OPS: dict[str, tuple] = {}
