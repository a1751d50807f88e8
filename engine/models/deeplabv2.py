"""DeepLab-v2 (ResNet + ASPP classifier), the segmenter of AdaptSegNet and AdvSemiSeg.

Official: wasidennis/AdaptSegNet `model/deeplab_multi.py` (`Classifier_Module`, `ResNetMulti`, built by
`DeeplabMulti(num_classes)`). `layer5` is an ASPP classifier on layer3 features (the "conv4" aux output), `layer6`
one on layer4 features (the main output), both at output stride 8. State-dict keys equal the official ones, so
official snapshots load without renaming (engine/models/weights.py).

Official quirks and their switches:

- `Classifier_Module.forward` returns inside its loop, so only the rate-6 and rate-12 branches are summed; the other
  two exist as parameters that never train: `sum_first_two_only` (recipe key `model.aspp_sum_first_two_only`).
- BatchNorm affine frozen, running statistics still updated in `train()`: always on (engine/models/resnet.py).

Measured for `DeepLabV2(19)` (ResNet-101, multi-level): 44,601,560 parameters, 640 state_dict entries (104
BatchNorms x 5 incl. `num_batches_tracked`, 104 convs, 16 ASPP tensors); 1x3x512x1024 -> 1x19x65x129.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch import nn

from segadapt.models.resnet import ResNet

__all__ = ["ASPP", "DeepLabV2"]


class ASPP(nn.Module):
    """Atrous spatial pyramid classifier: one 3x3 conv per rate (dilation = padding = rate), outputs summed.

    Args:
        in_channels: channels of the input features.
        num_classes: output channels.
        rates: dilation rates, official (6, 12, 18, 24).
        sum_first_two_only: reproduce the official early return (only branches 0 and 1 are summed); the other
            branches are still built so parameter counts and state_dicts match the official model, and are frozen
            (requires_grad False) since they never receive a gradient.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18, 24),
        sum_first_two_only: bool = True,
    ) -> None:
        super().__init__()
        rates = tuple(rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"model.aspp_rates must be positive ints, got {rates!r}")
        if sum_first_two_only and len(rates) < 2:
            raise ValueError(f"model.aspp_sum_first_two_only needs at least 2 model.aspp_rates, got {rates!r}")
        self.rates = rates
        self.sum_first_two_only = sum_first_two_only
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, 1, padding=rate, dilation=rate, bias=True) for rate in rates
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)  # official; the bias keeps PyTorch's default init
        if sum_first_two_only:
            # The dropped branches never get a gradient, so the official optimizer never moves them. Freezing them
            # says so: optimizers and DDP (which rejects unused trainable parameters) leave them alone.
            for parameter in self.conv2d_list[2:].parameters():
                parameter.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, in_channels, H, W). Returns logits (N, num_classes, H, W)."""
        branches = self.conv2d_list[:2] if self.sum_first_two_only else self.conv2d_list
        out = branches[0](x)
        for conv in branches[1:]:
            out += conv(x)  # in place on a conv output: conv backward does not need it
        return out


class DeepLabV2(ResNet):
    """DeepLab-v2 with optional conv4 auxiliary head (the official `DeeplabMulti` when multi_level is True).

    Args:
        num_classes: output classes (19 Cityscapes, 21 VOC).
        backbone: "resnet18", "resnet34", "resnet50" or "resnet101" (official).
        width: stem channels; 64 is the official network.
        multi_level: build `layer5` (ASPP on layer3) and return "aux".
        aspp_rates: dilation rates of both ASPP heads.
        sum_first_two_only: the official ASPP early-return quirk (see `ASPP`).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        width: int = 64,
        multi_level: bool = True,
        aspp_rates: Sequence[int] = (6, 12, 18, 24),
        sum_first_two_only: bool = True,
    ) -> None:
        super().__init__(backbone, width)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"model.num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.return_features = False  # LSD-seg sets it: also return layer2/3/4 features (see forward)
        if multi_level:
            self.layer5 = ASPP(self.layer3_channels, num_classes, aspp_rates, sum_first_two_only)
        self.layer6 = ASPP(self.layer4_channels, num_classes, aspp_rates, sum_first_two_only)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Args: image: (N, 3, H, W), normalised.

        Returns:
            "main": layer6 logits (N, num_classes, h, w) with h = floor((H4 - 1) / 2) + 1 where H4 is the stem output
            (`ResNet.stem`); "aux": layer5 logits of the same shape, only when multi_level. When `return_features`
            is set (LSD-seg's generator inputs): "feat_deep" layer4, "feat_mid" layer3, "feat_shallow" layer2
            features, all (N, C, h, w) at stride 8.
        """
        shallow = self.layer2(self.layer1(self.stem(image)))
        x = self.layer3(shallow)
        deep = self.layer4(x)
        out = {"main": self.layer6(deep)}
        if self.multi_level:
            out["aux"] = self.layer5(x)
        if self.return_features:
            out.update(feat_deep=deep, feat_mid=x, feat_shallow=shallow)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the ASPP heads (layer5, layer6): the official 10x learning rate group."""
        heads = [self.layer5, self.layer6] if self.multi_level else [self.layer6]
        return [p for head in heads for p in head.parameters() if p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the heads (convs of the ResNet; BatchNorm affine is frozen)."""
        head_ids = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
