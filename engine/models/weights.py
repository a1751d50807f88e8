"""Load pretrained or saved weights into a segmenter, accounting for every tensor.

Formats, detected from the file's keys (`LoadReport.format`):

- "snapshot": plain DeeplabMulti keys (an official AdaptSegNet snapshot, or any plain state_dict of the model):
  loaded 1:1.
- "res_deeplab": the official AdvSemiSeg `Res_Deeplab` layout (model/deeplab.py): plain keys whose only classifier is
  `layer5.*`, read into a single-level model, whose one classifier is `layer6`: `layer5.*` -> `layer6.*`, every
  backbone tensor strict. A classifier tensor of another shape (the `resnet101COCO-41f33a49.pth` init for another
  class count) is skipped and the head keeps its init, as train.py copies only the tensors whose name and size match.
  Detected when the file has `layer5.*` and no `layer6.*` keys and the model has `layer6` but no `layer5`.
- "deeplab_init": keys prefixed `Scale.` (`DeepLab_resnet_pretrained_init-f81d91e8.pth`, ImageNet + COCO): the
  first key component is dropped and `Scale.layer5.*` (its classifier, for other classes) is skipped, as the official
  `train_gta2cityscapes_multi.py` does; our heads keep their init.
- "torchvision": has `fc.weight` (torchvision's ResNet ImageNet state_dict, whose key names equal ours, downsample
  included): `fc.*` is skipped; our heads keep their init.
- "torchvision_vgg": `features.N.*` and `classifier.N.*` keys (torchvision `vgg16` / `vgg16_bn` ImageNet), into a
  model that holds engine.models.vgg.VGG16 as `backbone`: `features.N.*` -> `backbone.features.N.*` (every one must
  fit); `classifier.0` / `classifier.3` -> the model's convs named `fc6` / `fc7` reshaped to their shape
  ((4096, 25088) -> (4096, 512, 7, 7), (4096, 4096) -> (4096, 4096, 1, 1)) when the model has them with that many
  elements, else skipped with a note; `classifier.6` (the ImageNet classifier) is skipped. Every other model tensor
  keeps its init. A 3-channel `features.0.weight` loads into a grey (1-channel) first conv summed over its input
  channels (a grey image repeated in 3 channels gives the same response), with a note.
- "segadapt": a dict with `models` -> {`model`: state_dict} (engine checkpoints), possibly of another stage or method
  with another head. Rule: every *backbone* tensor of the model (any tensor outside the modules that hold
  `model.head_parameters()`; all tensors when the model has no such method) must come from the file with its shape,
  and every file tensor inside one of the model's backbone modules must exist in the model, exactly as strict
  loading; *head* tensors load when the file has them with the same shape and otherwise keep their init (`kept`);
  file tensors of modules the model does not have, or head tensors of another shape, are listed in `skipped`. So a
  checkpoint of the same architecture with another class count or head loads its backbone and reports the head,
  while a backbone mismatch still raises. The checkpoint's model name and step are noted.

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
        format: "snapshot", "res_deeplab", "deeplab_init", "torchvision", "torchvision_vgg" or "segadapt".
        loaded: model keys given a value from the file.
        skipped: file keys deliberately not used (the init's classifier, torchvision's fc, another stage's head).
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


def _checkpoint_note(obj: Mapping) -> str:
    """'segadapt checkpoint of model M, method X, step S' from a checkpoint's `config` and `step` entries."""
    config = obj.get("config")
    model = config.get("model", {}) if isinstance(config, Mapping) else {}
    method = config.get("method", {}) if isinstance(config, Mapping) else {}
    name = model.get("name", "?") if isinstance(model, Mapping) else "?"
    method_name = method.get("name", "?") if isinstance(method, Mapping) else "?"
    return f"segadapt checkpoint of model {name!r}, method {method_name!r}, step {obj.get('step', '?')}"


def _state_dict_of(obj: object, path: str) -> tuple[str, dict[str, Tensor], tuple[str, ...]]:
    """Unwrap a segadapt checkpoint, check the mapping holds only tensors, drop a DataParallel `module.` prefix.

    Returns (format or "" when the keys decide it, state_dict, notes)."""
    fmt, notes = "", ()
    if isinstance(obj, Mapping) and "models" in obj:
        models = obj["models"]
        if not isinstance(models, Mapping) or "model" not in models:
            raise ValueError(f"{path}: segadapt checkpoint key 'models' must be a dict with a 'model' state_dict")
        notes = (_checkpoint_note(obj),)
        obj, fmt = models["model"], "segadapt"
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a non-empty state_dict (dict of str -> Tensor), got {type(obj).__name__}")
    bad = [str(key) for key, value in obj.items() if not isinstance(key, str) or not isinstance(value, Tensor)]
    if bad:
        raise ValueError(f"{path}: state_dict entries must be str -> Tensor; offending keys: {_listing(bad)}")
    state = dict(obj)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return fmt, state, notes


def detect_format(state: Mapping[str, Tensor]) -> str:
    """Format of a plain state_dict: "deeplab_init", "torchvision", "torchvision_vgg" or "snapshot" (see above)."""
    if any(key.startswith("Scale.") for key in state):
        return "deeplab_init"
    if "fc.weight" in state:
        return "torchvision"
    if all(key.startswith(("features.", "classifier.")) for key in state) and any(
        key.startswith("classifier.") for key in state
    ):
        return "torchvision_vgg"
    return "snapshot"


