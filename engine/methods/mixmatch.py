"""Mix-and-Match tuning (Zhan et al., AAAI 2018): colorization pre-training, then the "graph" stage, then fine-tuning.

Official code: Caffe, `VGG/colorize_pascal/{train_graph,finetune_seg}.prototxt`, `resources/*.py` (the
RandomSamplingLayer and GraphToTripletLayer Python layers) and `triplet_loss_layer.cpp` (METHODS.md A5). Three
stages on one network (engine.models.hypercolumn), each a training run whose `model.pretrained` is the previous
run's checkpoint:

1. "colorization" (stream "unlabeled"): grey image -> colour of random pixels, from their hypercolumn, through a
   colour head (FC 16w + ReLU + FC to 2 x `bins`), Larsson et al.'s hue/chroma form: the pixel's CIE LCh chroma
   and hue fall into `bins` bins each; loss = CE(chroma) + lambda_hue * chroma-weighted CE(hue).
2. "mixmatch" (stream "labeled"), one step:
   a. mix: per image draw `candidates_per_image` square boxes (side uniform in `side_range`, clamped to the image,
      inside the image), label each by the class at its centre pixel (255 there: unusable), then keep up to
      `patches_per_image` of them greedily in random order, skipping a box whose IoU with a kept box exceeds
      `max_overlap` and background-centred boxes beyond round(bg_ratio * patches_per_image); crop and resize every
      kept box to `output_size` in one `grid_sample` (bilinear, affine grids);
   b. features: L2-normalised flattened pool5 of the grey patches (the official Normalize on pool5);
   c. match: the class-wise connected graph: nodes are visited in a random order; each takes a random
      same-class node (positive) and a different-class node (negative) among the nodes visited before it, or, when
      none was, among all nodes (the official fallback pass); so every class's positive edges form a spanning tree;
   d. triplet loss max(0, margin + |q-p|^2 - |q-n|^2) summed over the triplets and divided by 2N (N = triplets
      that have both a positive and a negative; patches without one are masked out).
3. fine-tuning: the "supervised" method on stream "labeled" with this model (see the recipes mm_*_finetune).

Everything runs on the device without host synchronisation: sampling is bulk (fixed-size candidate sets, argmax
over random scores), the greedy selection loops over the `patches_per_image` slots (a constant), never over data.

| official                                                          | here                                         |
|-------------------------------------------------------------------|----------------------------------------------|
| colorization weights downloaded (Larsson's vgg16_colorize)        | trained by stage 1 on the target images      |
| Larsson: soft (kernel-density) hue / chroma histograms, KL loss   | hard bins, CE (a one-hot target's KL)         |
| patches drawn one by one, rejected while they overlap             | bulk candidates + greedy keep (same rule)    |
| patch count exactly num = 144                                     | up to patches_per_image per image: slots with |
|                                                                   | no admissible box left are masked out        |
| 4 GPUs via MPI, batch 16                                          | one process (the engine's DDP also works)    |
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt.config import Colorization as ColorizationConfig
from segadapt.config import Config
from segadapt.config import Data
from segadapt.config import MixMatch as MixMatchConfig
from segadapt.config import Optim
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.base import segmenter_groups

__all__ = [
    "Colorization",
    "MixMatch",
    "build",
    "class_graph",
    "colour_bins",
    "crop_patches",
    "rgb_to_lch",
    "sample_patches",
    "triplet_loss",
]


def _model_optimizer(model: nn.Module, optim: Optim, extra: list[dict]) -> OptimizerSpec:
    return OptimizerSpec(
        groups=[*segmenter_groups(model, optim), *extra],
        kind=optim.name,
        lr=optim.lr,
        momentum=optim.momentum,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
    )


def _check_hypercolumn(model: nn.Module, name: str) -> None:
    if not hasattr(model, "hypercolumn_channels"):
        raise ValueError(
            f"method.name = {name!r} needs model.name = 'hypercolumn' (the grey VGG-16-BN hypercolumn network), "
            f"got a {type(model).__name__}"
        )


# ------------------------------------------------------------------------------------------------ colorization
def rgb_to_lch(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sRGB in [0, 1], (..., 3, P) -> CIE L* (0..100), chroma (>= 0) and hue (radians, -pi..pi), each (..., P).

    sRGB (IEC 61966-2-1) -> linear -> XYZ (D65) -> L*a*b*; chroma = |(a*, b*)|, hue = atan2(b*, a*).
    """
    rgb = rgb.float().clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = rgb.new_tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = torch.einsum("ij,...jp->...ip", matrix, linear)
    xyz = xyz / rgb.new_tensor([0.95047, 1.0, 1.08883]).view(3, 1)
    eps = 216.0 / 24389.0
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1.0 / 3.0), (24389.0 / 27.0 * xyz + 16.0) / 116.0)
    fx, fy, fz = f.unbind(dim=-2)
    lightness = 116.0 * fy - 16.0
    a, b = 500.0 * (fx - fy), 200.0 * (fy - fz)
    return lightness, torch.sqrt(a * a + b * b), torch.atan2(b, a)


