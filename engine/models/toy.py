"""A two-conv segmenter for engine tests: same contract as DeepLabV2, trains in milliseconds on a CPU.

Engine and method tests use it so that their failures are not confused with model failures (detectron2's
`_SimpleModel` in `test_engine.py`). A 7x7 stride-4 stem (padding 3) maps H to ceil(H / 4); each 3x3 stride-2 head
(padding 1) maps that to ceil(H / 8): output stride 8 like DeepLab-v2.
"""

from __future__ import annotations

from torch import Tensor
from torch import nn

__all__ = ["ToySegmenter"]


class ToySegmenter(nn.Module):
    """Stem conv (stride 4) + ReLU, then a main and an aux classifier conv (stride 2).

    Args:
        num_classes: output classes.
        width: channels of the stem.
        multi_level: also build the aux head and return "aux".
    """

    def __init__(self, num_classes: int, width: int = 8, multi_level: bool = True) -> None:
        super().__init__()
        for name, value in (("model.num_classes", num_classes), ("model.width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ToySegmenter: {name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.return_features = False  # LSD-seg sets it: also return the stem features (see forward)
        self.stem = nn.Conv2d(3, width, 7, 4, padding=3)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(width, num_classes, 3, 2, padding=1)
        if multi_level:
            self.aux_classifier = nn.Conv2d(width, num_classes, 3, 2, padding=1)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Args: image: (N, 3, H, W). Returns "main" (and "aux") logits (N, num_classes, ceil(H/8), ceil(W/8))."""
        x = self.relu(self.stem(image))
        out = {"main": self.classifier(x)}
        if self.multi_level:
            out["aux"] = self.aux_classifier(x)
        if self.return_features:  # LSD-seg's generator inputs: the only hidden map, stride 4, three times
            out.update(feat_deep=x, feat_mid=x, feat_shallow=x)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classifier convs (the 10x learning-rate group)."""
        heads = [self.classifier, self.aux_classifier] if self.multi_level else [self.classifier]
        return [p for head in heads for p in head.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the stem."""
        return list(self.stem.parameters())
