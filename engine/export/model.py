"""The deployable graph and the file it comes from: `ExportWrapper` (main head, one output kind), loading a segadapt
checkpoint or an official snapshot with its config, the export size, and the input contract as metadata strings.
Also the names every stage shares: `ExportError`, `INPUT_NAME`, `OUTPUT_KINDS`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt import checkpoint
from segadapt import config as config_module
from segadapt.config import Config

OUTPUT_KINDS = ("label", "upsampled", "logits")
DEFAULT_RECIPE = "adaptseg_gta2cs"
META_FORMAT = "segadapt-engine-meta-1"
INPUT_NAME = "image"


class ExportError(ValueError):
    """A stage of the export failed; the message starts with the stage's name."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"export stage '{stage}' failed: {message}")
        self.stage = stage


# ----------------------------------------------------------------------------------------------------- the module
class ExportWrapper(nn.Module):
    """The main head of a segmenter as a deployable graph: normalised image in, one output tensor out.

    Args:
        segmenter: a module whose forward returns a dict with "main" logits (N, C, h, w) at stride 8.
        output: "label", "upsampled" or "logits" (see the module docstring).
        align_corners: of the bilinear upsampling to input size (the evaluation protocol's setting).
    """

    def __init__(self, segmenter: nn.Module, output: str = "label", align_corners: bool = True):
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise ValueError(f"export.output = {output!r}: expected one of {', '.join(OUTPUT_KINDS)}")
        self.segmenter = segmenter
        self.output = output
        self.align_corners = align_corners

    def logits(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) -> float logits: (N, C, H, W) for "label"/"upsampled", stride 8 for "logits"."""
        main = self.segmenter(image)["main"]
        if self.output == "logits":
            return main
        return F.interpolate(main, size=image.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, image: Tensor) -> Tensor:
        logits = self.logits(image)
        if self.output == "label":
            return logits.argmax(dim=1).to(torch.int32)
        return logits


# ---------------------------------------------------------------------------------------------------- loading
def load_config_and_weights(path: str | os.PathLike, recipe: str | None = None, overrides=()) -> tuple[Config, Any]:
    """Read a model file safely and decide its configuration.

    A segadapt checkpoint carries its config (`ckpt["config"]`); an official snapshot (a bare state_dict) takes the
    architecture from `recipe` (default adaptseg_gta2cs) plus `--set` overrides.

    Returns:
        (config, loaded object).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    state = checkpoint.load(path)
    if isinstance(state, dict) and "models" in state:
        if "config" not in state:
            raise ValueError(f"checkpoint {path} has 'models' but no 'config'; pass an official snapshot instead")
        if recipe:
            raise ValueError(f"checkpoint {path} carries its own config; drop --recipe {recipe} (use --set instead)")
        return config_module.load_dict(state["config"], str(path), list(overrides)), state
    if isinstance(state, dict) and state and all(isinstance(value, Tensor) for value in state.values()):
        return config_module.load(recipe or DEFAULT_RECIPE, list(overrides)), state
    raise ValueError(
        f"model file {path}: expected a segadapt checkpoint (dict with 'models' and 'config') or an official "
        f"snapshot (a state_dict of tensors), got {type(state).__name__}"
    )


def load_segmenter(path: str | os.PathLike, recipe: str | None = None, overrides=()) -> tuple[nn.Module, Config]:
    """Build the segmenter a model file describes, load its weights, and put it in eval mode on the CPU."""
    from segadapt.models import build_segmenter
    from segadapt.models.weights import load_pretrained

    cfg, _ = load_config_and_weights(path, recipe, overrides)
    model_cfg = config_module.replace(cfg.model, pretrained="", channels_last=False, compile="off")
    model = build_segmenter(model_cfg)
    try:
        load_pretrained(model, str(path))
    except ValueError as error:
        hint = f" (architecture from recipe {cfg.recipe!r}: choose it with --recipe NAME and --set model.KEY=VALUE)"
        raise ValueError(f"{error}{hint}") from error
    return model.eval(), cfg


def export_size(cfg: Config) -> tuple[int, int]:
    """(W, H) of the example input: the evaluation size, or the synthshift size when evaluation keeps it native."""
    width, height = cfg.eval.input_size
    if width <= 0 or height <= 0:
        width, height = cfg.data.synthshift.size
    return int(width), int(height)


def metadata(cfg: Config, size: tuple[int, int]) -> dict[str, str]:
    """The input contract and output kind as strings, for ONNX metadata_props and the TensorRT sidecar."""
    data = cfg.data
    input_size = size if not cfg.export.dynamic else tuple(cfg.eval.input_size)
    return {
        "format": META_FORMAT,
        "input": f"{INPUT_NAME}: float32 NCHW, pixels 0..255 in channel_order, minus mean, divided by std",
        "channel_order": data.channel_order,
        "mean": ",".join(repr(float(v)) for v in data.mean),
        "std": ",".join(repr(float(v)) for v in data.std),
        "num_classes": str(cfg.model.num_classes),
        "output": cfg.export.output,
        "align_corners": str(int(cfg.eval.align_corners)),
        "dynamic": str(int(cfg.export.dynamic)),
        "input_size": f"{input_size[0]}x{input_size[1]}",
        "recipe": cfg.recipe,
    }


def output_to_labels(output: Tensor, kind: str, size, align_corners: bool) -> Tensor:
    """A graph's output -> (N, H, W) labels at input `size` (H, W), as `ExportWrapper(output="label")` computes them.

    Args:
        output: (N, H, W) labels, (N, C, H, W) upsampled logits or (N, C, h, w) stride-8 logits, per `kind`.
    """
    if kind == "label":
        return output
    if kind == "logits":
        output = F.interpolate(output.float(), size=tuple(size), mode="bilinear", align_corners=align_corners)
    return output.argmax(dim=1)
