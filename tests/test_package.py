"""The package as a user installs it: sdist -> wheel -> a fresh virtualenv outside the checkout -> the CLI.

The wheel is built from the sdist (so what the sdist forgets, the wheel lacks), installed with `--no-deps` into a new
virtualenv whose only view of the project's dependencies (torch, numpy, onnx, ...) is this environment's
site-packages appended after its own: "torch from the same local build", and nothing of the checkout on the path.
Then `segadapt recipes`, two steps of `segadapt train demo`, `segadapt evaluate` and `segadapt export` run there from
another directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), the wheel built from the sdist without build isolation (no network needed)."""
    pytest.importorskip("build", reason="the dev extra's `build` builds the sdist and wheel")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], cwd=out)
    (sdist,) = out.glob("segadapt-*.tar.gz")
    (wheel,) = out.glob("segadapt-*.whl")
    return sdist, wheel


def test_wheel_installs_one_namespace_with_recipes(dists):
    _, wheel = dists
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"segadapt"}, sorted(top)
    recipes = {Path(n).name for n in names if n.startswith("segadapt/recipes/")}
    assert {p.name for p in (ROOT / "recipes").glob("*.toml")} == recipes
    for module in ("segadapt/__main__.py", "segadapt/kernels/pseudo_label.py", "segadapt/bench/__main__.py"):
        assert module in names
    assert not any("/results/" in n for n in names), "bench results are not package data"
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "segadapt = segadapt.cli:main" in entry


def test_sdist_carries_the_native_runner_and_recipes(dists):
    sdist, _ = dists
    names = {Path(*Path(n).parts[1:]).as_posix() for n in tarfile.open(sdist).getnames()}
    for path in ("CMakeLists.txt", "deploy/CMakeLists.txt", "deploy/main.cpp", "recipes/demo.toml", "pyproject.toml"):
        assert path in names, path


def test_installed_wheel_runs_the_cli_outside_the_checkout(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip()
    )
    # The project's dependencies from this environment, after the new venv's own site-packages; a .pth line only
    # appends the directory, so this environment's editable-install hook (another .pth) is not run there.
    (site / "zz_segadapt_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--ignore-installed",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    work = tmp_path / "user"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    segadapt = str(venv / "bin" / "segadapt")

    where = _run([str(python), "-c", "import segadapt; print(segadapt.__file__)"], work, env).stdout
    assert Path(where.strip()).is_relative_to(site), where
    for name in ("engine", "kernels", "bench"):
        assert not (site / name).exists(), f"{name} installed at top level"
    assert "segadapt 0." in _run([segadapt, "--version"], work, env).stdout

    listing = _run([segadapt, "recipes"], work, env).stdout
    assert str(site / "segadapt" / "recipes") in listing
    assert "demo " in listing and "AdaptSegNet multi-level vs source only" in listing
    shown = _run([str(python), "-m", "segadapt", "recipes", "show", "demo"], work, env).stdout
    assert shown == (ROOT / "recipes" / "demo.toml").read_text()
    unknown = subprocess.run([segadapt, "train", "dmeo"], cwd=work, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "did you mean 'demo'" in unknown.stderr and "lsd_demo" in unknown.stderr

    quick = [
        "--set", "schedule.total_steps=2", "--set", "schedule.stop_step=2", "--set", "train.eval_every=2",
        "--set", "train.checkpoint_every=2", "--set", "train.compare_methods=[]", "--set", "train.progress=false",
        "--set", 'start.recipe=""',  # the demo's pretrained start would train 500 steps first
        "--set", "train.tensorboard=false", "--set", "data.synthshift.count=12", "--set", "eval.max_images=2",
    ]  # fmt: skip
    _run([segadapt, "train", "demo", *quick], work, env)
    best = work / "runs" / "demo" / "adaptsegnet" / "best.pt"
    assert best.is_file(), sorted(str(p) for p in (work / "runs").rglob("*.pt"))
    evaluated = _run([segadapt, "evaluate", "demo", "--checkpoint", str(best), *quick[-2:]], work, env).stdout
    assert "mIoU" in evaluated
    pytest.importorskip("onnxruntime", reason="the export extra's onnxruntime checks the exported graph")
    exported = _run([segadapt, "export", str(best), "--onnx", "m.onnx", "--num-images", "1"], work, env).stdout
    assert (work / "m.onnx").stat().st_size > 0 and "onnxruntime" in exported
