"""segadapt: a training engine for label-efficient semantic segmentation (AdaptSegNet, AdvSemiSeg, U2PL, LSD-seg,
Mix-and-Match), fast on the GPU and exportable to ONNX / TensorRT.

The installed namespace is `segadapt`; in the repository its root package is engine/, with kernels/ and bench/ as
`segadapt.kernels` and `segadapt.bench` and recipes/ as package data (see pyproject.toml).
"""

__version__ = "0.2.0"
