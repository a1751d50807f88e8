"""bench aot: every kernel compiles ahead of time for sm_90 and sm_80 at the launchers' real specialisations, with
no spill and no fenced atomic (issue 20); the SASS census that decides it is checked on kernels built to fail it."""

import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from segadapt.bench import aot

KERNEL_MODULES = ["upsample_cross_entropy", "upsample_bce", "entropy_percentile", "pseudo_label", "memory_queue"]


def _compiler_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return env


def _every_kernel_name() -> set[str]:
    """Names of the @triton.jit kernels (launched functions: `_..._kernel`) defined in kernels/."""
    names = set()
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"segadapt.kernels.{module_name}")
        names |= {
            name for name, value in vars(module).items()
            if name.endswith("_kernel") and not inspect.isclass(value) and not inspect.ismodule(value)
        }  # fmt: skip
    return names


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_and_sm80_without_spills_or_fenced_atomics(tmp_path):
    out = tmp_path / "aot.json"
    command = [sys.executable, "-m", "segadapt.bench", "aot", "--cases", "real", "--out", str(out), "--jobs", "2"]
    completed = subprocess.run(command, env=_compiler_env(), capture_output=True, text=True)
    payload = json.loads(out.read_text())
    assert payload["failures"] == [], "\n".join(payload["failures"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = payload["results"]
    for target in ("sm_90", "sm_80"):
        compiled = {row["kernel"] for row in rows if row["target"] == target and row["compiled"]}
        assert compiled == _every_kernel_name(), f"{target}: kernels not compiled: {_every_kernel_name() - compiled}"
    # Every autotune config of every tuned kernel was compiled (the autotuner may pick any of them).
    from segadapt.kernels import upsample_cross_entropy as _  # noqa: F401

    ce = importlib.import_module("segadapt.kernels.upsample_cross_entropy")
    labels = {aot._config_label(config) for config in ce._CONFIGS}
    got = {row["config"] for row in rows if row["kernel"] == "_upsample_cross_entropy_bwd_kernel"}
    assert labels <= got, f"CE backward configs not compiled: {labels - got}"


_PROBE = textwrap.dedent("""
    import json, sys
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from segadapt.bench.aot import _sass_stats

    @triton.jit
    def acq_rel(ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.atomic_add(ptr + offs % 7, 1.0)

    @triton.jit
    def relaxed(ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.atomic_add(ptr + offs % 7, 1.0, sem="relaxed")

    rows = {}
    for kernel in (acq_rel, relaxed):
        source = ASTSource(kernel, {"ptr": "*fp32", "BLOCK": "constexpr"}, {(1,): 128})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        rows[kernel.__name__] = _sass_stats(compiled.asm["cubin"])
    print(json.dumps(rows))
""")


def test_sass_census_flags_default_atomics_as_fenced_and_relaxed_ones_as_clean(tmp_path):
    # Triton's tl.atomic_add defaults to sem="acq_rel" (triton/language/core.py, atomic_add docstring), which
    # compiles to MEMBAR + ATOM + CCTL; "relaxed" to a bare RED. The detector must tell them apart.
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    completed = subprocess.run([sys.executable, str(script)], env=_compiler_env(), capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(completed.stdout.strip().splitlines()[-1])
    assert rows["acq_rel"]["atomics"] > 0 and rows["acq_rel"]["fenced_atomics"], rows["acq_rel"]
    assert rows["relaxed"]["atomics"] > 0 and not rows["relaxed"]["fenced_atomics"], rows["relaxed"]
    assert not rows["relaxed"]["spills"] and rows["relaxed"]["registers"] > 0


def test_failures_name_the_variant_and_the_reason():
    base = {
        "case": "c",
        "kernel": "k",
        "target": "sm_90",
        "config": "BLOCK_P=128,warps=4",
        "compiled": True,
        "spills": False,
        "fenced_atomics": False,
        "stack_bytes": 0,
        "local_ops": 0,
        "atomics": 0,
        "fences": 0,
    }
    rows = [
        base,
        {**base, "spills": True, "stack_bytes": 400, "local_ops": 12},
        {**base, "fenced_atomics": True, "atomics": 4, "fences": 4},
        {**base, "compiled": False, "error": "boom"},
    ]
    problems = aot.failures(rows)
    assert problems == [
        "c/k/sm_90/BLOCK_P=128,warps=4: spills (400 B stack, 12 local ops)",
        "c/k/sm_90/BLOCK_P=128,warps=4: 4 atomics next to 4 fences (acq_rel)",
        "c/k/sm_90/BLOCK_P=128,warps=4: compile error: boom",
    ]


def test_launchers_on_meta_tensors_record_the_real_specialisation():
    import torch

    from segadapt.kernels._launch import record_launches

    ce = importlib.import_module("segadapt.kernels.upsample_cross_entropy")
    logits = torch.empty(8, 19, 65, 129, device="meta", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.empty(8, 512, 1024, device="meta", dtype=torch.int64)
    with record_launches() as records:
        ce._upsample_cross_entropy_fwd(logits, labels, False, 255, "mean", True)
    (record,) = records
    assert record.kernel.__name__ == "_upsample_cross_entropy_fwd_kernel"
    # channels-last: the class stride is 1 and the pixel stride is C (what the kernel specialises on).
    assert record.args[6:8] == (1, 19) and record.kwargs["C"] == 19 and record.kwargs["STORE_LSE"] is True
    assert record.work == 8 * 512 * 1024
    assert record.grid({"BLOCK_P": 128}) == (512 * 1024 // 128, 8)


def test_the_gather_backward_is_recorded_with_each_targets_tile(monkeypatch):
    """`record_launches(capability)` makes launchers pick that target's tiles: the CE gather backward's TF32 tile is
    64 x 64 on sm_90 (wgmma: 225 registers) and 64 x 32 on sm_80 (mma.sync spilled at 64 x 64); fp32 is 64 x 32 on both
    with FMA dots, and takes the TF32 tiles under torch.set_float32_matmul_precision("high"). The AOT run compiles each
    target's own launch, so no target is checked with another's tile."""
    import torch

    from segadapt.kernels._launch import device_capability
    from segadapt.kernels._launch import record_launches

    ce = importlib.import_module("segadapt.kernels.upsample_cross_entropy")
    monkeypatch.setattr(ce, "interpreting", lambda: False)  # the GPU tiles, as `bench aot` (interpreter off) sees
    labels = torch.empty(8, 512, 1024, device="meta", dtype=torch.int64)
    tiles = {}
    saved = torch.get_float32_matmul_precision()
    try:
        for dtype, matmul in ((torch.bfloat16, "highest"), (torch.float32, "highest"), (torch.float32, "high")):
            torch.set_float32_matmul_precision(matmul)
            logits = torch.empty(8, 19, 65, 129, device="meta", dtype=dtype)
            logits = logits.contiguous(memory_format=torch.channels_last)
            for capability in (90, 80):
                with record_launches(capability) as records:
                    assert device_capability(logits.device) == capability
                    lse = labels.new_empty(labels.shape, dtype=torch.float32)
                    scale = labels.new_empty((), dtype=torch.float32)
                    ce._upsample_cross_entropy_bwd(scale, logits, labels, lse, False, 255)
                (record,) = records
                assert record.kernel.__name__ == "_upsample_cross_entropy_bwd_gather_kernel"
                kwargs = record.kwargs
                tiles[(dtype, matmul, capability)] = (kwargs["TILE_H"], kwargs["TILE_W"], kwargs["INPUT_PRECISION"])
    finally:
        torch.set_float32_matmul_precision(saved)
    # fp32 logits follow torch.set_float32_matmul_precision: TF32 dots (and their tiles) under "high"
    assert tiles == {
        (torch.bfloat16, "highest", 90): (64, 64, "tf32"), (torch.bfloat16, "highest", 80): (64, 32, "tf32"),
        (torch.float32, "highest", 90): (64, 32, "ieee"), (torch.float32, "highest", 80): (64, 32, "ieee"),
        (torch.float32, "high", 90): (64, 64, "tf32"), (torch.float32, "high", 80): (64, 32, "tf32"),
    }  # fmt: skip
    assert device_capability(torch.device("cpu")) == 90, "outside a recording, CPU answers the default"
    # Under triton < 3.9 (3.6 spilled 104 B at 64 x 64) fp32 logits with TF32 dots keep the 64 x 32 tile on sm_90.
    monkeypatch.setattr(ce, "_triton_version", lambda: (3, 6))
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        fp32 = torch.empty(8, 19, 65, 129, device="meta").contiguous(memory_format=torch.channels_last)
        bf16 = fp32.to(torch.bfloat16)
        with record_launches(90):
            assert ce._gather_tile(fp32) == (64, 32, 8) and ce._gather_tile(bf16) == (64, 64, 8)
    finally:
        torch.set_float32_matmul_precision(saved)