def colour_bins(chroma: Tensor, hue: Tensor, bins: int, chroma_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """Chroma bin, hue bin (int64, 0..bins-1) and the hue weight min(chroma / chroma_max, 1)."""
    weight = (chroma / chroma_max).clamp(0.0, 1.0)
    chroma_bin = (weight * bins).floor().long().clamp_max(bins - 1)
    hue_bin = ((hue + math.pi) / (2 * math.pi) * bins).floor().long().remainder(bins)
    return chroma_bin, hue_bin, weight


def pixels_rgb(image: Tensor, index: Tensor, data: Data) -> Tensor:
    """Undo the loader's normalisation at flat pixel indices: image (N, 3, H, W), index (N, P) -> RGB 0..1 (N, 3, P)."""
    values = image.flatten(2).gather(2, index.unsqueeze(1).expand(-1, 3, -1)).float()
    mean = values.new_tensor(data.mean).view(1, 3, 1)
    std = values.new_tensor(data.std).view(1, 3, 1)
    values = values * std + mean
    if data.channel_order == "bgr":
        values = values.flip(1)
    return values / 255.0


class Colorization(Method):
    """Stage 1: predict the hue / chroma bins of random pixels of the grey image from their hypercolumn."""

    streams = ("unlabeled",)
    unregistered = ("net", "colour_net")

    def __init__(self, model: nn.Module, cfg: ColorizationConfig, data: Data):
        super().__init__(model)
        _check_hypercolumn(model, cfg.name)
        for key in ("points", "bins"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"method.{key} = {getattr(cfg, key)}: expected a positive count")
        if cfg.chroma_max <= 0:
            raise ValueError(f"method.chroma_max = {cfg.chroma_max}: expected > 0")
        if data.channel_order not in ("bgr", "rgb"):
            raise ValueError(f"data.channel_order = {data.channel_order!r}: expected 'bgr' or 'rgb'")
        self.cfg = cfg
        self.data = data
        hidden = model.hidden_channels
        self.colour_head = nn.Sequential(
            nn.Conv2d(model.hypercolumn_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 2 * cfg.bins, 1)
        )
        self.colour_net = self.colour_head

    def distribute(self, wrap) -> None:
        super().distribute(wrap)
        self.colour_net = wrap(self.colour_head)

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        colour = {"params": list(self.colour_head.parameters()), "lr_mult": optim.head_lr_mult, "name": "colour_head"}
        return {"model": _model_optimizer(self.model, optim, [colour])}

    def colour_loss(self, logits: Tensor, image: Tensor, index: Tensor) -> Tensor:
        """logits (N, 2 * bins, P) at flat pixel indices `index` (N, P) of `image` -> 0-d loss."""
        bins = self.cfg.bins
        with torch.no_grad():
            _, chroma, hue = rgb_to_lch(pixels_rgb(image, index, self.data))
            chroma_bin, hue_bin, weight = colour_bins(chroma, hue, bins, self.cfg.chroma_max)
        logits = logits.float()
        loss_chroma = F.cross_entropy(logits[:, :bins], chroma_bin)
        loss_hue = (F.cross_entropy(logits[:, bins:], hue_bin, reduction="none") * weight).mean()
        return loss_chroma + self.cfg.lambda_hue * loss_hue

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        image = batch["unlabeled"]["image"]
        n, _, height, width = image.shape
        index = torch.randint(0, height * width, (n, self.cfg.points), device=image.device)
        points = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], dim=2).float()
        with ctx.autocast():
            column = self.net(image, output="hypercolumn", points=points)["hypercolumn"]
            logits = self.colour_net(column.unsqueeze(3)).squeeze(3)
        loss = self.colour_loss(logits, image, index)
        ctx.backward(loss)
        ctx.step("model")
        return {"loss/colour": loss.detach()}


# ---------------------------------------------------------------------------------------------------- mix-and-match
def _pairwise_iou(boxes: Tensor) -> Tensor:
    """Square boxes (N, K, 3) as (x0, y0, side) -> IoU (N, K, K)."""
    x0, y0, side = boxes.unbind(-1)
    x1, y1 = x0 + side, y0 + side
    iw = (torch.minimum(x1[:, :, None], x1[:, None]) - torch.maximum(x0[:, :, None], x0[:, None])).clamp_min(0)
    ih = (torch.minimum(y1[:, :, None], y1[:, None]) - torch.maximum(y0[:, :, None], y0[:, None])).clamp_min(0)
    inter = iw * ih
    area = side * side
    return inter / (area[:, :, None] + area[:, None] - inter)


