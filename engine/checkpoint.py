"""Atomic checkpoint files: write to a temp file in the same directory, fsync, then rename over the target.

A process killed at any moment leaves either the previous file or the new one, never a torn one (and at worst a
`.NAME.XXXXXXXX.tmp` file, which `remove_stale_temps` deletes when the next run takes the directory). Loading always
uses `weights_only=True`, so a checkpoint cannot run code. `lock_run_dir` gives one process a run directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | os.PathLike, writer) -> Path:
    """Call `writer(file)` on a temp file next to `path`, fsync it, and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full or read-only disk: name the file, not torch's writer (errno has no filename)
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """torch.save `payload` atomically."""
    return atomic_write_bytes(path, lambda handle: torch.save(payload, handle))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a clear error names the file when it is missing or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        from segadapt.models.weights import _reason  # torch's one useful line, without its weights_only=False advice

        raise ValueError(
            f"checkpoint {path} could not be loaded safely (weights_only=True, never code): {_reason(error)}"
        ) from None


TRAINING_KEYS = ("models", "optimizers", "scaler", "streams", "rng", "step", "best", "config")
"""What a training checkpoint holds; `save_checkpoint` in train.py writes them."""
ARCHITECTURE_KEYS = (("method", "name"), ("model", "name"), ("model", "backbone"), ("model", "width"),
                     ("model", "num_classes"), ("model", "multi_level"))  # fmt: skip
"""Config entries a resumed run must share with the checkpoint (its tensors and optimizer states have their shapes)."""


def check_resumable(state: Any, path: str | os.PathLike, config: dict[str, Any]) -> None:
    """Raise a one-line ValueError naming `path` when `state` cannot continue the run of `config` (a `to_dict`
    tree): a bare state_dict or an official snapshot, or a checkpoint of another method or architecture."""
    missing = [key for key in TRAINING_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(
            f"--resume: {path} is not a segadapt training checkpoint (it has no {', '.join(missing)}); weights alone "
            "(a state_dict, an official snapshot, best.pt's model) start a new run as model.pretrained"
        )
    theirs = state["config"] if isinstance(state["config"], dict) else {}
    for section, key in ARCHITECTURE_KEYS:
        ours = config.get(section, {}).get(key)
        stored = theirs.get(section, {}).get(key) if isinstance(theirs.get(section), dict) else None
        if stored != ours:
            raise ValueError(
                f"--resume: {path} was trained with {section}.{key} = {stored!r}, this run has {ours!r}; resume it "
                "with the config it was trained with, or start a new run directory"
            )


def latest(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint recorded in `directory/latest` (a pointer file written atomically after each save)."""
    pointer = Path(directory) / "latest"
    if not pointer.is_file():
        return None
    target = Path(directory) / pointer.read_text().strip()
    return target if target.is_file() else None


def _step_files(directory: Path) -> list[Path]:
    """`step_*.pt` files of `directory`, newest step first."""
    found = []
    for path in directory.glob("step_*.pt"):
        digits = path.stem[len("step_") :]
        if digits.isdigit():
            found.append((int(digits), path))
    return [path for _, path in sorted(found, reverse=True)]


def load_latest(directory: str | os.PathLike, map_location: str | Any = "cpu",
                log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]] | None:  # fmt: skip
    """The checkpoint `directory/latest` names and its contents; when the pointer is missing, names a missing file
    or a file that does not load, the newest loadable `step_*.pt` instead, saying so through `log`.

    Returns None when the directory holds no checkpoint at all; raises ValueError naming every file tried when
    none of them loads.
    """
    directory = Path(directory)
    pointer = directory / "latest"
    named, problem = None, f"{pointer} does not exist"
    if pointer.is_file():
        named = directory / pointer.read_text(errors="replace").strip()
        try:
            return named, load(named, map_location)
        except ValueError as error:
            problem = f"{pointer} names {named.name}, which " + (
                "does not exist" if not named.is_file() else f"could not be loaded ({error})"
            )
    tried = []
    for path in _step_files(directory):
        if named is not None and path == named:
            continue
        try:
            state = load(path, map_location)
        except ValueError as error:
            tried.append(f"{path.name}: {error}")
            continue
        log(f"resume: {problem}; resuming from {path}, the newest checkpoint that loads")
        return path, state
    if named is None and not tried:
        return None
    raise ValueError(
        f"resume: {problem}, and no other checkpoint in {directory} loads" + "".join(f"; {entry}" for entry in tried)
    )


# -------------------------------------------------------------------------------------------- run directories
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what atomic_write_bytes's mkstemp names its temp files


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files an interrupted atomic write left anywhere under `run_dir`; returns them.

    Call it only while holding the directory's lock (`lock_run_dir`): a live writer's temp file looks the same.
    """
    removed = []
    for path in Path(run_dir).rglob(".*.tmp"):
        if _TEMP.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunDirBusy(ValueError):
    """Another live process holds the run directory's lock."""


LOCK_NAME = ".lock"
_HELD_LOCKS: set[int] = set()


def _close_locks_in_child() -> None:
    # A forked child (DataLoader worker) would otherwise share the lock: an flock belongs to the open file, so a
    # worker orphaned by a killed trainer would keep the directory locked against the resume.
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


class RunDirLock:
    """An exclusive `fcntl.flock` on `run_dir/.lock`, which holds the owner's PID. The kernel drops it when the owner
    exits or is killed, so a stale file never blocks a resume; `release()` closes it (the file stays)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"run directory {self.run_dir} is in use by process {holder} (it holds {self.path}); wait for that "
                "run to end or set another train.run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd
        _HELD_LOCKS.add(fd)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            _HELD_LOCKS.discard(fd)
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
