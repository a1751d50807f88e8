"""Dilated ResNet backbone of DeepLab-v2, as the official AdaptSegNet `model/deeplab_multi.py` builds it.

Official: wasidennis/AdaptSegNet, `model/deeplab_multi.py` (`Bottleneck`, `ResNetMulti`); the same network is
AdvSemiSeg's `model/deeplab.py`. What differs from torchvision's ResNet, kept on purpose:

- the Bottleneck puts its stride on `conv1` (the 1x1), not on `conv2`;
- the 3x3 max-pool after the stem uses `ceil_mode=True` (512x1024 input -> 65x129 output, not 64x128);
- layer3 and layer4 keep stride 1 and dilate their 3x3 convs by 2 and 4 (padding = dilation): output stride 8;
- every BatchNorm has its affine parameters frozen (requires_grad False) but the model trains in `train()` mode,
  so running statistics update and batch statistics normalise (METHODS.md A1 "Network definitions").

`width` scales every channel count (64 is the official network) so that a narrow ResNet-18 trains on a CPU.
Module and attribute names (`conv1`, `bn1`, `layer1.0.downsample.0`, ...) are the official ones so that
state_dict keys match official snapshots exactly.
"""

from __future__ import annotations

from torch import Tensor
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "DEPTHS", "ResNet", "frozen_batch_norm"]


def frozen_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm whose weight and bias do not train (official `affine_par = True` + `requires_grad = False`)."""
    norm = nn.BatchNorm2d(channels, affine=True)
    for parameter in norm.parameters():
        parameter.requires_grad = False
    return norm


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; stride on the first, both dilated by `dilation` (padding = dilation)."""

    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = frozen_batch_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = frozen_batch_norm(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, in_channels, H, W). Returns (N, channels, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place on a BatchNorm output: its backward needs only its input
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 (stride) -> 3x3 (dilated) -> 1x1 x4, with a residual. Stride on conv1 as in the official code."""

    expansion = 4

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, stride, bias=False)
        self.bn1 = frozen_batch_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = frozen_batch_norm(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.bn3 = frozen_batch_norm(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, in_channels, H, W). Returns (N, 4 * channels, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


DEPTHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """Output-stride-8 ResNet trunk: stem, layer1 (s4), layer2 (s8), layer3 (dilation 2), layer4 (dilation 4).

    Args:
        backbone: one of `DEPTHS` ("resnet18", "resnet34", "resnet50", "resnet101").
        width: channels of the stem; layer i has width * 2**i * expansion output channels (64 = official).

    Attributes:
        layer3_channels, layer4_channels: output channels of layer3 and layer4 (1024 and 2048 for ResNet-101).
    """

    def __init__(self, backbone: str = "resnet101", width: int = 64) -> None:
        super().__init__()
        if backbone not in DEPTHS:
            raise ValueError(f"model.backbone = {backbone!r} is not a ResNet depth; choices: {', '.join(DEPTHS)}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"model.width must be a positive int, got {width!r}")
        block, counts = DEPTHS[backbone]
        self.in_channels = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
        self.bn1 = frozen_batch_norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(block, width, counts[0])
        self.layer2 = self._make_layer(block, width * 2, counts[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, counts[2], dilation=2)
        self.layer3_channels = self.in_channels
        self.layer4 = self._make_layer(block, width * 8, counts[3], dilation=4)
        self.layer4_channels = self.in_channels
        self._init_weights()

    def _make_layer(self, block: type[nn.Module], channels: int, count: int, stride: int = 1, dilation: int = 1):
        out_channels = channels * block.expansion
        downsample = None
        # The official condition also adds a projection whenever the layer is dilated.
        if stride != 1 or self.in_channels != out_channels or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, out_channels, 1, stride, bias=False), frozen_batch_norm(out_channels)
            )
        layers = [block(self.in_channels, channels, stride, dilation, downsample)]
        self.in_channels = out_channels
        layers += [block(out_channels, channels, 1, dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # Official ResNetMulti.__init__: every conv N(0, 0.01), every BatchNorm weight 1 and bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem(self, image: Tensor) -> Tensor:
        """Args: image: (N, 3, H, W). Returns (N, width, H4, W4), H4 = ceil((floor((H - 1) / 2) + 1 - 1) / 2) + 1."""
        return self.maxpool(self.relu(self.bn1(self.conv1(image))))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Args: image: (N, 3, H, W). Returns layer3 (N, layer3_channels, h, w), layer4 (N, layer4_channels, h, w)."""
        x = self.layer3(self.layer2(self.layer1(self.stem(image))))
        return x, self.layer4(x)
