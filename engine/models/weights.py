"""Load pretrained or saved weights into a segmenter, accounting for every tensor.

Formats, detected from the file's keys (`LoadReport.format`):

- "snapshot": plain DeeplabMulti keys (an official AdaptSegNet / AdvSemiSeg snapshot, or any plain state_dict of the
  model): loaded 1:1.
- "deeplab_init": keys prefixed `Scale.` (`DeepLab_resnet_pretrained_init-f81d91e8.pth`, ImageNet + COCO): the
  first key component is dropped and `Scale.layer5.*` (its classifier, for other classes) is skipped, as the official
  `train_gta2cityscapes_multi.py` does; our heads keep their init.
- "torchvision": has `fc.weight` (torchvision's ResNet ImageNet state_dict, whose key names equal ours, downsample
  included): `fc.*` is skipped; our heads keep their init.
- "segadapt": a dict with `models` -> {`model`: state_dict} (engine checkpoints): loaded 1:1.

A `module.` prefix on every key (DataParallel snapshots) is removed. `num_batches_tracked` may be absent (files
written before torch 0.4.1 and the Caffe-converted init have none): the model keeps its own counter, as
`BatchNorm._load_from_state_dict` does for such files. Anything else missing, unexpected, or of another shape raises
ValueError naming the file and the keys (with strict=False it is reported instead). Files are always read with
`torch.load(..., weights_only=True)`: a pickle that would run code is refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torch import nn

__all__ = ["LoadReport", "detect_format", "load_pretrained"]

_HEADS = ("layer5.", "layer6.")
_TORCHVISION_NOTE = (
    "torchvision's Bottleneck strides its 3x3 conv2, DeepLab-v2's strides the 1x1 conv1: the weights load the same "
    "(identical shapes) but the network computes differently from the one they were trained in"
)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_pretrained` did. Keys are model keys unless said otherwise.

    Attributes:
        path: the file read.
        format: "snapshot", "deeplab_init", "torchvision" or "segadapt".
        loaded: model keys given a value from the file.
        skipped: file keys deliberately not used (the init's classifier, torchvision's fc).
        kept: model keys the format does not provide, left as initialised (heads, num_batches_tracked).
        missing, unexpected, mismatched: problems tolerated because strict was False (empty otherwise);
            mismatched entries read "key: file shape vs model shape".
        notes: remarks on the format.
    """

    path: str
    format: str
    loaded: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"{self.path} ({self.format}): loaded {len(self.loaded)}, skipped {len(self.skipped)}"]
        parts.append(f"kept initialised {len(self.kept)}")
        for name in ("missing", "unexpected", "mismatched"):
            if getattr(self, name):
                parts.append(f"{name} {len(getattr(self, name))}")
        return ", ".join(parts) + "".join(f"; note: {note}" for note in self.notes)


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _read(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError: all mean "not a weights file"
        raise ValueError(
            f"{path}: not a weights-only torch file (only tensors and containers are unpickled, never code): "
            f"{_reason(error)}"
        ) from error


def _reason(error: Exception) -> str:
    """The useful line of torch's weights-only error (its full text advises weights_only=False, which we never do)."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    line = match.group(1) if match else (text.strip().splitlines() or [type(error).__name__])[0]
    return line.split(" Please use")[0]


def _state_dict_of(obj: object, path: str) -> tuple[str, dict[str, Tensor]]:
    """Unwrap a segadapt checkpoint, check the mapping holds only tensors, drop a DataParallel `module.` prefix."""
    fmt = ""
    if isinstance(obj, Mapping) and "models" in obj:
        models = obj["models"]
        if not isinstance(models, Mapping) or "model" not in models:
            raise ValueError(f"{path}: segadapt checkpoint key 'models' must be a dict with a 'model' state_dict")
        obj, fmt = models["model"], "segadapt"
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a non-empty state_dict (dict of str -> Tensor), got {type(obj).__name__}")
    bad = [str(key) for key, value in obj.items() if not isinstance(key, str) or not isinstance(value, Tensor)]
    if bad:
        raise ValueError(f"{path}: state_dict entries must be str -> Tensor; offending keys: {_listing(bad)}")
    state = dict(obj)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return fmt, state


def detect_format(state: Mapping[str, Tensor]) -> str:
    """Format of a plain state_dict: "deeplab_init", "torchvision" or "snapshot" (see the module docstring)."""
    if any(key.startswith("Scale.") for key in state):
        return "deeplab_init"
    if "fc.weight" in state:
        return "torchvision"
    return "snapshot"


def _plan(fmt: str, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str], tuple[str, ...], tuple[str, ...]]:
    """Map file keys to model keys. Returns (mapping, skipped file keys, optional model prefixes, notes)."""
    if fmt == "deeplab_init":
        # Official: new_params['.'.join(i_parts[1:])] = saved[i] unless i_parts[1] == 'layer5'.
        skipped = [key for key in state if key.split(".")[1:2] == ["layer5"]]
        mapping = {key.split(".", 1)[-1]: value for key, value in state.items() if key not in skipped}
        return mapping, skipped, _HEADS, ()
    if fmt == "torchvision":
        skipped = [key for key in state if key.startswith("fc.")]
        mapping = {key: value for key, value in state.items() if key not in skipped}
        return mapping, skipped, _HEADS, (_TORCHVISION_NOTE,)
    return state, [], (), ()


def _optional(key: str, prefixes: tuple[str, ...]) -> bool:
    return key.endswith("num_batches_tracked") or key.startswith(prefixes)


def load_pretrained(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load `path` into `model` in place (any format of the module docstring) and say what was done.

    Args:
        model: the segmenter (DeepLabV2, ToySegmenter, ...).
        path: the weights file.
        strict: raise ValueError on any missing, unexpected or mis-shaped tensor; when False load what fits and
            report the rest.

    Returns:
        A LoadReport.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a weights-only torch file, not a state_dict, or (strict) does not fit the model.
    """
    path = str(path)
    wrapped_format, state = _state_dict_of(_read(path), path)
    fmt = wrapped_format or detect_format(state)
    mapping, skipped, optional_prefixes, notes = _plan(fmt, state)
    own = model.state_dict()
    missing = [key for key in own if key not in mapping and not _optional(key, optional_prefixes)]
    kept = [key for key in own if key not in mapping and _optional(key, optional_prefixes)]
    unexpected = [key for key in mapping if key not in own]
    mismatched = [
        f"{key}: {tuple(mapping[key].shape)} vs {tuple(own[key].shape)}"
        for key in mapping
        if key in own and mapping[key].shape != own[key].shape
    ]
    if strict and (missing or unexpected or mismatched):
        problems = [
            f"{name} ({len(keys)}): {_listing(keys)}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ValueError(f"{path}: {fmt} weights do not fit the model; " + "; ".join(problems))
    fitting = {key: value for key, value in mapping.items() if key in own and value.shape == own[key].shape}
    model.load_state_dict(fitting, strict=False)
    return LoadReport(
        path=path,
        format=fmt,
        loaded=tuple(fitting),
        skipped=tuple(skipped),
        kept=tuple(kept),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        notes=notes,
    )