def sample_patches(label: Tensor, cfg: MixMatchConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The mix step's boxes for a labelled batch (see the module docstring).

    Args:
        label: (N, H, W) int64 trainIds, 255 = ignore.
        cfg: the mixmatch section (patches_per_image, side_range, bg_ratio, bg_class, max_overlap,
            candidates_per_image).

    Returns:
        boxes (N, k, 3) float (x0, y0, side) in pixels, classes (N, k) int64 (label at the centre pixel
        (floor(x0 + side / 2), floor(y0 + side / 2))), kept (N, k) bool (False: no admissible box was left).
    """
    n, height, width = label.shape
    k, count = cfg.patches_per_image, cfg.candidates_per_image
    device = label.device
    side_max = float(min(cfg.side_range[1], height, width))
    side_min = float(min(cfg.side_range[0], side_max))
    side = side_min + torch.rand(n, count, device=device) * (side_max - side_min)
    x0 = torch.rand(n, count, device=device) * (width - side)
    y0 = torch.rand(n, count, device=device) * (height - side)
    boxes = torch.stack([x0, y0, side], dim=-1)
    cx = (x0 + side / 2).floor().long().clamp_max(width - 1)
    cy = (y0 + side / 2).floor().long().clamp_max(height - 1)
    classes = label.reshape(n, -1).gather(1, cy * width + cx)
    available = classes != 255
    background = classes == cfg.bg_class
    bg_cap = int(round(cfg.bg_ratio * k))
    iou = _pairwise_iou(boxes)
    score = torch.rand(n, count, device=device)  # random visiting order of the candidates
    rows = torch.arange(n, device=device)
    bg_count = torch.zeros(n, dtype=torch.long, device=device)
    picks, kept = [], []
    for _ in range(k):  # a loop over the k slots (a constant), batched over images and candidates
        allowed = available & (~background | (bg_count < bg_cap)[:, None])
        best = torch.where(allowed, score, -1.0).argmax(dim=1)
        ok = allowed[rows, best]
        picks.append(best)
        kept.append(ok)
        available = available & ~(ok[:, None] & (iou[rows, best] > cfg.max_overlap))
        bg_count = bg_count + (ok & background[rows, best]).long()
    picks_t = torch.stack(picks, dim=1)
    return (
        boxes.gather(1, picks_t[..., None].expand(-1, -1, 3)),
        classes.gather(1, picks_t),
        torch.stack(kept, dim=1),
    )


def crop_patches(image: Tensor, boxes: Tensor, output_size: int) -> Tensor:
    """Crop every box and resize it to output_size^2 (bilinear), as one grid_sample over the batch.

    Args:
        image: (N, C, H, W).
        boxes: (N, k, 3) (x0, y0, side) in pixels.

    Returns:
        (N * k, C, output_size, output_size), image-major (patch j of image i at i * k + j).
    """
    n, channels, height, width = image.shape
    k = boxes.shape[1]
    x0, y0, side = boxes.float().unbind(-1)
    theta = torch.zeros(n * k, 2, 3, device=image.device)
    theta[:, 0, 0] = (side / width).reshape(-1)
    theta[:, 1, 1] = (side / height).reshape(-1)
    theta[:, 0, 2] = ((2 * x0 + side) / width - 1).reshape(-1)
    theta[:, 1, 2] = ((2 * y0 + side) / height - 1).reshape(-1)
    grid = F.affine_grid(theta, [n * k, channels, output_size, output_size], align_corners=False)
    # The k grids of an image stacked along H, so grid_sample reads each image once without copying it k times.
    grid = grid.reshape(n, k * output_size, output_size, 2).to(image.dtype)
    patches = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    patches = patches.reshape(n, channels, k, output_size, output_size).transpose(1, 2)
    return patches.reshape(n * k, channels, output_size, output_size)


def class_graph(classes: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The class-wise connected graph over M patches, vectorised.

    Args:
        classes: (M,) int64 patch classes.
        valid: (M,) bool, patches that take part.

    Returns:
        positive (M,) and negative (M,) indices, has_positive (M,) and has_negative (M,) bool. A valid patch gets a
        positive whenever another valid patch has its class and a negative whenever a valid patch of another class
        exists; it picks at random among the patches visited before it (a random order), or among all when none was.
    """
    m = classes.shape[0]
    device = classes.device
    order = torch.rand(m, device=device)
    earlier = order[None, :] < order[:, None]
    pair = valid[:, None] & valid[None, :]
    same = pair & (classes[:, None] == classes[None, :]) & ~torch.eye(m, dtype=torch.bool, device=device)
    other = pair & (classes[:, None] != classes[None, :])

    def pick(candidates: Tensor) -> tuple[Tensor, Tensor]:
        before = candidates & earlier
        candidates = torch.where(before.any(dim=1, keepdim=True), before, candidates)
        scores = torch.where(candidates, torch.rand(m, m, device=device), -1.0)
        return scores.argmax(dim=1), candidates.any(dim=1)

    positive, has_positive = pick(same)
    negative, has_negative = pick(other)
    return positive, negative, has_positive, has_negative


def triplet_loss(query: Tensor, positive: Tensor, negative: Tensor, mask: Tensor, margin: float) -> Tensor:
    """sum_i mask_i * max(0, margin + |q_i - p_i|^2 - |q_i - n_i|^2) / (2 * sum_i mask_i); 0 when no triplet.

    Args:
        query, positive, negative: (M, D) features.
        mask: (M,) bool, the triplets that count.
    """
    d_pos = (query - positive).square().sum(dim=1)
    d_neg = (query - negative).square().sum(dim=1)
    hinge = (margin + d_pos - d_neg).clamp_min(0.0)
    mask = mask.to(hinge.dtype)
    return (hinge * mask).sum() / (2.0 * mask.sum().clamp_min(1.0))


class MixMatch(Method):
    """Stage 2: random patches of the labelled images, class-wise graph, triplet loss on normalised pool5."""

    streams = ("labeled",)

    def __init__(self, model: nn.Module, cfg: MixMatchConfig):
        super().__init__(model)
        _check_hypercolumn(model, cfg.name)
        lo, hi = cfg.side_range
        if not 1 <= lo <= hi:
            raise ValueError(f"method.side_range = {cfg.side_range}: expected 1 <= min <= max")
        for key in ("patches_per_image", "output_size"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"method.{key} = {getattr(cfg, key)}: expected a positive value")
        if cfg.candidates_per_image < cfg.patches_per_image:
            raise ValueError(
                f"method.candidates_per_image = {cfg.candidates_per_image}: expected >= method.patches_per_image "
                f"({cfg.patches_per_image})"
            )
        if not 0.0 <= cfg.bg_ratio <= 1.0 or not 0.0 <= cfg.max_overlap <= 1.0:
            raise ValueError(
                f"method.bg_ratio / method.max_overlap = {cfg.bg_ratio} / {cfg.max_overlap}: expected 0..1"
            )
        self.cfg = cfg

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        # The segmentation head and fc6/fc7 get no gradient here; they stay in the groups (SGD skips them).
        return {"model": _model_optimizer(self.model, optim, [])}

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        data = batch["labeled"]
        with torch.no_grad():
            boxes, classes, kept = sample_patches(data["label"], self.cfg)
            patches = crop_patches(data["image"], boxes, self.cfg.output_size)
            patches = patches.contiguous(memory_format=torch.channels_last)
            classes, kept = classes.reshape(-1), kept.reshape(-1)
            positive, negative, has_positive, has_negative = class_graph(classes, kept)
        with ctx.autocast():
            pool5 = self.net(patches, output="pool5")["pool5"]
        features = F.normalize(pool5.float().flatten(1), dim=1)
        counted = kept & has_positive & has_negative
        loss = triplet_loss(features, features[positive], features[negative], counted, self.cfg.margin)
        ctx.backward(loss)
        ctx.step("model")
        if not ctx.log_step:
            return {"loss/triplet": loss.detach()}
        diagnosis = triplet_margins(features.detach(), positive, negative, counted, self.cfg.margin)
        return {"loss/triplet": loss.detach(), **diagnosis}


@torch.no_grad()
def triplet_margins(features: Tensor, positive: Tensor, negative: Tensor, mask: Tensor, margin: float) -> dict:
    """Diagnosis of the triplet loss (issue 18): over the counted triplets, the mean of |q-n|^2 - |q-p|^2 (how far
    negatives sit beyond positives), the share violating the margin (hinge > 0, the ones that train) and the share
    with the negative closer than the positive (wrong order). 0 when no triplet counts."""
    d_pos = (features - features[positive]).square().sum(dim=1)
    d_neg = (features - features[negative]).square().sum(dim=1)
    gap = d_neg - d_pos
    weight = mask.float()
    count = weight.sum().clamp_min(1.0)
    return {
        "diag/triplet_gap": (gap * weight).sum() / count,
        "diag/triplet_active": ((gap < margin).float() * weight).sum() / count,
        "diag/triplet_wrong_order": ((gap < 0).float() * weight).sum() / count,
    }


def build(model: nn.Module, cfg: Config) -> Method:
    """Registry entry of both "colorization" and "mixmatch", dispatched on cfg.method.name."""
    if cfg.method.name == "colorization":
        return Colorization(model, cfg.method, cfg.data)
    if cfg.method.name == "mixmatch":
        return MixMatch(model, cfg.method)
    raise ValueError(
        f"method.name = {cfg.method.name!r}: segadapt.methods.mixmatch builds 'colorization' or 'mixmatch'"
    )
