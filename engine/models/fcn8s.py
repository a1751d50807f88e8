"""FCN-8s "at-once" on VGG-16, the segmenter (F) of LSD-seg.

Official: swamiviv/LSD-seg `code/torchfcn/models/model_utils.py` (`FCN8s`, the wkentaro/pytorch-fcn port of
fcn.berkeleyvision's voc-fcn8s-atonce) and `fcn8s_LSD.py` (`FCN8s_LSD.forward` returns `score, fc7, pool4, pool3`).

Layout: VGG-16 `features` (engine.models.vgg.VGG16, conv1_1 padded by 100, ceil-mode pooling), fc6 = 7x7 conv and
fc7 = 1x1 conv (4096 channels at width 64, scaled by width / 64), each followed by ReLU and Dropout2d(0.5); score_fr,
score_pool4, score_pool3 1x1 convs; upscore2 (4x4 s2), upscore_pool4 (4x4 s2), upscore8 (16x16 s8) transposed convs
without bias, initialised to bilinear kernels and **never trained** (the official `get_parameters` leaves
ConvTranspose2d out of every optimizer: "weight is frozen because it is just a bilinear upsampling"); here they have
`requires_grad = False`. Skips are cropped at the official offsets 5 (pool4) and 9 (pool3) and the final map at 31,
which makes the score map exactly the input size for every input size (the 100-pixel padding guarantees the crops
fit).

Output contract: "main" is the official score map **at input resolution** (not stride 8): losses and evaluation
upsample "main" to the label size with bilinear interpolation, which is the identity when the sizes are equal (scale
1 with or without align_corners), so the official fixed bilinear upsampler stays part of the network and exported
graphs. Also returned, for LSD-seg's generator: "fc7" (after drop7, as `fc7_response`), "pool4" and "pool3".

Initialisation: score layers zero (official `_initialize_weights`); the VGG convs and fc6 / fc7 get torchvision's VGG
init (Kaiming normal, fan_out) instead of the official zeros, because the official always overwrites them with
ImageNet VGG-16 weights (`copy_params_from_vgg16`) and zeros cannot train from scratch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch import nn

from segadapt.config import Model
from segadapt.models.vgg import VGG16

__all__ = ["FCN8s", "bilinear_kernel", "build"]


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Per-channel bilinear upsampling kernel (official `get_upsampling_weight`): (channels, channels, k, k)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = torch.arange(kernel_size, dtype=torch.float64)
    profile = 1 - (grid - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = profile[:, None] * profile[None, :]
    return weight.float()


class FCN8s(nn.Module):
    """FCN-8s at-once (VGG-16) returning the score map at input size plus the features LSD-seg's generator reads.

    Args:
        num_classes: output classes.
        width: VGG conv1 channels (64 = VGG-16); fc6 / fc7 have 64 * width channels (4096 at width 64).
        dropout: Dropout2d probability after fc6 and fc7 (official 0.5).
    """

    input_padding = 100  # conv1_1 padding; LSD-seg's generator undoes it with its last ConvTranspose2d padding

    def __init__(self, num_classes: int, width: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        for name, value in (("model.num_classes", num_classes), ("model.width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FCN8s: {name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.backbone = VGG16(width=width, first_padding=self.input_padding, ceil_mode=True)
        fc_channels = 64 * width
        self.fc6 = nn.Conv2d(self.backbone.out_channels, fc_channels, 7)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(dropout)
        self.drop7 = nn.Dropout2d(dropout)
        pool3_channels, pool4_channels = self.backbone.stage_channels[2], self.backbone.stage_channels[3]
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(pool4_channels, num_classes, 1)
        self.score_pool3 = nn.Conv2d(pool3_channels, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)
        # Channels of the generator inputs, in the order (deep, mid, shallow).
        self.feature_channels = (fc_channels, pool4_channels, pool3_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for conv in [m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)] + [self.fc6, self.fc7]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for conv in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        for up in (self.upscore2, self.upscore_pool4, self.upscore8):
            with torch.no_grad():
                up.weight.copy_(bilinear_kernel(self.num_classes, up.kernel_size[0]))
            up.weight.requires_grad = False

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Args: image: (N, 3, H, W), normalised.

        Returns:
            "main": scores (N, num_classes, H, W); "fc7": (N, 64 * width, h32 - 6, w32 - 6) where h32 is pool5's
            height; "pool4": (N, 8 * width, h16, w16); "pool3": (N, 4 * width, h8, w8). With the 100-pixel padding
            h8 = ceil((H + 198) / 8), h16 = ceil(h8 / 2), h32 = ceil(h16 / 2).
        """
        height, width = image.shape[-2:]
        _, _, pool3, pool4, pool5 = self.backbone(image)
        fc7 = self.drop7(self.relu(self.fc7(self.drop6(self.relu(self.fc6(pool5))))))
        upscore2 = self.upscore2(self.score_fr(fc7))  # 1/16
        score_pool4 = self.score_pool4(pool4)[:, :, 5 : 5 + upscore2.shape[2], 5 : 5 + upscore2.shape[3]]
        upscore_pool4 = self.upscore_pool4(upscore2 + score_pool4)  # 1/8
        score_pool3 = self.score_pool3(pool3)[:, :, 9 : 9 + upscore_pool4.shape[2], 9 : 9 + upscore_pool4.shape[3]]
        score = self.upscore8(upscore_pool4 + score_pool3)[:, :, 31 : 31 + height, 31 : 31 + width]
        # Dense copy (official `.contiguous()`), keeping channels-last: the fused CE needs H and W mergeable.
        score = score.clone(memory_format=torch.preserve_format)
        return {"main": score, "fc7": fc7, "pool4": pool4, "pool3": pool3}

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the score layers (the frozen bilinear upsamplers are not trainable)."""
        return [p for m in (self.score_fr, self.score_pool4, self.score_pool3) for p in m.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """VGG-16 convs and fc6 / fc7."""
        return [p for m in (self.backbone, self.fc6, self.fc7) for p in m.parameters() if p.requires_grad]


def build(cfg: Model) -> FCN8s:
    """The `[model]` section's FCN-8s: `num_classes` and `width` (64 = the official VGG-16)."""
    return FCN8s(cfg.num_classes, width=cfg.width)
