"""Resume as a user of a long job meets it: exact for every method on both loaders, a metrics log and TensorBoard
events without repeated or torn records, no stale temp files, every method of a compare run resumed, a broken
`latest` pointer survived, and one run per run directory."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tiny_methods
import torch

from segadapt import checkpoint
from segadapt import config
from segadapt.data.synthshift import generate
from segadapt.methods import METHODS
from segadapt.train import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_synth")
    generate(root, seed=0, size=(64, 32), count=12)
    return root


def _tree(synth, run_dir, method: str = "sourceonly", loader: str = "torch", stop: int = 3, every: int = 2) -> dict:
    """A tiny config of `method` (the sections and models of test_distributed's every-method test): semi-supervised
    methods read half of the target train images as labelled and the rest as unlabelled."""
    split = {"dataset": "cityscapes", "root": str(synth / "cityscapes"), "batch_size": 2, "split_seed": 0, "flip": True}
    sections = {
        "adaptsegnet": {"name": "adaptsegnet", "lambda_adv_target1": 0.01, "lambda_adv_target2": 0.02},
        **tiny_methods.SECTIONS,
    }
    models = tiny_methods.MODELS
    return {
        "model": {"name": "toy", "width": 4, "channels_last": True, "compile": "off", **models.get(method, {})},
        "data": {
            "loader": loader,
            "num_workers": 0,
            "source": {"dataset": "gta5", "root": str(synth / "gta5"), "batch_size": 2, "flip": True},
            "target": {"dataset": "cityscapes", "root": str(synth / "cityscapes"), "batch_size": 2, "flip": True},
            "labeled": {**split, "fraction": 0.5},
            "unlabeled": {**split, "fraction": 0.5, "complement": True},
        },
        "method": sections.get(method, {"name": method}),
        "optim": {"lr": 0.01},
        "schedule": {"total_steps": 10, "stop_step": stop},
        "train": {
            "run_dir": str(run_dir),
            "device": "cpu",
            "precision": "fp32",
            "log_every": 1,
            "checkpoint_every": every,
            "progress": False,
            "tensorboard": False,
        },  # fmt: skip
    }


def _cfg(tree: dict) -> config.Config:
    return config.load_dict(tree, "test.toml", recipe="t")


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final(run_dir) -> dict:
    return checkpoint.load(checkpoint.latest(run_dir / "checkpoints"))


def _assert_same_tensors(a, b, where: str) -> None:
    """Bit-for-bit equality of two nested dicts/lists of tensors and numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs after resume"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------------------------- point 1
LOADERS = [
    "torch",
    pytest.param(
        "dali",
        marks=pytest.mark.skipif(
            not __import__("segadapt.data.batch", fromlist=["x"])._dali_loader_class(),
            reason="nvidia.dali does not import",
        ),
    ),
]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_is_bit_exact_for_every_method_and_loader(synth, tmp_path, method, loader):
    """An uninterrupted run 0 -> 3 and a run resumed from its step-2 checkpoint end with identical weights,
    optimizer states and step-3 losses (global RNG draws inside a step: dropout, CutMix, point/patch sampling)."""
    train(_cfg(_tree(synth, tmp_path / "a", method, loader)))
    step2 = tmp_path / "a" / "checkpoints" / "step_0000002.pt"
    train(_cfg(_tree(synth, tmp_path / "b", method, loader)), resume=str(step2))
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    assert a["step"] == b["step"] == 3
    _assert_same_tensors(a["models"], b["models"], f"{method}/{loader} models")
    _assert_same_tensors(a["optimizers"], b["optimizers"], f"{method}/{loader} optimizers")
    last_a = [r for r in _records(tmp_path / "a") if r["step"] == 3 and r["kind"] == "train"]
    last_b = [r for r in _records(tmp_path / "b") if r["step"] == 3 and r["kind"] == "train"]
    losses = [{k: v for k, v in r.items() if k.startswith("loss/")} for r in (last_a + last_b)]
    assert len(losses) == 2 and losses[0] == losses[1]


# ------------------------------------------------------------------------------------------------- point 2
def _kill_after_step_3(run_dir) -> None:
    """Turn a finished 0 -> 3 run (checkpoints at 2 and 3) into one SIGKILLed while logging step 4: its step-3
    records are in the log but its last checkpoint is step 2, a record is torn mid-line, and atomic writes of a
    checkpoint and of best.pt left their temp files."""
    directory = run_dir / "checkpoints"
    (directory / "step_0000003.pt").unlink()
    (directory / "latest").write_text("step_0000002.pt\n")
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 4, "loss/se')
    (directory / ".step_0000003.pt.k2j4x_9a.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (run_dir / ".best.pt.0a1b2c3d.tmp").write_bytes(b"PK\x03\x04 half a best.pt")
    (run_dir / "notes.tmp").write_text("a user's file, not ours")


def test_resume_after_a_kill_logs_every_step_once_and_cleans_temp_files(synth, tmp_path):
    run = tmp_path / "run"
    train(_cfg({**_tree(synth, run, stop=3), "train": {**_tree(synth, run)["train"], "tensorboard": True}}))
    _kill_after_step_3(run)
    tree = _tree(synth, run, stop=5)
    tree["train"]["tensorboard"] = True
    train(_cfg(tree), resume="auto")
    records = _records(run)  # every line parses: the torn one is gone, nothing was glued onto it
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    left = sorted(p.name for p in run.rglob("*.tmp"))
    assert left == ["notes.tmp"], left
    # TensorBoard's reader hides the interrupted run's step-3 event (purge_step), so every step shows once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload().Scalars("train/loss/seg")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    # The resumed log equals an uninterrupted run's, record for record (timings aside).
    train(_cfg(_tree(synth, tmp_path / "straight", stop=5)))
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in _records(tmp_path / "straight")]


def test_resuming_a_finished_run_does_not_log_a_second_evaluation(synth, tmp_path):
    tree = _tree(synth, tmp_path, stop=2)
    tree["data"]["val"] = {"dataset": "cityscapes", "root": str(synth / "cityscapes"), "split": "val"}
    tree["eval"] = {"input_size": [64, 32], "save_predictions": 0}
    train(_cfg(tree))
    train(_cfg(tree), resume="auto")
    kinds = [(r["kind"], r["step"]) for r in _records(tmp_path)]
    assert kinds == [("train", 1), ("train", 2), ("eval", 2)]


def test_a_fresh_run_in_a_used_directory_starts_a_new_log(synth, tmp_path):
    train(_cfg(_tree(synth, tmp_path, stop=2)))
    train(_cfg(_tree(synth, tmp_path, stop=2)))
    assert [r["step"] for r in _records(tmp_path)] == [1, 2]


# ------------------------------------------------------------------------------------------------- point 3
@pytest.mark.parametrize("damage", ["missing", "unreadable", "no pointer"])
def test_a_broken_latest_falls_back_to_the_newest_loadable_checkpoint(synth, tmp_path, damage, capsys):
    train(_cfg(_tree(synth, tmp_path, stop=4, every=2)))
    directory = tmp_path / "checkpoints"
    (directory / "step_0000003.pt").write_bytes(b"not a checkpoint")  # a step file that does not load either
    if damage == "missing":
        (directory / "step_0000004.pt").unlink()
    elif damage == "unreadable":
        (directory / "step_0000004.pt").write_bytes(b"PK\x03\x04 torn")
    else:
        (directory / "latest").unlink()
    summary = train(_cfg(_tree(synth, tmp_path, stop=5, every=2)), resume="auto")
    out = capsys.readouterr().out
    good, step = ("step_0000004.pt", 4) if damage == "no pointer" else ("step_0000002.pt", 2)
    assert f"resuming from {directory / good}, the newest checkpoint that loads" in out
    assert f"resumed from {directory / good} at step {step}" in out
    assert summary["steps"] == 5
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 4, 5]


