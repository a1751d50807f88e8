"""The data layer: published dataset layouts, label protocols, the synthshift generator and the input pipelines.

Entry points: `Streams` (training batches on the device), `eval_samples` (one pass over a val split),
`list_samples`/`read_image`/`read_label`/`check_tree` (datasets), `generate`/`ensure_synthshift` (synthshift).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from segadapt.config import Synthshift
from segadapt.data.batch import Streams
from segadapt.data.batch import normalize
from segadapt.data.batch import to_batch
from segadapt.data.datasets import Sample
from segadapt.data.datasets import check_tree
from segadapt.data.datasets import format_report
from segadapt.data.datasets import layout_help
from segadapt.data.datasets import list_samples
from segadapt.data.datasets import read_image
from segadapt.data.datasets import read_label
from segadapt.data.labels import class_names
from segadapt.data.labels import colorize
from segadapt.data.labels import label_lut
from segadapt.data.labels import palette
from segadapt.data.synthshift import MANIFEST
from segadapt.data.synthshift import generate
from segadapt.data.synthshift import manifest
from segadapt.data.torch_loader import StreamLoader
from segadapt.data.torch_loader import eval_samples
from segadapt.data.torch_loader import transform

__all__ = [
    "Sample", "StreamLoader", "Streams", "check_tree", "class_names", "colorize", "ensure_synthshift",
    "eval_samples", "format_report", "generate", "label_lut", "layout_help", "list_samples", "normalize",
    "palette", "read_image", "read_label", "to_batch", "transform",
]  # fmt: skip

SYNTHSHIFT_FORMATS = ("gta5", "cityscapes")


def _complete(out: Path, want: dict) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text()) == want
    except (OSError, ValueError):
        return False


def ensure_synthshift(cfg: Synthshift) -> Path:
    """Generate synthshift into `cfg.out` unless a complete set with the same parameters is already there.

    The set is written to a temporary sibling directory and renamed into place, so a crash never leaves a half
    set; a set with other parameters is replaced the same way. A non-empty `out` that is not a synthshift set is
    left alone (ValueError). Several processes may call this at once: the first rename wins.
    """
    out = Path(cfg.out)
    want = manifest(cfg.seed, tuple(cfg.size), cfg.count, SYNTHSHIFT_FORMATS)
    if _complete(out, want):
        return out
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise ValueError(f"data.synthshift.out = {out} exists and is not a synthshift set; choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    generate(scratch, seed=cfg.seed, size=tuple(cfg.size), count=cfg.count, formats=SYNTHSHIFT_FORMATS)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    try:
        scratch.rename(out)
    except OSError:
        if not _complete(out, want):  # another process's rename should have won; anything else is a real error
            raise
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out