def _module_named(own: Mapping[str, Tensor], name: str) -> str | None:
    """The model key `<...>name.weight` of the one module called `name` (fc6 / fc7), or None."""
    keys = [key for key in own if key.split(".")[-2:] == [name, "weight"]]
    return keys[0] if len(keys) == 1 else None


def _plan_torchvision_vgg(
    state: dict[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """torchvision VGG-16 (-BN) keys -> model keys (module docstring). Returns (mapping, skipped file keys, notes)."""
    mapping: dict[str, Tensor] = {}
    skipped: list[str] = []
    notes: list[str] = []
    for key, value in state.items():
        if key.startswith("features."):
            target = f"backbone.{key}"
            if key == "features.0.weight" and target in own and own[target].shape[1] == 1 and value.shape[1] == 3:
                value = value.sum(dim=1, keepdim=True)
                notes.append("features.0.weight summed over its 3 input channels for the grey first conv")
            mapping[target] = value
    for index, name in (("0", "fc6"), ("3", "fc7")):
        for kind in ("weight", "bias"):
            key = f"classifier.{index}.{kind}"
            if key not in state:
                continue
            weight_key = _module_named(own, name)
            target = weight_key[: -len("weight")] + kind if weight_key else None
            if target in own and own[target].numel() == state[key].numel():
                mapping[target] = state[key].reshape(own[target].shape)
            else:
                skipped.append(key)
                if kind == "weight":
                    shape = tuple(own[target].shape) if target in own else None
                    notes.append(f"{key} {tuple(state[key].shape)} not loaded: the model's {name} is {shape}")
    skipped += [key for key in state if key.startswith("classifier.") and key.split(".")[1] not in ("0", "3")]
    return mapping, skipped, notes


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module prefixes (`head.0.`) of the parameters in `model.head_parameters()`; () without that method."""
    if not hasattr(model, "head_parameters"):
        return ()
    heads = {id(p) for p in model.head_parameters()}
    return tuple(sorted({name.rsplit(".", 1)[0] + "." for name, p in model.named_parameters() if id(p) in heads}))


def _plan_segadapt(
    state: dict[str, Tensor], own: Mapping[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], list[str], tuple[str, ...]]:
    """The segadapt rule of the module docstring. Returns (mapping, skipped file keys, optional model prefixes)."""
    heads = _head_prefixes(model)
    backbone_modules = {key.rsplit(".", 1)[0] for key in own if not key.startswith(heads)}
    mapping: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        if key in own and key.startswith(heads) and value.shape != own[key].shape:
            skipped.append(key)  # another class count: the head keeps its init
        elif key in own or key.rsplit(".", 1)[0] in backbone_modules:
            mapping[key] = value  # backbone: strict (a missing key or another shape is an error)
        else:
            skipped.append(key)  # a module the model does not have (another stage's head)
    return mapping, skipped, heads


def _plan(
    fmt: str, state: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], list[str], tuple[str, ...], tuple[str, ...]]:
    """Map file keys to model keys. Returns (mapping, skipped file keys, optional model prefixes, notes)."""
    own = model.state_dict()
    if fmt == "torchvision_vgg":
        mapping, skipped, notes = _plan_torchvision_vgg(state, own)
        optional = tuple(
            sorted({key.rsplit(".", 1)[0] + "." for key in own if not key.startswith("backbone.features.")})
        )
        return mapping, skipped, optional, tuple(notes)
    if fmt == "segadapt":
        mapping, skipped, heads = _plan_segadapt(state, own, model)
        return mapping, skipped, heads, ()
    if fmt == "deeplab_init":
        # Official: new_params['.'.join(i_parts[1:])] = saved[i] unless i_parts[1] == 'layer5'.
        skipped = [key for key in state if key.split(".")[1:2] == ["layer5"]]
        mapping = {key.split(".", 1)[-1]: value for key, value in state.items() if key not in skipped}
        return mapping, skipped, _HEADS, ()
    if fmt == "res_deeplab":
        renamed = {("layer6." + key[len("layer5.") :] if key.startswith("layer5.") else key): key for key in state}
        skipped = [old for new, old in renamed.items() if new.startswith("layer6.") and new in own
                   and state[old].shape != own[new].shape]  # fmt: skip
        mapping = {new: state[old] for new, old in renamed.items() if old not in skipped}
        note = "official AdvSemiSeg Res_Deeplab layout: its only classifier layer5 read as layer6"
        return mapping, skipped, ("layer6.",), (note,)
    if fmt == "torchvision":
        skipped = [key for key in state if key.startswith("fc.")]
        mapping = {key: value for key, value in state.items() if key not in skipped}
        return mapping, skipped, _HEADS, (_TORCHVISION_NOTE,)
    return state, [], (), ()


def _single_classifier_layout(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> bool:
    """The official AdvSemiSeg Res_Deeplab file (classifier `layer5`) for a single-level model (classifier `layer6`)."""

    def has(keys, prefix):
        return any(key.startswith(prefix) for key in keys)

    return has(state, "layer5.") and not has(state, "layer6.") and has(own, "layer6.") and not has(own, "layer5.")


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
    wrapped_format, state, checkpoint_notes = _state_dict_of(_read(path), path)
    fmt = wrapped_format or detect_format(state)
    if fmt == "snapshot" and _single_classifier_layout(state, model.state_dict()):
        fmt = "res_deeplab"
    mapping, skipped, optional_prefixes, notes = _plan(fmt, state, model)
    notes = (*checkpoint_notes, *notes)
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