def test_resume_without_any_loadable_checkpoint_names_the_files(synth, tmp_path):
    train(_cfg(_tree(synth, tmp_path, stop=2, every=2)))
    (tmp_path / "checkpoints" / "step_0000002.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"names step_0000002.pt, which could not be loaded"):
        train(_cfg(_tree(synth, tmp_path, stop=3)), resume="auto")


def _toml(tree: dict, prefix: str = "") -> str:
    """A config tree as TOML (scalars, strings and lists; tables last)."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    tables = [_toml(v, f"{prefix}{k}.") for k, v in tree.items() if isinstance(v, dict)]
    head = [f"[{prefix[:-1]}]"] if prefix else []
    return "\n".join(head + scalars + [""] + tables)


def test_resume_continues_every_method_of_a_compare_run(synth, tmp_path, capsys):
    from segadapt.cli import main

    tree = _tree(synth, tmp_path / "{method}", "adaptsegnet", stop=2, every=2)
    tree["train"]["compare_methods"] = ["sourceonly"]
    recipe = tmp_path / "compare.toml"
    recipe.write_text(_toml(tree))
    assert main(["train", str(recipe)]) == 0
    # Killed while the baseline trained: its step-2 checkpoint exists, the main method had finished.
    assert main(["train", str(recipe), "--set", "schedule.stop_step=3", "--resume"]) == 0
    out = capsys.readouterr().out
    for method in ("adaptsegnet", "sourceonly"):
        assert f"resumed from {tmp_path / method / 'checkpoints' / 'step_0000002.pt'} at step 2" in out, method
        assert [r["step"] for r in _records(tmp_path / method) if r["kind"] == "train"] == [1, 2, 3]


def test_resume_of_a_compare_run_starts_a_baseline_that_had_not_begun(synth, tmp_path, capsys):
    from segadapt.cli import main

    tree = _tree(synth, tmp_path / "{method}", "adaptsegnet", stop=2, every=2)
    recipe = tmp_path / "main.toml"
    recipe.write_text(_toml(tree))
    assert main(["train", str(recipe)]) == 0  # the job was killed before the baseline began
    tree["train"]["compare_methods"] = ["sourceonly"]
    recipe.write_text(_toml(tree))
    assert main(["train", str(recipe), "--resume"]) == 0
    assert "sourceonly starts at step 0" in capsys.readouterr().out
    assert [r["step"] for r in _records(tmp_path / "sourceonly")] == [1, 2]


# ------------------------------------------------------------------------------------------------- point 4
HOLDER = textwrap.dedent("""
    import os, sys, time
    from segadapt.checkpoint import RunDirLock
    lock = RunDirLock(sys.argv[1])
    child = os.fork()  # like a DataLoader worker: it must not keep the lock when its parent dies
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    time.sleep(120)
""")


def _hold(run_dir) -> tuple[subprocess.Popen, int]:
    """A process holding `run_dir`'s lock with a forked child; returns it and the child's PID once locked."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    return holder, int(holder.stdout.readline())


def test_a_second_run_on_a_locked_directory_stops_at_once_naming_the_holder(synth, tmp_path):
    holder, child = _hold(tmp_path)
    try:
        with pytest.raises(ValueError, match=rf"run directory {tmp_path} is in use by process {holder.pid}"):
            train(_cfg(_tree(synth, tmp_path, stop=2)))
        assert not (tmp_path / "config.json").exists(), "the second run wrote into the locked directory"
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, 9)


def test_the_lock_of_a_killed_run_does_not_block_its_resume(synth, tmp_path):
    train(_cfg(_tree(synth, tmp_path, stop=2)))
    holder, child = _hold(tmp_path)
    holder.kill()  # SIGKILL: the lock file stays, with the dead PID in it; its forked child lives on
    holder.wait()
    try:
        summary = train(_cfg(_tree(synth, tmp_path, stop=3)), resume="auto")
    finally:
        os.kill(child, 9)
    assert summary["steps"] == 3
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_two_runs_in_one_directory_through_the_cli_one_line_error(synth, tmp_path, capsys):
    from segadapt.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(_tree(synth, tmp_path / "run", stop=2)))
    holder, child = _hold(tmp_path / "run")
    try:
        assert main(["train", str(recipe)]) == 2
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, 9)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"segadapt: error: run directory {tmp_path / 'run'} is in use by process {holder.pid} "
        f"(it holds {tmp_path / 'run' / '.lock'}); wait for that run to end or set another train.run_dir"
    ]
