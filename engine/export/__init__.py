"""Deployment export: checkpoint -> ONNX -> onnx.checker -> onnxruntime parity -> TensorRT engine -> parity.

`segadapt export CHECKPOINT --onnx OUT.onnx [--tensorrt OUT.plan --precision fp32|fp16|int8]` follows timm's
`onnx_export`: eager forward, `torch.onnx.export` of the main head only, `onnx.checker.check_model(full_check=True)`,
then a comparison against PyTorch eager on real synthshift images, then the TensorRT build and the same comparison.
Each stage is a function that raises `ExportError` naming the stage.

Input contract of every exported graph (ONNX and TensorRT): one input `image`, float32 (N, 3, H, W), already
normalised the way the checkpoint was trained: pixels 0..255 in `channel_order` ("bgr" for the Caffe-era DeepLab
weights), minus `mean`, divided by `std`. The graph normalises nothing. Those values, the class count and the output
kind are written into the ONNX `metadata_props` (and a `<plan>.meta` sidecar next to a TensorRT engine) so that
`segadapt predict` and the native runner in deploy/ prepare images the same way.

Output kinds (`export.output`): "label" (default, what a deployment wants: int32 (N, H, W) argmax of the logits
bilinearly upsampled to the input size), "upsampled" (float32 (N, C, H, W) logits at input size) or "logits"
(float32 (N, C, ceil(H/8), ceil(W/8)) stride-8 logits, as the network computes them).
"""

# One file per stage (this docstring is also `segadapt export --help`'s description, so the map lives here):
#   model.py     the deployable module (ExportWrapper), loading a checkpoint or official snapshot, the metadata
#   images.py    parity and calibration images (synthshift or a directory), resized and normalised
#   onnx.py      stages "onnx export" and "onnx checker"
#   parity.py    stage "onnxruntime parity", the comparison every parity stage uses, the val mIoU difference
#   tensorrt.py  stages "tensorrt build" and "tensorrt parity", the engine runner and its .meta sidecar
#   pipeline.py  run_export: the stages in order, as `segadapt export` runs them (its parser is in cli.py)

from segadapt.export.images import IMAGE_SUFFIXES
from segadapt.export.images import image_files
from segadapt.export.images import parity_images
from segadapt.export.images import prepare_files
from segadapt.export.images import resize_image
from segadapt.export.model import DEFAULT_RECIPE
from segadapt.export.model import INPUT_NAME
from segadapt.export.model import META_FORMAT
from segadapt.export.model import OUTPUT_KINDS
from segadapt.export.model import ExportError
from segadapt.export.model import ExportWrapper
from segadapt.export.model import export_size
from segadapt.export.model import load_config_and_weights
from segadapt.export.model import load_segmenter
from segadapt.export.model import metadata
from segadapt.export.model import output_to_labels
from segadapt.export.onnx import check_onnx
from segadapt.export.onnx import export_onnx
from segadapt.export.onnx import read_metadata
from segadapt.export.parity import MIN_AGREEMENT
from segadapt.export.parity import Parity
from segadapt.export.parity import compare
from segadapt.export.parity import compare_onnxruntime
from segadapt.export.parity import confusion
from segadapt.export.parity import miou
from segadapt.export.parity import onnxruntime_session
from segadapt.export.parity import require_agreement
from segadapt.export.parity import val_miou_diff
from segadapt.export.pipeline import run_export
from segadapt.export.tensorrt import TENSORRT_MISSING
from segadapt.export.tensorrt import MissingDependencyError
from segadapt.export.tensorrt import TensorRTOptions
from segadapt.export.tensorrt import TensorRTRunner
from segadapt.export.tensorrt import build_tensorrt
from segadapt.export.tensorrt import compare_tensorrt
from segadapt.export.tensorrt import read_plan_meta
from segadapt.export.tensorrt import require_tensorrt
from segadapt.export.tensorrt import write_plan_meta

__all__ = [
    "DEFAULT_RECIPE",
    "IMAGE_SUFFIXES",
    "INPUT_NAME",
    "META_FORMAT",
    "MIN_AGREEMENT",
    "OUTPUT_KINDS",
    "TENSORRT_MISSING",
    "ExportError",
    "ExportWrapper",
    "MissingDependencyError",
    "Parity",
    "TensorRTOptions",
    "TensorRTRunner",
    "build_tensorrt",
    "check_onnx",
    "compare",
    "compare_onnxruntime",
    "compare_tensorrt",
    "confusion",
    "export_onnx",
    "export_size",
    "image_files",
    "load_config_and_weights",
    "load_segmenter",
    "metadata",
    "miou",
    "onnxruntime_session",
    "output_to_labels",
    "parity_images",
    "prepare_files",
    "read_metadata",
    "read_plan_meta",
    "require_agreement",
    "require_tensorrt",
    "resize_image",
    "run_export",
    "val_miou_diff",
    "write_plan_meta",
]
