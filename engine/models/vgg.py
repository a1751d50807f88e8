"""VGG-16 feature extractor shared by LSD-seg's FCN-8s and Mix-and-Match's network.

The layer list and module indices are torchvision's `vgg16` / `vgg16_bn` `features` (so `features.N.weight` keys of
a torchvision ImageNet state_dict load 1:1), with two additions:

- `width` scales every channel count (64 is the published network), so a narrow VGG trains on a CPU;
- `first_padding` pads conv1_1 (FCN-8s pads it by 100 so that any input size survives the 32x down-sampling; the
  other users pad by 1).

`forward` returns the outputs of the five pooling stages, which is what both users need: FCN-8s takes pool3, pool4
and pool5 (-> fc6/fc7), the hypercolumn head samples conv outputs of every stage.
"""

from __future__ import annotations

from torch import Tensor
from torch import nn

__all__ = ["VGG16", "VGG16_STAGES"]

# Convolutions per stage and their channel multipliers of `width` (64, 128, 256, 512, 512 at width 64).
VGG16_STAGES: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


class VGG16(nn.Module):
    """VGG-16 convolutions in torchvision's `features` order.

    Args:
        width: channels of conv1 (64 = VGG-16).
        batch_norm: insert BatchNorm after every conv (torchvision `vgg16_bn`; Mix-and-Match uses VGG-16 with BN).
        in_channels: 3 for colour, 1 for the grey input of the colorization-initialised network.
        first_padding: padding of conv1_1 (100 in FCN-8s, 1 otherwise).
        ceil_mode: max-pool rounding (FCN-8s / Caffe: True).
    """

    def __init__(self, width: int = 64, batch_norm: bool = False, in_channels: int = 3, first_padding: int = 1,
                 ceil_mode: bool = False) -> None:  # fmt: skip
        super().__init__()
        if width < 1:
            raise ValueError(f"VGG16 width = {width}: expected a positive channel count")
        layers: list[nn.Module] = []
        self.stage_ends: list[int] = []  # index (in `features`) of each stage's pooling layer
        self.stage_channels: list[int] = []
        channels = in_channels
        for stage, (convs, mult) in enumerate(VGG16_STAGES):
            out_channels = width * mult
            for conv in range(convs):
                padding = first_padding if stage == 0 and conv == 0 else 1
                layers.append(nn.Conv2d(channels, out_channels, 3, padding=padding))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                channels = out_channels
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
            self.stage_ends.append(len(layers) - 1)
            self.stage_channels.append(out_channels)
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args: x: (N, in_channels, H, W). Returns the five pooled stage outputs, strides 2, 4, 8, 16, 32."""
        outputs: list[Tensor] = []
        ends = set(self.stage_ends)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in ends:
                outputs.append(x)
        return outputs

    def stage_convs(self, x: Tensor) -> list[Tensor]:
        """Every conv stage's last activation before pooling (hypercolumn features), strides 1, 2, 4, 8, 16."""
        outputs: list[Tensor] = []
        ends = set(self.stage_ends)
        for index, layer in enumerate(self.features):
            if index in ends:
                outputs.append(x)
            x = layer(x)
        return outputs
