"""Ahead-of-time compile of every Triton kernel for sm_90 and sm_80, no GPU needed: registers, spills, atomics.

`python -m segadapt.bench aot [--targets 90,80] [--cases real|small] [--out PATH] [--jobs K]` calls each op's
launcher on meta tensors of the real training shapes inside `kernels._launch.record_launches()`, so the launch
helper hands back the exact arguments (hence the exact specialisation: dtypes, 16-divisibility, constexprs) a GPU
run would compile. Each recorded launch is compiled for every autotune config plus the fixed config with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`, i.e. Triton's own pipeline down to a cubin
through the ptxas bundled in the triton wheel; cuobjdump (bundled too) then reads the resource usage and the SASS.

Per variant: registers, stack bytes and local loads/stores (spills), shared memory, SASS instruction count,
atomics and memory fences in SASS, and static warp instructions per output pixel = SASS instructions x warps x
programs / output pixels (exact for straight-line code: the class loops are `tl.static_range`, unrolled, except where
RUNTIME_LOOPS declares a runtime loop, whose body then counts once per trip).
The result is bench/results/kernels-aot-sm90.json (both targets in one file). Exit status 1 when any variant fails
to compile, spills, or issues a fenced atomic (MEMBAR next to ATOM/RED: the default acq_rel semantics).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RESULT_PATH = Path(__file__).resolve().parent / "results" / "kernels-aot-sm90.json"
TARGETS = (90, 80)
ROW_KEYS = (
    "case", "kernel", "target", "variant", "config", "compiled", "registers", "stack_bytes", "local_ops", "spills",
    "shared_bytes", "sass_instructions", "atomics", "fences", "fenced_atomics", "programs", "work",
    "instructions_per_pixel", "error",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One launcher call at a real training shape; `run(meta)` builds meta tensors and calls the launcher."""

    name: str
    op: str
    shape: str
    run: object


@contextlib.contextmanager
def _backward_form(variable: str, form: str):
    """Within the block, the op's backward takes `form` ("scatter" or "gather"), so that the form a launch does not
    take by default is compiled and checked too."""
    saved = os.environ.get(variable)
    os.environ[variable] = form
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(variable)
        else:
            os.environ[variable] = saved


