"""The oldest triton the project claims (pyproject: triton>=3.6, what torch 2.11 ships with) runs the kernels too.

A second virtualenv, built once and cached (SEGADAPT_TRITON_FLOOR_VENV, default ~/.cache/segadapt/triton-<floor>),
holds only that triton; a .pth file adds this environment's site-packages behind it, so torch and segadapt are the
same and only triton differs. In it: the interpreter tests of two kernels and the AOT compile of every kernel at the
small shapes for sm_90 (same spill / fenced-atomic rules as `bench aot`).
"""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

FLOOR = "3.6.0"
VENV = Path(os.environ.get("SEGADAPT_TRITON_FLOOR_VENV", Path.home() / ".cache" / "segadapt" / f"triton-{FLOOR}"))
ROOT = Path(__file__).resolve().parents[2]


def _link_main_env(site_packages: Path) -> None:
    """(Re)write the .pth that puts this environment's site-packages behind the floor triton: rewritten on every use,
    since a cached venv built from another checkout's environment would import that checkout's segadapt."""
    paths = "; ".join(f"site.addsitedir({path!r})" for path in site.getsitepackages())
    (site_packages / "zz_segadapt_main_env.pth").write_text(f"import site; {paths}\n")


def _floor_python() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import triton; print(triton.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == FLOOR:
        _link_main_env(next((VENV / "lib").glob("python3*/site-packages")))
        return python
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
    site_packages = next((VENV / "lib").glob("python3*/site-packages"))
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site_packages),
               f"triton=={FLOOR}"]  # fmt: skip
    if subprocess.run(install, capture_output=True, text=True).returncode != 0:
        pytest.skip(f"triton=={FLOOR} could not be installed (no network and no pip cache)")
    _link_main_env(site_packages)
    assert subprocess.run(probe, capture_output=True, text=True).stdout.strip() == FLOOR
    return python


def _env(interpret: bool) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", "PYTEST_ADDOPTS")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


@pytest.mark.slow
def test_kernel_interpreter_tests_pass_under_the_oldest_triton():
    python = _floor_python()
    tests = ["tests/kernels/test_pseudo_label.py", "tests/kernels/test_upsample_bce.py", "-k", "fp32 or reference"]
    completed = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                               env=_env(True), capture_output=True, text=True)  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert " passed" in completed.stdout.splitlines()[-1]


@pytest.mark.slow
def test_aot_compiles_every_kernel_under_the_oldest_triton(tmp_path):
    python = _floor_python()
    out = tmp_path / "aot.json"
    command = [str(python), "-m", "segadapt.bench", "aot", "--cases", "small", "--targets", "90", "--out", str(out)]
    completed = subprocess.run(command, cwd=ROOT, env=_env(False), capture_output=True, text=True)
    payload = json.loads(out.read_text())
    assert payload["triton"] == FLOOR
    assert payload["failures"] == [], "\n".join(payload["failures"])
    assert completed.returncode == 0, completed.stderr[-3000:]
