"""Mix-and-Match's segmenter: a grey-input VGG-16-BN with a Larsson-style hypercolumn head (Zhan et al., AAAI 2018).

Official network (METHODS.md A5; Caffe `VGG/colorize_pascal/finetune_seg.prototxt`): VGG-16 with BN initialised from
Larsson et al.'s colorization model, so its input is grey: the BGR crop is scaled by 1/255, shifted by -0.4488 and
averaged over channels (`data_gray`). The segmentation head is a *sparse hypercolumn*: at 256 random points per
image it samples data_gray and conv features from every stage up to fc7, concatenates them, and applies
FC 1024 + ReLU + FC to classes (softmax loss, ignore 255). The mix-and-match stage uses pool5 only.

One network serves all three stages, so weights carry over through `model.pretrained`:

    forward(image)                          -> {"main": (N, K, ceil(H/8), ceil(W/8))}   (+ "aux", multi_level)
    forward(image, output="pool5")          -> {"pool5": (N, 8w, ~H/32, ~W/32)}          mix-and-match features
    forward(image, output="hypercolumn", points=P) -> {"hypercolumn": (N, C_hc, P)}      colorization stage
    forward(image, output="point_logits", points=P) -> {"main": (N, K, P)}               sparse head (Larsson)

`points` are (N, P, 2) pixel coordinates (x, y) of pixel centres, float, in [0, W-1] x [0, H-1]. Every feature map is
read there with bilinear interpolation (`grid_sample`, align_corners=False), i.e. the same sampling as the dense
path, which bilinearly resizes each map to the stride-8 grid and applies the per-point MLP as two 1x1 convs: the
dense logit at grid cell (i, j) equals the sparse logit at (x, y) = (8j + 3.5, 8i + 3.5) when H and W are multiples
of 32 (tested). Evaluation and export use the dense path.

Grey input: `grey = mean_c(image) / 255`. With the engine's default normalisation (BGR minus the DeepLab mean, std 1)
this is exactly the official `data_gray`: mean(104.008, 116.669, 122.679) / 255 = 0.4488, the official shift.

| official                                                        | here                                            |
|-----------------------------------------------------------------|-------------------------------------------------|
| hypercolumn from data_gray, conv1_1 ... conv5_3, fc6, fc7 and   | data_gray, the last conv of each stage (conv1_2, |
| two extra pooled convs                                          | conv2_2, conv3_3, conv4_3, conv5_3) and fc7      |
| fc6 / fc7 of Larsson's VGG (dilated fully-connected convs)      | `fc67`: 3x3 conv + ReLU, 1x1 conv + ReLU on      |
|                                                                 | pool5 (no BN), 16w channels (1024 at width 64)   |
| Caffe pooling rounds up                                         | VGG16(ceil_mode=True)                            |
| fine-tuning on 256 sparse points per image                      | method.sparse_points = 256 (paper recipes) trains |
|                                                                 | `point_logits`; 0 trains the dense stride-8 map  |
|                                                                 | (the CPU demo); same weights either way          |
| no aux head                                                     | `model.multi_level` adds a 1x1 conv4_3 classifier |
|                                                                 | ("aux") for the engine's contract; recipes: off  |
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt.config import Model
from segadapt.models.vgg import VGG16

__all__ = ["HypercolumnNet", "build", "grid_from_points"]

_OUTPUTS = ("seg", "pool5", "hypercolumn", "point_logits")


def grid_from_points(points: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel-centre coordinates (N, P, 2) as (x, y) -> a `grid_sample` grid (N, P, 1, 2) for an (H, W) image."""
    height, width = size
    scale = points.new_tensor([2.0 / width, 2.0 / height])
    return ((points + 0.5) * scale - 1.0).unsqueeze(2)


