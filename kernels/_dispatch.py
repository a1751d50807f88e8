"""The one place that decides between a Triton kernel and its PyTorch reference.

`SEGADAPT_KERNELS=torch|triton` forces a path; otherwise Triton runs on CUDA tensors, or on CPU tensors when
`TRITON_INTERPRET=1` (how CI tests kernels). Read at call time, never patched at import time.
"""

from __future__ import annotations

import importlib.util
import os

import torch

_HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _HAS_TRITON


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the op should run its Triton kernel on these tensors."""
    mode = os.environ.get("SEGADAPT_KERNELS", "auto").lower()
    if mode not in ("auto", "torch", "triton"):
        raise ValueError(f"SEGADAPT_KERNELS={mode!r}: expected 'torch', 'triton' or unset")
    if mode == "torch" or not _HAS_TRITON:
        if mode == "triton" and not _HAS_TRITON:
            raise ValueError("SEGADAPT_KERNELS=triton but triton is not installed (pip install triton)")
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if mode == "triton":
        if not on_cuda and not interpreting():
            raise ValueError("SEGADAPT_KERNELS=triton needs CUDA tensors or TRITON_INTERPRET=1 for CPU tensors")
        return True
    return on_cuda or interpreting()