@contextlib.contextmanager
def _matmul_precision(precision: str):
    """torch.set_float32_matmul_precision(precision) within the block, restored after."""
    import torch

    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _cases(size: str) -> list[Case]:
    """The launchers at the shapes training runs them (size="real") or tiny ones (size="small", for tests)."""
    import torch

    cl = torch.channels_last
    real = size == "real"
    batch = 8 if real else 2
    out_h, out_w = (512, 1024) if real else (33, 65)
    ce_in = (65, 129) if real else (5, 9)
    voc = 513 if real else 17
    voc_in = 65 if real else 3

    def meta(*shape, dtype=torch.float32, memory_format=torch.contiguous_format):
        return torch.empty(*shape, device="meta", dtype=dtype).contiguous(memory_format=memory_format)

    def ce(classes, in_hw, out_hw, align, dtype, fmt):
        module = importlib.import_module("segadapt.kernels.upsample_cross_entropy")

        def run():
            logits = meta(batch, classes, *in_hw, dtype=dtype, memory_format=fmt)
            labels = meta(batch, *out_hw, dtype=torch.int64)
            _, lse, count = module._upsample_cross_entropy_fwd(logits, labels, align, 255, "mean", True)
            module._upsample_cross_entropy_fwd(logits, labels, align, 255, "mean", False)
            module._upsample_cross_entropy_bwd(count, logits, labels, lse, align, 255)
            if dtype == torch.float32:  # fp32 logits under torch.set_float32_matmul_precision("high"): TF32 dots
                with _matmul_precision("high"):
                    module._upsample_cross_entropy_bwd(count, logits, labels, lse, align, 255)
            # The scatter form too: the fallback where the gather plan does not fit, and SEGADAPT_CE_BACKWARD=scatter.
            with _backward_form("SEGADAPT_CE_BACKWARD", "scatter"):
                module._upsample_cross_entropy_bwd(count, logits, labels, lse, align, 255)

        return run

    def bce(target_kind, dtype):
        module = importlib.import_module("segadapt.kernels.upsample_bce")

        def run():
            d_logits = meta(batch, 1, out_h // 32 or 1, out_w // 32 or 1, dtype=dtype)
            size = [out_h, out_w]
            target = None if target_kind == "constant" else meta(batch, out_h, out_w, dtype=torch.int64)
            _, _, count = module._upsample_bce_fwd(d_logits, size, target, 1.0, False, "bce", target is not None)
            module._upsample_bce_bwd(count, d_logits, size, target, 1.0, False, "bce")
            with _backward_form("SEGADAPT_BCE_BACKWARD", "scatter"):  # the fallback beyond the gather window
                module._upsample_bce_bwd(count, d_logits, size, target, 1.0, False, "bce")

        return run

    def entropy(dtype, fmt):
        module = importlib.import_module("segadapt.kernels.entropy_percentile")

        def run():
            logits = meta(batch, 19, out_h, out_w, dtype=dtype, memory_format=fmt)
            ignore = meta(batch, out_h, out_w, dtype=torch.bool)
            module._entropy_percentile_fwd(logits, ignore, 80.0)
            module._entropy_thresholds_fwd(logits, ignore, [80.0, 20.0, 80.0])  # U2PL's three per step

        return run

    def pseudo(classes, hw, dtype, fmt, with_score):
        module = importlib.import_module("segadapt.kernels.pseudo_label")

        def run():
            logits = meta(batch, classes, *hw, dtype=dtype, memory_format=fmt)
            score = meta(batch, *hw) if with_score else None
            ignore = meta(batch, *hw, dtype=torch.bool)
            module._pseudo_label_fwd(logits, score, 0.2 if with_score else None, ignore, with_score, fmt)
            module._one_hot_labels_fwd(meta(batch, *hw, dtype=torch.int64), classes, fmt)

        return run

    def queue(dtype):
        module = importlib.import_module("segadapt.kernels.memory_queue")

        def run():
            lengths = module.u2pl_lengths(19)
            storage = meta(sum(lengths), 256)
            offsets, lengths_t = meta(19, dtype=torch.int64), meta(19, dtype=torch.int64)
            rows = batch * 50 * 19 if real else 64
            module._memory_queue_enqueue(
                storage, offsets, lengths_t, meta(19, dtype=torch.int64), meta(19, dtype=torch.int64),
                meta(rows, 256, dtype=dtype), meta(rows, dtype=torch.int64),
            )  # fmt: skip

        return run

    bf16, fp32 = torch.bfloat16, torch.float32
    out = (out_h, out_w)
    return [
        Case("ce_cs_bf16_cl", "upsample_cross_entropy", f"{batch}x19x{ce_in} -> {out}",
             ce(19, ce_in, out, False, bf16, cl)),
        Case("ce_cs_fp32_cl", "upsample_cross_entropy", f"{batch}x19x{ce_in} fp32 -> {out}",
             ce(19, ce_in, out, False, fp32, cl)),
        Case("ce_voc_bf16_cl", "upsample_cross_entropy", f"{batch}x21x{voc_in}^2 -> {voc}^2",
             ce(21, (voc_in, voc_in), (voc, voc), True, bf16, cl)),
        Case("bce_const_fp32", "upsample_bce", f"{batch}x1x1/32 -> {out}", bce("constant", fp32)),
        Case("bce_map_bf16", "upsample_bce", f"{batch}x1x1/32 -> {out}", bce("map", bf16)),
        Case("entropy_bf16_cl", "entropy_percentile", f"{batch}x19x{out}", entropy(bf16, cl)),
        Case("entropy_fp32_nchw", "entropy_percentile", f"{batch}x19x{out}", entropy(fp32, torch.contiguous_format)),
        Case("pseudo_cs_bf16_cl", "pseudo_label", f"{batch}x19x{out}", pseudo(19, out, bf16, cl, False)),
        Case("pseudo_voc_fp32_nchw", "pseudo_label", f"{batch}x21x{voc}^2",
             pseudo(21, (voc, voc), fp32, torch.contiguous_format, True)),
        Case("queue_256", "memory_queue_enqueue", "rows x 256", queue(fp32)),
        # U2PL under AMP: the keys arrive as gathered, in the representation's bf16, cast to the float32 rings
        Case("queue_256_bf16", "memory_queue_enqueue", "rows x 256 bf16", queue(bf16)),
    ]  # fmt: skip


def _record(case: Case, capability: int) -> list:
    """The case's launches as the launchers make them for target sm_<capability> (tiles may differ per target)."""
    from segadapt.kernels._launch import record_launches

    with record_launches(capability) as records:
        case.run()
    return list(records)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _config_label(config) -> str:
    if config is None:
        return "fixed"
    parts = [f"{key}={value}" for key, value in config.kwargs.items()]
    return ",".join(parts + [f"warps={config.num_warps}"])


def _variant(record) -> str:
    """The launch's compile-time switches (UPPER_CASE constexprs and C), e.g. "C=19,STORE_LSE=True"."""
    return ",".join(f"{key}={value}" for key, value in record.kwargs.items() if key.isupper() or key == "C")


def _specialise(kernel, args: tuple, kwargs: dict, config, target):
    """Signature, constexprs and attrs exactly as JITFunction.run derives them, for `target`'s backend."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    options = dict(kwargs)
    if config is not None:
        options.update(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    bound, specialization, extra = binder(*args, **options)
    parsed, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, extra)
    return parsed, signature, constexprs, attrs, bound


# Kernels with a runtime (not unrolled) loop: name -> launch kwargs -> trip count, or None when unrolled. Their
# instructions per pixel count the loop body once per trip (the body = the instructions a backward branch spans).
RUNTIME_LOOPS = {
    "_upsample_cross_entropy_bwd_gather_kernel": lambda kwargs: kwargs["C"],
    "_upsample_bce_bwd_gather_kernel": lambda kwargs: kwargs["TILE_H"] // kwargs["CHUNK_H"],
}


def _loop_bodies(sass: str) -> list[int]:
    """Instructions spanned by each backward branch of the SASS (one per runtime loop)."""
    bodies = []
    for address, target in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\s+0x([0-9a-f]+)", sass):
        if int(target, 16) < int(address, 16):
            bodies.append((int(address, 16) - int(target, 16)) // 16 + 1)
    return bodies


def _sass_stats(cubin: bytes) -> dict:
    """Resource usage and instruction census of a cubin, read with the cuobjdump bundled in the triton wheel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", handle.name], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", handle.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    instructions = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    opcodes = [op.split(".")[0] for op in instructions if not op.startswith("NOP")]
    atomics = sum(op in ("ATOM", "ATOMG", "RED", "REDG", "ATOMS") for op in opcodes)
    fences = sum(op in ("MEMBAR", "FENCE") for op in opcodes)
    local_ops = sum(op in ("LDL", "STL") for op in opcodes)
    stack = int(fields.get("STACK", 0))
    return {
        "registers": int(fields.get("REG", 0)),
        "stack_bytes": stack,
        "local_ops": local_ops,
        "spills": stack > 0 or local_ops > 0,
        "shared_bytes": int(fields.get("SHARED", 0)),
        "sass_instructions": len(opcodes),
        "atomics": atomics,
        "fences": fences,
        "fenced_atomics": atomics > 0 and fences > 0,
        "loop_bodies": _loop_bodies(sass),
    }


def _compile_one(job: tuple) -> dict:
    """Compile one (record, config, target) variant; never raises (the error lands in the row)."""
    case, index, config_index, capability = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    record = _record(_CASES[case], capability)[index]
    config = record.configs[config_index]
    target = GPUTarget("cuda", capability, 32)
    row = {"case": case, "kernel": record.kernel.__name__, "target": f"sm_{capability}", "variant": _variant(record),
           "config": _config_label(config), "work": record.work, "error": None}  # fmt: skip
    try:
        options, signature, constexprs, attrs, bound = _specialise(record.kernel, record.args, record.kwargs, config,
                                                                   target)  # fmt: skip
        compiled = triton.compile(ASTSource(record.kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)  # fmt: skip
        grid = record.grid({**record.kwargs, **(config.kwargs if config is not None else {})})
        programs = 1
        for extent in grid:
            programs *= int(extent)
        stats = _sass_stats(compiled.asm["cubin"])
        warps = compiled.metadata.num_warps
        trips = RUNTIME_LOOPS.get(record.kernel.__name__, lambda kwargs: None)(record.kwargs)
        bodies = stats.pop("loop_bodies")
        # Every backward branch is one runtime loop of `trips` trips; none at all means the compiler unrolled the loop
        # itself and the static count is already the dynamic one.
        dynamic = stats["sass_instructions"] + (sum(body * (trips - 1) for body in bodies) if trips else 0)
        per_pixel = dynamic * warps * programs / max(record.work, 1)
        row.update(stats, compiled=True, programs=programs, shared_bytes=max(stats["shared_bytes"],
                   compiled.metadata.shared), instructions_per_pixel=round(per_pixel, 2))  # fmt: skip
        if config is None:
            row["config"] = f"fixed,warps={warps}"
    except Exception as error:  # noqa: BLE001 - a compile error is a result row, reported and failed on below
        row.update(compiled=False, error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
    return row


_CASES: dict[str, Case] = {}


def _init_worker(size: str) -> None:
    _CASES.update({case.name: case for case in _cases(size)})


def _jobs(size: str, targets: tuple[int, ...], only: str | None) -> list[tuple]:
    """Every (case, launch, config, target) to compile, one per distinct specialisation (the first case keeps it)."""
    from triton.backends.compiler import GPUTarget

    _init_worker(size)
    jobs, seen = [], set()
    for name, case in _CASES.items():
        if only and only not in name:
            continue
        for capability in targets:
            for index, record in enumerate(_record(case, capability)):
                for config_index, config in enumerate(record.configs):
                    _, signature, constexprs, attrs, _ = _specialise(
                        record.kernel, record.args, record.kwargs, config, GPUTarget("cuda", capability, 32)
                    )
                    key = (record.kernel.__name__, str(signature), str(constexprs), str(attrs), capability,
                           None if config is None else (config.num_warps, config.num_stages))  # fmt: skip
                    if key not in seen:
                        seen.add(key)
                        jobs.append((name, index, config_index, capability))
    return jobs


def failures(rows: list[dict]) -> list[str]:
    """One line per variant that failed to compile, spills, or issues a fenced atomic."""
    problems = []
    for row in rows:
        where = f"{row['case']}/{row['kernel']}/{row['target']}/{row['config']}"
        if not row["compiled"]:
            problems.append(f"{where}: compile error: {row['error']}")
        elif row["spills"]:
            problems.append(f"{where}: spills ({row['stack_bytes']} B stack, {row['local_ops']} local ops)")
        elif row["fenced_atomics"]:
            problems.append(f"{where}: {row['atomics']} atomics next to {row['fences']} fences (acq_rel)")
    return problems


def run(size: str = "real", targets: tuple[int, ...] = TARGETS, out: Path | None = RESULT_PATH, jobs: int = 1,
        only: str | None = None) -> dict:  # fmt: skip
    """Compile every variant; write the JSON (atomically) when `out` is given; return the payload."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("bench aot: unset TRITON_INTERPRET (the interpreter's kernels cannot be compiled)")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from segadapt.bench.common import env_stamp
    from segadapt.bench.common import write_json

    start = time.perf_counter()
    # sm_90 first, and every kernel's first config before any kernel's second: a run cut short still holds the
    # target that matters most for every kernel.
    work = sorted(_jobs(size, targets, only), key=lambda job: (-job[3], job[2]))
    payload = {
        "bench": "aot",
        **env_stamp("cpu"),
        "cases": size,
        "targets": [f"sm_{capability}" for capability in targets],
        "shapes": {case.name: f"{case.op}: {case.shape}" for case in _cases(size)},
        "variants": len(work),
        "seconds": None,
        "failures": [],
        "results": [],
    }
    rows = payload["results"]
    if only and out is not None and out.is_file():
        # A partial run (--only) replaces its own cases' rows and keeps every other case's.
        previous = json.loads(out.read_text())
        rows += [row for row in previous.get("results", []) if only not in row["case"]]
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(size,))
            )
            results = pool.map(_compile_one, work)
        else:
            results = map(_compile_one, work)
        for row in results:
            rows.append({key: row.get(key) for key in ROW_KEYS})
            payload["failures"] = failures(rows)
            payload["seconds"] = round(time.perf_counter() - start, 1)
            if out is not None:
                write_json(out, payload)  # after every variant: a cut-off run keeps what it compiled
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench aot", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=("real", "small"), default="real", help="launch shapes (default real)")
    parser.add_argument("--targets", default="90,80", help="compute capabilities, comma-separated (default 90,80)")
    parser.add_argument("--out", type=Path, default=RESULT_PATH, help=f"result JSON (default {RESULT_PATH})")
    parser.add_argument("--jobs", type=int, default=1, help="compile processes (default 1)")
    parser.add_argument("--only", default=None, help="compile only cases whose name contains this")
    args = parser.parse_args(argv)
    try:
        targets = tuple(int(part) for part in args.targets.split(","))
    except ValueError:
        parser.error(f"--targets={args.targets!r}: expected comma-separated integers such as 90,80")
    payload = run(args.cases, targets, args.out, args.jobs, args.only)
    rows = payload["results"]
    header = f"{'case':22} {'kernel':36} {'target':6} {'config':28} {'reg':>4} {'spill':>5} {'atom':>4} {'fence':>5}"
    print(header + f" {'instr/px':>9}")
    for row in rows:
        if not row["compiled"]:
            print(f"{row['case']:22} {row['kernel']:36} {row['target']:6} {row['config']:28} COMPILE ERROR")
            continue
        print(f"{row['case']:22} {row['kernel']:36} {row['target']:6} {row['config']:28} {row['registers']:>4} "
              f"{row['stack_bytes']:>5} {row['atomics']:>4} {row['fences']:>5} "
              f"{row['instructions_per_pixel']:>9}")  # fmt: skip
    print(f"{len(rows)} variants in {payload['seconds']} s; wrote {args.out}")
    for line in payload["failures"]:
        print(f"FAIL {line}", file=sys.stderr)
    return 1 if payload["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