class HypercolumnNet(nn.Module):
    """Grey VGG-16-BN + fc6/fc7 + hypercolumn MLP head.

    Args:
        num_classes: classes of the segmentation head (21 VOC, 19 Cityscapes).
        width: channels of conv1 (64 = VGG-16); fc6/fc7 and the MLP's hidden layer have 16 * width (1024).
        multi_level: also return "aux" (a 1x1 classifier on conv4_3), the engine's conv4-level output.
    """

    def __init__(self, num_classes: int, width: int = 64, multi_level: bool = False) -> None:
        super().__init__()
        for name, value in (("model.num_classes", num_classes), ("model.width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HypercolumnNet: {name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        # Caffe pools round up (ceil_mode), which also keeps conv5 above 1x1 on small crops.
        self.backbone = VGG16(width=width, batch_norm=True, in_channels=1, ceil_mode=True)
        fc = 16 * width
        self.fc67 = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels, fc, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(fc, fc, 1),
            nn.ReLU(inplace=True),
        )
        # data_gray + the last conv of each stage + fc7
        self.hypercolumn_channels = 1 + sum(self.backbone.stage_channels) + fc
        self.hidden_channels = fc
        self.head = nn.Sequential(
            nn.Conv2d(self.hypercolumn_channels, fc, 1), nn.ReLU(inplace=True), nn.Conv2d(fc, num_classes, 1)
        )
        if multi_level:
            self.aux_head = nn.Conv2d(self.backbone.stage_channels[3], num_classes, 1)

    # ------------------------------------------------------------------------------------------------ pieces
    @staticmethod
    def grey(image: Tensor) -> Tensor:
        """(N, 3, H, W) normalised BGR -> (N, 1, H, W) official data_gray (see the module docstring)."""
        return image.mean(dim=1, keepdim=True) / 255.0

    def feature_maps(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        """Hypercolumn source maps [data_gray, conv1_2, conv2_2, conv3_3, conv4_3, conv5_3, fc7] and pool5."""
        grey = self.grey(image)
        maps = [grey]
        x = grey
        ends = set(self.backbone.stage_ends)
        for index, layer in enumerate(self.backbone.features):
            if index in ends:
                maps.append(x)
            x = layer(x)
        maps.append(self.fc67(x))
        return maps, x

    def pool5(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) -> pool5 (N, 8w, ceil-rounded H/32, W/32) of the grey image."""
        return self.backbone(self.grey(image))[-1]

    def dense_hypercolumn(self, maps: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Every map bilinearly resized to `size` (align_corners=False) and concatenated: (N, C_hc, h, w)."""
        return torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)

    def point_hypercolumn(self, maps: list[Tensor], points: Tensor, size: tuple[int, int]) -> Tensor:
        """Every map read at `points` (N, P, 2) of an image of `size`: (N, C_hc, P)."""
        grid = grid_from_points(points.to(maps[0].dtype), size)
        columns = [F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False) for m in maps]
        return torch.cat(columns, dim=1).squeeze(3)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, image: Tensor, output: str = "seg", points: Tensor | None = None) -> dict[str, Tensor]:
        """Dense logits, pool5, or hypercolumns / logits at points.

        Args:
            image: (N, 3, H, W) normalised BGR.
            output: "seg" (dense logits), "pool5", "hypercolumn" or "point_logits" (see the module docstring).
            points: (N, P, 2) pixel coordinates (x, y), for "hypercolumn" and "point_logits".
        """
        if output not in _OUTPUTS:
            raise ValueError(f"HypercolumnNet.forward: output = {output!r}; expected one of {_OUTPUTS}")
        if output == "pool5":
            return {"pool5": self.pool5(image)}
        size = (image.shape[-2], image.shape[-1])
        maps, _ = self.feature_maps(image)
        if output in ("hypercolumn", "point_logits"):
            if points is None or points.dim() != 3 or points.shape[0] != image.shape[0] or points.shape[2] != 2:
                got = None if points is None else tuple(points.shape)
                raise ValueError(f"HypercolumnNet.forward({output!r}): points must be (N, P, 2), got {got}")
            column = self.point_hypercolumn(maps, points, size)
            if output == "hypercolumn":
                return {"hypercolumn": column}
            return {"main": self.head(column.unsqueeze(3)).squeeze(3)}
        grid = (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
        out = {"main": self.head(self.dense_hypercolumn(maps, grid))}
        if self.multi_level:
            aux = self.aux_head(maps[4])
            out["aux"] = F.interpolate(aux, size=grid, mode="bilinear", align_corners=False)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """The hypercolumn MLP (and the aux classifier)."""
        heads = [self.head, self.aux_head] if self.multi_level else [self.head]
        return [p for head in heads for p in head.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """VGG-16-BN convolutions and fc6/fc7."""
        return [*self.backbone.parameters(), *self.fc67.parameters()]


def build(cfg: Model) -> HypercolumnNet:
    """The `hypercolumn` registry entry: uses model.num_classes, model.width and model.multi_level."""
    return HypercolumnNet(cfg.num_classes, width=cfg.width, multi_level=cfg.multi_level)
