"""Atomic checkpoint files: write to a temp file in the same directory, fsync, then rename over the target.

A process killed at any moment leaves either the previous file or the new one, never a torn one. Loading always
uses `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
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
