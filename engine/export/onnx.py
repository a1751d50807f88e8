"""Stages "onnx export" (`torch.onnx.export` of the wrapper, metadata written into the model) and "onnx checker"
(`onnx.checker.check_model(full_check=True)`).

This module is `segadapt.export.onnx`; `import onnx` inside it is the onnx library (imports are absolute)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from segadapt import checkpoint
from segadapt.export.model import INPUT_NAME
from segadapt.export.model import ExportError
from segadapt.export.model import ExportWrapper


def export_onnx(
    wrapper: ExportWrapper,
    path: str | os.PathLike,
    export: Any,
    size: tuple[int, int],
    batch_size: int,
    meta: dict[str, str],
) -> Path:
    """Stage "onnx export": trace `wrapper` with the TorchScript exporter and write `path` atomically.

    Args:
        wrapper: the module to export, in eval mode.
        export: the `Export` config section (opset, output, dynamic).
        size: (W, H) of the example input.
        batch_size: N of the example input (the fixed batch of a static graph).
        meta: written into the model's metadata_props.
    """
    import onnx

    stage = "onnx export"
    if export.opset < 17:
        raise ExportError(stage, f"export.opset = {export.opset}: expected >= 17 (LayerNorm-era ops, Resize-13+)")
    width, height = size
    example = torch.zeros(batch_size, 3, height, width)
    output_name = "label" if export.output == "label" else "logits"
    dims = {0: "batch", 1: "height", 2: "width"} if export.output == "label" else {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, output_name: dims} if export.dynamic else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        scratch_file = Path(scratch) / path.name
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice; dynamo=False is chosen
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(scratch_file),
                    opset_version=export.opset,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[output_name],
                    dynamic_axes=dynamic_axes,
                )
            model = onnx.load(str(scratch_file))
        except Exception as error:  # noqa: BLE001 - re-raised with the stage named
            raise ExportError(stage, f"{type(error).__name__}: {error}") from error
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        checkpoint.atomic_write_bytes(path, lambda handle: handle.write(model.SerializeToString()))
    return path


def check_onnx(path: str | os.PathLike) -> None:
    """Stage "onnx checker": `onnx.checker.check_model(full_check=True)` (runs shape inference too)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the stage named
        raise ExportError("onnx checker", f"{path}: {error}") from error


def read_metadata(model: Any) -> dict[str, str]:
    """metadata_props of an onnx.ModelProto as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}
