"""Test-wide setup: Triton through its interpreter when no GPU is present, fixed seeds, small thread pools."""

import os

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton (kernels/ does on first use).
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SEGADAPT_AUTOTUNE", "0")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
