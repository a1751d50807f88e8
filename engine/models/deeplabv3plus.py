"""DeepLab-v3+ on a multi-grid dilated ResNet with U2PL's representation head: the U2PL segmenter.

Official: Haochen-Wang409/U2PL, `u2pl/models/resnet.py` (encoder), `u2pl/models/base.py` (ASPP),
`u2pl/models/decoder.py` (`dec_deeplabv3_plus`, `Aux_Module`), `u2pl/models/model_helper.py` (`ModelBuilder`).
Module names follow the official ones (`encoder.*`, `decoder.aspp.*`, `decoder.classifier.*`,
`decoder.representation.*`, `auxor.aux.*`), so an official checkpoint's keys map one to one.

The network (METHODS.md A3), with `c = 4 * width` (256 at the official width 64):

- encoder: ResNet with a three-conv "deep" stem (3 -> w -> w -> 2w, 3x3, the first with stride 2), BN, ReLU,
  3x3/2 max-pool (ceil_mode); torchvision-style blocks (stride on the 3x3 conv); replace_stride_with_dilation
  [False, True, True] (output stride 8): layer3 dilation 2 (its first block 1), layer4 multi-grid (2, 2, 4) x 2
  = dilations 4, 8, 16 (blocks past the third reuse 4 x 4). Kaiming-normal (fan_out) convs, BN weight 1 bias 0,
  and zero-init of each residual branch's last BN (`zero_init_residual: True` in every official config).
- decoder: ASPP on layer4 (image pooling, 1x1, one 3x3 per `aspp_rates`, each conv + BN + ReLU, concatenated;
  official rates 12 / 24 / 36), head 3x3 conv -> c + BN + ReLU + Dropout2d(0.1), bilinearly upsampled
  (align_corners=True) to layer1's size and concatenated with `low_conv` (1x1 conv -> c + BN + ReLU) of layer1;
  classifier (3x3 2c -> c, BN, ReLU, Dropout2d 0.1, 3x3 c -> c, BN, ReLU, Dropout2d 0.1, 1x1 -> classes) and the
  representation head (the same, 1x1 -> c: 256-d features).
- aux (`multi_level`): `Aux_Module` on layer3, 3x3 conv -> c + BN + ReLU + Dropout2d(0.1) + 1x1 -> classes.

Outputs: "main" logits at output stride 4 (after the decoder; DESIGN.md's stride 8 is DeepLab-v2's: every loss and
the evaluator upsample to the label size, so the stride does not matter to them), and, in train() mode only, "aux"
(stride 8) and "rep" (c-d, stride 4). Eval mode computes "main" alone: that is what evaluation, the U2PL teacher's
pseudo-label pass and the ONNX export read, and it keeps the exported graph free of the unused heads.

Every BatchNorm trains (weight, bias and statistics), as the official SyncBN does; `train.sync_bn` converts them to
SyncBatchNorm in multi-GPU runs. Deviations: `width` scales every channel count (64 = the official network);
BasicBlock depths ("resnet18", "resnet34") accept dilation, which the official BasicBlock refuses; the ASPP builds
one 3x3 branch per rate, so the engine's default four `aspp_rates` give a five-branch-plus-pool ASPP (recipes set the
official [12, 24, 36]); the image-pooling branch is broadcast to the feature size instead of bilinearly upsampled from
1x1 (identical values).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt.config import Model

__all__ = ["DeepLabV3Plus", "build"]

_DEPTHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
_MULTI_GRID = (2, 2, 4)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1, bias: bool = False):
    padding = dilation * (kernel // 2)
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _BasicBlock(nn.Module):
    """Two 3x3 convs (stride and dilation on both as torchvision's, dilation allowed) with a residual."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, in_channels, H, W). Returns (N, channels, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 x4 with a residual: torchvision's v1.5 block, as U2PL's."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, in_channels, H, W). Returns (N, 4 * channels, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class _Encoder(nn.Module):
    """U2PL's ResNet: deep stem, layer1 (s4), layer2 (s8), layer3 (dilation 2), layer4 (multi-grid 4/8/16)."""

    def __init__(self, backbone: str, width: int):
        super().__init__()
        kind, counts = _DEPTHS[backbone]
        block = _Bottleneck if kind == "bottleneck" else _BasicBlock
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 1, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.in_channels = 2 * width
        self.layer1 = self._make_layer(block, width, counts[0], stride=1, dilations=[1] * counts[0])
        self.layer1_channels = self.in_channels
        self.layer2 = self._make_layer(block, 2 * width, counts[1], stride=2, dilations=[1] * counts[1])
        # replace_stride_with_dilation = [False, True, True]: the first block keeps the previous dilation.
        self.layer3 = self._make_layer(block, 4 * width, counts[2], stride=1, dilations=[1] + [2] * (counts[2] - 1))
        self.layer3_channels = self.in_channels
        grids = [_MULTI_GRID[min(i, 2)] for i in range(counts[3])]
        layer4_dilations = [2 * grids[0]] + [4 * g for g in grids[1:]]
        self.layer4 = self._make_layer(block, 8 * width, counts[3], stride=1, dilations=layer4_dilations)
        self.layer4_channels = self.in_channels
        self._init_weights()

    def _make_layer(self, block, channels: int, count: int, stride: int, dilations: list[int]) -> nn.Sequential:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        layers = [block(self.in_channels, channels, stride, dilations[0], downsample)]
        self.in_channels = out_channels
        layers += [block(out_channels, channels, 1, dilations[i], None) for i in range(1, count)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():  # zero_init_residual: each block starts as the identity
            if isinstance(module, (_BasicBlock, _Bottleneck)):
                nn.init.zeros_(module.last_norm().weight)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Args: image: (N, 3, H, W). Returns layer1 (stride 4), layer3 and layer4 (stride 8) features."""
        x1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(image)))))
        x3 = self.layer3(self.layer2(x1))
        return x1, x3, self.layer4(x3)


class _ASPP(nn.Module):
    """Image pooling + 1x1 + one dilated 3x3 per rate, each conv (no bias) + BN + ReLU, concatenated."""

    def __init__(self, in_channels: int, inner: int, rates: Sequence[int]):
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), *_conv_bn_relu(in_channels, inner, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(in_channels, inner, 1))
        for index, rate in enumerate(rates):
            self.add_module(f"conv{index + 3}", nn.Sequential(*_conv_bn_relu(in_channels, inner, 3, rate)))
        self.num_branches = len(rates) + 2
        self.out_channels = self.num_branches * inner

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, in_channels, h, w). Returns (N, out_channels, h, w)."""
        pooled = self.conv1(x).expand(-1, -1, x.shape[2], x.shape[3])
        branches = [pooled] + [getattr(self, f"conv{i}")(x) for i in range(2, self.num_branches + 1)]
        return torch.cat(branches, dim=1)


def _two_conv_head(in_channels: int, inner: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        *_conv_bn_relu(in_channels, inner, 3, bias=True),
        nn.Dropout2d(0.1),
        *_conv_bn_relu(inner, inner, 3, bias=True),
        nn.Dropout2d(0.1),
        nn.Conv2d(inner, out_channels, 1, bias=True),
    )


class _Decoder(nn.Module):
    """`dec_deeplabv3_plus`: ASPP + head on layer4, low-level layer1 branch, classifier and representation heads."""

    def __init__(self, low_channels: int, in_channels: int, num_classes: int, inner: int, rates: Sequence[int]):
        super().__init__()
        self.low_conv = nn.Sequential(*_conv_bn_relu(low_channels, inner, 1, bias=True))
        self.aspp = _ASPP(in_channels, inner, rates)
        self.head = nn.Sequential(*_conv_bn_relu(self.aspp.out_channels, inner, 3), nn.Dropout2d(0.1))
        self.classifier = _two_conv_head(2 * inner, inner, num_classes)
        self.representation = _two_conv_head(2 * inner, inner, inner)

    def forward(self, low: Tensor, high: Tensor, with_rep: bool) -> dict[str, Tensor]:
        """Args: low: layer1 (N, low_channels, H4, W4); high: layer4 (N, in_channels, h, w).

        Returns: "main" (N, num_classes, H4, W4) and, when `with_rep`, "rep" (N, inner, H4, W4).
        """
        low = self.low_conv(low)
        high = F.interpolate(self.head(self.aspp(high)), size=low.shape[-2:], mode="bilinear", align_corners=True)
        fused = torch.cat((low, high), dim=1)
        out = {"main": self.classifier(fused)}
        if with_rep:
            out["rep"] = self.representation(fused)
        return out


class _AuxHead(nn.Module):
    """`Aux_Module` on layer3: 3x3 conv (bias) -> BN -> ReLU -> Dropout2d(0.1) -> 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, inner: int):
        super().__init__()
        self.aux = nn.Sequential(
            *_conv_bn_relu(in_channels, inner, 3, bias=True), nn.Dropout2d(0.1), nn.Conv2d(inner, num_classes, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.aux(x)


class DeepLabV3Plus(nn.Module):
    """U2PL's segmenter (see the module docstring).

    Args:
        num_classes: output classes (21 VOC, 19 Cityscapes).
        backbone: "resnet18", "resnet34", "resnet50" or "resnet101" (official).
        width: stem width; 64 is the official network (decoder channels 4 * width = 256).
        multi_level: build the layer3 aux head (official on Cityscapes, `net.aux_loss`; off on VOC).
        aspp_rates: dilation rates of the ASPP's 3x3 branches (official 12, 24, 36).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        width: int = 64,
        multi_level: bool = True,
        aspp_rates: Sequence[int] = (12, 24, 36),
    ) -> None:
        super().__init__()
        if backbone not in _DEPTHS:
            raise ValueError(f"model.backbone = {backbone!r} is not supported; choices: {', '.join(sorted(_DEPTHS))}")
        for key, value in (("model.width", width), ("model.num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        rates = tuple(aspp_rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"model.aspp_rates must be positive ints, got {rates!r}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.rep_channels = 4 * width
        self.encoder = _Encoder(backbone, width)
        self.decoder = _Decoder(
            self.encoder.layer1_channels, self.encoder.layer4_channels, num_classes, self.rep_channels, rates
        )
        if multi_level:
            self.auxor = _AuxHead(self.encoder.layer3_channels, num_classes, self.rep_channels)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Args: image: (N, 3, H, W), normalised.

        Returns:
            "main": (N, num_classes, H4, W4) logits at stride 4 (H4 = the stem + max-pool output size);
            in train() mode also "rep": (N, 4 * width, H4, W4) and, with multi_level, "aux": (N, num_classes, h, w)
            at stride 8.
        """
        low, mid, high = self.encoder(image)
        out = self.decoder(low, high, with_rep=self.training)
        if self.training and self.multi_level:
            out["aux"] = self.auxor(mid)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder (ASPP, low-level branch, classifier, representation head) and aux head: U2PL's `modules_head`."""
        heads = [self.decoder, self.auxor] if self.multi_level else [self.decoder]
        return [p for head in heads for p in head.parameters() if p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters (convs and BatchNorm affine): U2PL's `modules_back`."""
        return [p for p in self.encoder.parameters() if p.requires_grad]


def build(cfg: Model) -> DeepLabV3Plus:
    """DeepLab-v3+ from the `[model]` section: backbone, width, num_classes, multi_level (aux head), aspp_rates."""
    return DeepLabV3Plus(
        cfg.num_classes,
        backbone=cfg.backbone,
        width=cfg.width,
        multi_level=cfg.multi_level,
        aspp_rates=cfg.aspp_rates,
    )
