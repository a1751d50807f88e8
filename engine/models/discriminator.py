"""Fully-convolutional domain / confidence discriminator of AdaptSegNet and AdvSemiSeg.

Official: wasidennis/AdaptSegNet `model/discriminator.py` (`FCDiscriminator`), byte-for-byte the same in
hfslyc/AdvSemiSeg. Five 4x4 stride-2 convs (padding 1), channels num_classes -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1,
LeakyReLU(0.2) after the first four, no normalisation, no sigmoid: it returns logits for BCEWithLogits (or MSE for
LS-GAN). Each conv maps H to floor(H / 2), so 1x19x512x1024 -> 1x1x16x32; 2,781,121 parameters for 19 classes.
"""

from __future__ import annotations

from torch import Tensor
from torch import nn

__all__ = ["FCDiscriminator"]


class FCDiscriminator(nn.Module):
    """Patch discriminator on softmax maps; attribute names match the official state_dict keys.

    Args:
        num_classes: input channels (the segmenter's classes).
        ndf: channels of the first conv (official 64).
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("ndf", ndf)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FCDiscriminator: {name} must be a positive int, got {value!r}")
        self.conv1 = nn.Conv2d(num_classes, ndf, 4, 2, 1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, 2, 1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, 2, 1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, num_classes, H, W) probabilities. Returns logits (N, 1, H / 32, W / 32), floored per conv."""
        x = self.leaky_relu(self.conv1(x))
        x = self.leaky_relu(self.conv2(x))
        x = self.leaky_relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)
