"""Typed configuration: recipe TOML -> frozen dataclasses, with `--set dotted.key=value` overrides.

Precedence is `--set` > TOML > dataclass defaults (torchtitan's ConfigManager). Every field carries a docstring
directly under it; `field_docs()` reads them back from this file's source so that `segadapt train --help` prints
them. Unknown keys and wrong types raise `ConfigError` naming the file, the dotted key, the expected type and the
nearest valid key. The method section is the one polymorphic place: its dataclass is chosen by `method.name`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Annotated
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

# Caffe-era DeepLab mean, BGR order (AdaptSegNet/AdvSemiSeg IMG_MEAN); images are not divided by a std.
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)

_frozen = dataclass(kw_only=True, slots=True, frozen=True)


class ConfigError(ValueError):
    """A recipe or override that does not fit the dataclasses; the message names file, key and expectation."""


# -------------------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field, attached to its type with `typing.Annotated` (the aliases below) and
    checked when a recipe or `--set` is loaded, in the type errors' style: `FILE: key 'train.log_every': expected
    int >= 1, got 0`. A range that depends on another field is a section's `_invalid` method."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Range(1)]
"""Counts, sizes and periods that must be at least 1."""
NonNegativeInt = Annotated[int, Range(0)]
"""Counts, steps and sizes where 0 means "off" or "native"."""
PositiveFloat = Annotated[float, Range(0, low_open=True)]
"""Learning rates, temperatures, timeouts."""
NonNegativeFloat = Annotated[float, Range(0)]
"""Loss weights and multipliers (0 switches a term off)."""
Probability = Annotated[float, Range(0, 1)]
"""Probabilities, thresholds and fractions in [0, 1]."""
Beta = Annotated[float, Range(0, 1, high_open=True)]
"""Adam betas, SGD momentum and dropout: in [0, 1)."""
Percent = Annotated[float, Range(0, 100)]
"""Percentiles in [0, 100]."""
DomainLabel = Annotated[int, Range(0, 1)]
"""A discriminator's target: 0 or 1."""


# --------------------------------------------------------------------------------------------------------- model
@_frozen
class Model:
    name: str = "deeplabv2"
    """Segmenter architecture: "deeplabv2" (DeepLab-v2, AdaptSegNet/AdvSemiSeg), "deeplabv3plus" (U2PL), "fcn8s"
    (LSD-seg), "hypercolumn" (Mix-and-Match) or "toy" (two-layer test net)."""
    backbone: str = "resnet101"
    """ResNet depth: "resnet18", "resnet34", "resnet50" or "resnet101" (the official one)."""
    width: PositiveInt = 64
    """Channels of the ResNet stem; 64 is the official network, the demo uses a narrow one to train on CPU."""
    num_classes: PositiveInt = 19
    """Output classes: 19 Cityscapes trainIds, 21 for VOC."""
    multi_level: bool = True
    """Also predict from layer3 (the conv4 'aux' head), as DeeplabMulti does."""
    aspp_rates: tuple[PositiveInt, ...] = (6, 12, 18, 24)
    """Dilation rates of the ASPP classifier branches."""
    aspp_sum_first_two_only: bool = True
    """Official quirk: Classifier_Module.forward returns inside its loop, so only the first two branches are summed."""
    pretrained: str = ""
    """Weights to start from: an official snapshot, the ImageNet+COCO init (`Scale.` keys) or torchvision ResNet."""
    channels_last: bool = True
    """Run the segmenter in channels-last memory format."""
    compile: str = "auto"
    """torch.compile the segmenter: "auto" (on for CUDA), "on" or "off"."""


# ---------------------------------------------------------------------------------------------------------- data
@_frozen
class Stream:
    dataset: str = ""
    """Dataset format: "gta5", "cityscapes", "synthia", "voc", or "" when the method does not use this stream."""
    root: str = ""
    """Dataset root directory in its published layout."""
    split: str = "train"
    """Split of the dataset: "train" or "val" (Cityscapes, VOC); GTA5 and SYNTHIA use every image for "train"."""
    list_file: str = ""
    """Optional file of image ids, one per line (U2PL split format); empty means the whole split."""
    fraction: Annotated[float, Range(0, 1, low_open=True)] = 1.0
    """Keep this fraction of the (listed) images, drawn at random with `split_seed` (AdvSemiSeg's --partial-data);
    1.0 keeps all. The ids drawn are written to the run directory's splits/ folder."""
    count: NonNegativeInt = 0
    """Keep exactly this many images, drawn like `fraction` (U2PL's 92 / 183 / ... label counts); 0 = use fraction."""
    split_seed: NonNegativeInt = 0
    """Seed of the `fraction` / `count` draw; the same seed draws the same ids on every machine."""
    complement: bool = False
    """Take the images the `fraction` / `count` draw leaves out instead (the unlabeled rest of a partial split)."""
    fraction_rounding: str = "nearest"
    """How `fraction` becomes a count: "floor" (official AdvSemiSeg train.py:253 `int(p * N)`: 1322 of 10582 at
    1/8) or "nearest" (round(p * N), 1323); at least 1 either way."""
    batch_size: PositiveInt = 1
    """Images per step on this stream over the whole job (the global batch; each of W processes reads batch_size / W
    under train.batch_scaling = "keep_global", batch_size under "scale_lr")."""
    resize: tuple[NonNegativeInt, NonNegativeInt] = (0, 0)
    """(W, H) the whole image is resized to first (bicubic image, nearest label); (0, 0) keeps the native size."""
    scale_range: tuple[PositiveFloat, PositiveFloat] = (1.0, 1.0)
    """Random scale factor range applied after `resize`; (1, 1) disables it."""
    crop: tuple[NonNegativeInt, NonNegativeInt] = (0, 0)
    """(W, H) random crop (padded with ignore where the image is smaller); (0, 0) disables cropping."""
    flip: bool = False
    """Random horizontal flip, shared by image and label."""
    small_images: str = "pad"
    """An image smaller than the crop: "pad" it (bottom/right, mean colour, label ignore; VOCDataSet) or "resize" it
    to the crop size (bilinear image, OpenCV INTER_NEAREST label; AdvSemiSeg's VOCGTDataSet, D's real stream)."""

    def _invalid(self) -> Iterator[tuple[str, str, Any]]:
        if self.scale_range[0] > self.scale_range[1]:
            yield "scale_range", "(min, max) with min <= max", self.scale_range


@_frozen
class Synthshift:
    generate: bool = False
    """Generate the synthshift dataset into `out` before training when it is missing."""
    out: str = "runs/data/synthshift"
    """Directory the generated GTA5-layout and Cityscapes-layout trees are written to."""
    count: PositiveInt = 200
    """Images per domain (the target domain is split 3:1 into train and val)."""
    size: tuple[PositiveInt, PositiveInt] = (256, 128)
    """(W, H) of the generated images."""
    seed: NonNegativeInt = 0
    """Generator seed; the same seed writes byte-identical files."""


@_frozen
class Data:
    loader: str = "auto"
    """Input pipeline: "auto" (DALI when it imports), "dali", "torch" or "synthetic" (benchmarks)."""
    num_workers: NonNegativeInt = 2
    """Worker processes (torch) or threads (DALI) per stream."""
    prefetch: PositiveInt = 2
    """Batches prepared ahead of the training step, per stream."""
    channel_order: str = "bgr"
    """Channel order fed to the network: "bgr" (Caffe-era DeepLab weights) or "rgb" (torchvision weights)."""
    mean: tuple[float, float, float] = BGR_MEAN
    """Per-channel mean subtracted from 0..255 pixels, in `channel_order`."""
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0)
    """Per-channel std the centred pixels are divided by; (1, 1, 1) is the official DeepLab-v2 protocol."""
    skip_bad: bool = False
    """Before the first step every stream's tree is checked (pairs, sizes and formats from the file headers, label
    ids of a sample); a bad file stops the run. True trains on the rest instead; either way the files are listed in
    the run directory's data_check.txt."""
    check_all_label_ids: bool = False
    """Read every label file's ids in that check, not only an evenly spaced sample of them."""
    source: Stream = field(default_factory=Stream)
    """Labelled source-domain stream (domain adaptation)."""
    target: Stream = field(default_factory=Stream)
    """Unlabelled target-domain stream (domain adaptation); labels are read but only the oracle uses them."""
    labeled: Stream = field(default_factory=Stream)
    """Labelled stream (semi-supervised)."""
    unlabeled: Stream = field(default_factory=Stream)
    """Unlabelled stream (semi-supervised)."""
    labeled_real: Stream = field(default_factory=Stream)
    """Labelled stream of D's "real" one-hot maps (AdvSemiSeg, method.d_real_stream; the official trainloader_gt)."""
    val: Stream = field(default_factory=Stream)
    """Validation stream used by periodic and final evaluation."""
    synthshift: Synthshift = field(default_factory=Synthshift)
    """On-the-fly synthshift generation (demo and tests)."""


# ------------------------------------------------------------------------------------------------------- methods
# Fields that several method sections share are written once, in a field group, and mixed into those sections. A
# section names its own `name` default, and may re-declare a shared field for another default or a more specific
# docstring (`field_docs` looks a field's docstring up along the class's bases). A group keeps no slots of its own
# (`__slots__ = ()`) so that a section can mix several; the sections themselves are slotted.
_group = dataclass(kw_only=True, frozen=True)


@_group
class _MethodFields:
    __slots__ = ()
    name: str = ""
    """Method name; selects this section's fields."""


@_group
class _SegLoss(_MethodFields):
    __slots__ = ()
    align_corners: bool = True
    """align_corners of the training upsampler (`interp`); the official PyTorch >= 0.4 code passes True."""
    lambda_seg: NonNegativeFloat = 0.1
    """Weight of the aux (conv4) segmentation loss, LAMBDA_SEG; 0 disables the aux head's loss."""


@_group
class _Discriminator(_MethodFields):
    __slots__ = ()
    d_lr: PositiveFloat = 1e-4
    """Discriminator Adam learning rate, LEARNING_RATE_D (poly-decayed like the segmenter's)."""
    d_betas: tuple[Beta, Beta] = (0.9, 0.99)
    """Discriminator Adam betas, optim.Adam(model_D.parameters(), betas=(0.9, 0.99))."""
    d_width: PositiveInt = 64
    """Channels of the discriminator's first conv (official FCDiscriminator ndf = 64; doubled at each layer)."""


@_frozen
class SourceOnly(_SegLoss):
    name: str = "sourceonly"


@_frozen
class Supervised(_SegLoss):
    name: str = "supervised"
    """Method name: trains on a labelled stream only (the oracle when that stream is the target domain)."""
    stream: str = "target"
    """Which labelled stream to train on: "target", "labeled" or "source"."""
    sparse_points: NonNegativeInt = 0
    """> 0: Mix-and-Match's sparse fine-tuning (Larsson's hypercolumn head): cross-entropy at this many random pixels
    per image through the segmenter's `point_logits` output instead of the dense map (official 256); 0 = dense."""
    sparse_margin: Annotated[float, Range(0, 0.5, high_open=True)] = 0.1875
    """Fraction of the width / height left out on each side when drawing sparse points (official: coordinates
    uniform in [96, 416] of a 512 crop = 96 / 512)."""


@_frozen
class AdaptSegNet(_SegLoss, _Discriminator):
    name: str = "adaptsegnet"
    lambda_adv_target1: NonNegativeFloat = 0.0002
    """Adversarial weight of the conv4 discriminator, LAMBDA_ADV_TARGET1 (0 = single-level)."""
    lambda_adv_target2: NonNegativeFloat = 0.001
    """Adversarial weight of the conv5 discriminator, LAMBDA_ADV_TARGET2."""
    gan: str = "vanilla"
    """GAN objective: "vanilla" (BCE with logits) or "ls" (least squares, MSE)."""
    d_upsample_output: bool = False
    """False: BCE on the discriminator's 1/32 map (official code); True: upsample it to input size (paper)."""
    source_label: DomainLabel = 0
    """Domain label of source predictions."""
    target_label: DomainLabel = 1
    """Domain label of target predictions."""


# <advsemiseg section: owned by the AdvSemiSeg work>
@_frozen
class AdvSemiSeg(_Discriminator):
    name: str = "advsemiseg"
    align_corners: bool = True
    """align_corners of the `interp` upsampler (logits and D output to input size); train.py passes True on
    PyTorch >= 0.4 (older PyTorch behaved the same)."""
    lambda_adv_pred: NonNegativeFloat = 0.01
    """Adversarial weight on labelled predictions, --lambda-adv-pred: 0.01 in the README command (Table 5); the
    code default LAMBDA_ADV_PRED is 0.1."""
    lambda_semi: NonNegativeFloat = 0.1
    """Weight of the CE on D-confident pseudo-labels of unlabelled images, LAMBDA_SEMI (0 disables it)."""
    lambda_semi_adv: NonNegativeFloat = 0.001
    """Adversarial weight on unlabelled predictions, LAMBDA_SEMI_ADV."""
    mask_t: Probability = 0.2
    """T_semi, MASK_T: unlabelled pixels whose sigmoid(D) is below it get no pseudo-label."""
    semi_start: NonNegativeInt = 5000
    """Step from which L_semi is used, SEMI_START (before it only L_semi_adv trains on unlabelled images)."""
    semi_start_adv: NonNegativeInt = 0
    """Step from which the unlabelled branch runs at all, SEMI_START_ADV."""
    d_remain: bool = True
    """D_REMAIN: the discriminator's fake batch also holds the unlabelled predictions (when that branch ran)."""
    pred_label: DomainLabel = 0
    """D target of predicted (fake) maps, pred_label."""
    gt_label: DomainLabel = 1
    """D target of one-hot ground truth (real) maps, gt_label; also the target of the segmenter's adversarial terms."""
    d_real_stream: bool = False
    """Official: D's one-hot "real" maps come from their own stream, `data.labeled_real` (train.py trainloader_gt:
    VOCGTDataSet over the labelled ids with its own sampler; small images resized, never padded); false one-hots the
    labelled batch's own (padded) labels."""


# <u2pl section: owned by the U2PL work>
@_frozen
class U2PL(_MethodFields):
    name: str = "u2pl"
    align_corners: bool = True
    """align_corners of every training upsampler (official F.interpolate(..., align_corners=True))."""
    ema_decay: Probability = 0.99
    """EMA teacher momentum cap, net.ema_decay; the momentum is min(1 - 1/(step - sup_only_steps + 1), ema_decay)."""
    sup_only_steps: NonNegativeInt = 0
    """Supervised-only warm-up in steps, trainer.sup_only_epoch x steps per epoch (official VOC 1 epoch,
    Cityscapes 0); the teacher is copied from the student when it ends."""
    teacher_copy_steps: PositiveInt = 1
    """Steps from sup_only_steps on after which the teacher is set to the student instead of the EMA update. Official
    quirk: `t.data = s.data` sits inside the iteration loop of epoch sup_only_epoch, so the teacher shares the student's
    storage for that whole epoch: set it to the steps per epoch; 1 gives the EMA formula alone (momentum 0 at first)."""
    copy_teacher_buffers: bool = False
    """Also copy the student's BatchNorm running statistics when the teacher is first set to the student. Official:
    off (parameters only; the teacher's statistics were gathered by its own train-mode forwards of its initial
    weights, harmless with a pretrained backbone). From scratch those statistics belong to untrained weights and the
    first pseudo-labels are noise that drags the student down (measured on the synthshift demo), so the demo sets it."""
    onehot: str = "official"
    """One-hot maps fed to the contrastive loss. "official": the official `label_onehot` (u2pl/utils/utils.py:50-59)
    scatters along dim 0 with a (B, 1, H, W) index, so per half-batch and per rank image 0 holds the union of the
    half's labels (ignore counted as class 0 where image 0 is valid) and images 1..B-1 stay all zero; every published
    U2PL number ran with it. "true": a one-hot per image, what the paper describes."""
    steps_per_epoch: NonNegativeInt = 0
    """Official epoch length in steps (len(loader_l)); > 0 makes the unreliable share and alpha_t decay once per
    epoch (epoch / epochs, as the official code) instead of every step (step / total_steps)."""
    cutmix_p: Probability = 0.5
    """Probability that the unlabeled batch is CutMixed (one coin per batch, np.random.uniform(0, 1) < 0.5)."""
    drop_percent: Percent = 80.0
    """trainer.unsupervised.drop_percent: the unreliable share starts at 100 - 80 = 20% and decays linearly to 0."""
    low_entropy_threshold: Percent = 20.0
    """alpha_0, contrastive.low_entropy_threshold: anchors below the alpha_t-th entropy percentile, negatives above
    the (100 - alpha_t)-th; alpha_t decays linearly to 0."""
    low_rank: NonNegativeInt = 3
    """contrastive.low_rank r_l: a negative's class ranks in [low_rank, high_rank) of the teacher's probabilities."""
    high_rank: PositiveInt = 20
    """contrastive.high_rank r_h."""
    current_class_threshold: Probability = 0.3
    """delta_p, contrastive.current_class_threshold: anchors need teacher probability > delta_p for their class."""
    current_class_negative_threshold: Probability = 1.0
    """delta_n, contrastive.current_class_negative_threshold: negatives need probability < delta_n."""
    num_queries: PositiveInt = 256
    """Anchors sampled per class and step, contrastive.num_queries."""
    num_negatives: PositiveInt = 50
    """Negatives drawn from the class's memory queue per anchor, contrastive.num_negatives."""
    temperature: PositiveFloat = 0.5
    """InfoNCE temperature, contrastive.temperature."""
    queue_length: NonNegativeInt = 0
    """Memory-queue length per class; 0 = official (50000 for class 0, 30000 for the others)."""
    queue_gather_cap: NonNegativeInt = 0
    """Rows of negative keys each rank sends to the memory queues per step; 0 = every pixel row (exact, official:
    the fixed-size all_gather carries every pixel row of the enqueued images per rank, each key once in the
    representation's dtype and its class slots as int8, expanded after the gather: at the Cityscapes recipe on 8
    ranks, 37k rows (one 193 x 193 map, 2 slots) send 19 MB and receive 153 MB per rank per step under bf16 AMP,
    where float32 rows per slot received 615 MB; most rows are no negative). > 0: each rank first compacts its
    (pixel, class slot) rows to its newest `cap` negatives, order kept, on the device (no host sync), and the
    all_gather carries cap rows. Exact while no rank has
    more negatives than the cap; beyond it that rank's oldest negatives are dropped (the queue would have kept only
    the newest of them anyway once more than a ring's length arrive) and `diag/queue_dropped` (summed over ranks)
    counts them on log steps."""
    unsup_weight: NonNegativeFloat = 1.0
    """Weight of the unsupervised loss, trainer.unsupervised.loss_weight."""
    contra_weight: NonNegativeFloat = 1.0
    """Weight of the contrastive loss, trainer.contrastive.loss_weight; 0 skips the contrastive branch."""
    aux_weight: NonNegativeFloat = 0.4
    """Weight of the layer3 aux head's supervised loss, net.aux_loss.loss_weight (used when the model has it)."""
    ohem: bool = False
    """Supervised loss: OHEM cross-entropy (criterion.type = "ohem", official on Cityscapes) instead of plain CE."""
    ohem_thresh: Probability = 0.7
    """OHEM probability threshold, criterion.kwargs.thresh."""
    ohem_min_kept: PositiveInt = 100000
    """OHEM minimum kept pixels per batch, criterion.kwargs.min_kept."""

    def _invalid(self) -> Iterator[tuple[str, str, Any]]:
        if self.low_rank >= self.high_rank:
            yield "low_rank", f"< method.high_rank ({self.high_rank})", self.low_rank


# <lsdseg section: owned by the LSD-seg work>
@_frozen
class LSDSeg(_MethodFields):
    name: str = "lsdseg"
    l1_weight: NonNegativeFloat = 1.0
    """Weight of the generator's L1 reconstruction loss (both domains, images in [0, 1]), --l1_weight."""
    adv_weight: NonNegativeFloat = 0.1
    """Weight of F's flipped-label domain loss (generated source -> 2 target-real, generated target -> 0
    source-real; trainer_LSD.py:281-282), --adv_weight."""
    c_weight: NonNegativeFloat = 0.1
    """Weight of F's loss on D's auxiliary segmentation of generated source images, --c_weight."""
    g_adv_weight: NonNegativeFloat = 0.1
    """Weight of G's 4-way domain loss (src fake -> 0, tgt fake -> 2); hard-coded 0.1 in trainer_LSD.py lossG."""
    g_lr: PositiveFloat = 1e-4
    """Generator Adam learning rate (train.py optimG lr=0.0001)."""
    d_lr: PositiveFloat = 1e-4
    """Discriminator Adam learning rate (train.py optimD lr=0.0001)."""
    gd_betas: tuple[Beta, Beta] = (0.7, 0.999)
    """Adam betas of the generator and the discriminator (train.py betas=(0.7, 0.999))."""
    d_width: PositiveInt = 128
    """Channels of every discriminator layer (official _netD: 2 * ndf = 128)."""
    g_width: NonNegativeInt = 0
    """Generator base channels ngf (official _netG ngf = 64); 0 = model.width (64 for the official FCN-8s)."""
    dropout: Beta = 0.5
    """Dropout of every generator / discriminator ResnetBlock (model_utils.py nn.Dropout(0.5))."""
    bias_lr_mult: NonNegativeFloat = 2.0
    """Learning-rate multiplier of the segmenter's biases (train.py: get_parameters(bias=True) at lr * 2)."""
    align_corners: bool = True
    """align_corners when upsampling stride-8 logits to the label (DeepLab / toy); FCN-8s scores are already at
    label size, where the upsampling is the identity."""
    label_d_swapped_hw: bool = True
    """Official bug: D's auxiliary-class labels as transform_label_forD made them under PyTorch 0.2 (PIL resize with
    (h, w) swapped, the (w, h) map copied row-major into (h, w)); false = a correct nearest resize to D's (h, w)."""


# <mixmatch sections: owned by the Mix-and-Match work>
@_frozen
class Colorization(_MethodFields):
    name: str = "colorization"
    """Method name: Mix-and-Match stage 1, self-supervised colorization pre-training."""
    points: PositiveInt = 128
    """Random pixels per image whose hypercolumn predicts their colour (Larsson et al.'s sparse training; their
    count is [UNVERIFIED], the M&M fine-tuning prototxt samples 256)."""
    bins: PositiveInt = 32
    """Histogram bins of hue and of chroma (Larsson et al.: K = 32 [UNVERIFIED])."""
    chroma_max: PositiveFloat = 128.0
    """Chroma (LCh, the polar form of CIE Lab a*b*) of the last chroma bin; larger values fall into it."""
    lambda_hue: NonNegativeFloat = 5.0
    """Weight of the chroma-weighted hue loss, Larsson et al.'s lambda_H = 5 [UNVERIFIED]."""


@_frozen
class MixMatch(_MethodFields):
    name: str = "mixmatch"
    """Method name: Mix-and-Match stage 2, patch sampling + class-wise graph + triplet loss."""
    patches_per_image: PositiveInt = 9
    """Patches sampled per image: RandomSamplingLayer num = 144 over a batch of 16."""
    side_range: tuple[PositiveInt, PositiveInt] = (64, 256)
    """(min, max) side in pixels of the square patches, drawn uniformly (official VOC; Cityscapes: fixed 128)."""
    output_size: PositiveInt = 128
    """Side every patch is resized to before the network (official output_size = 128)."""
    bg_ratio: Probability = 0.1
    """At most round(bg_ratio * patches_per_image) patches of an image may be centred on `bg_class` (bg_ratio)."""
    bg_class: Annotated[int, Range(-1)] = 0
    """The background trainId that bg_ratio limits (VOC 0); -1: no background class (Cityscapes)."""
    max_overlap: Probability = 0.6
    """A patch whose IoU with an already kept patch of the same image exceeds this is discarded (official 0.6)."""
    candidates_per_image: PositiveInt = 64
    """Candidate boxes drawn per image in bulk, from which patches are kept greedily in random order."""
    margin: NonNegativeFloat = 2.1
    """Triplet margin alpha on unit-norm features: max(0, alpha + |q-p|^2 - |q-n|^2) (official 2.1)."""

    def _invalid(self) -> Iterator[tuple[str, str, Any]]:
        if self.side_range[0] > self.side_range[1]:
            yield "side_range", "(min, max) with min <= max", self.side_range


METHOD_SECTIONS: dict[str, type] = {
    "sourceonly": SourceOnly,
    "supervised": Supervised,
    "adaptsegnet": AdaptSegNet,
    "advsemiseg": AdvSemiSeg,
    "u2pl": U2PL,
    "lsdseg": LSDSeg,
    "colorization": Colorization,
    "mixmatch": MixMatch,
}
MethodSection = SourceOnly | Supervised | AdaptSegNet | AdvSemiSeg | U2PL | LSDSeg | Colorization | MixMatch


# -------------------------------------------------------------------------------------------- optim and schedule
@_frozen
class Optim:
    name: str = "sgd"
    """Segmenter optimizer: "sgd" or "adam"."""
    lr: PositiveFloat = 2.5e-4
    """Base learning rate of the backbone."""
    momentum: Beta = 0.9
    """SGD momentum."""
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: NonNegativeFloat = 5e-4
    """L2 weight decay."""
    head_lr_mult: NonNegativeFloat = 10.0
    """Learning-rate multiplier of the classifier heads (official: 10x)."""
    fused: str = "auto"
    """Fused optimizer kernels: "auto" (where the device has them), "on" or "off"."""
    official_repeated_groups: bool = False
    """Official quirk (AdaptSegNet, AdvSemiSeg): the backbone SGD group lists each parameter as often as
    get_1x_lr_params_NOscale yields it (Bottleneck convs 3x, downsample convs 4x), and SGD steps it once per listing."""


@_frozen
class Schedule:
    policy: str = "poly"
    """Learning-rate policy: "poly" (lr * (1 - step/total_steps) ** power), "constant", "step" (x gamma every
    `step_size` steps: LSD-seg's x0.1 every 8 epochs) or "multistep" (x gamma at each of `milestones`: Caffe's
    multistep, Mix-and-Match)."""
    power: NonNegativeFloat = 0.9
    """Exponent of the poly policy."""
    gamma: PositiveFloat = 0.1
    """Factor of the "step" and "multistep" policies."""
    step_size: NonNegativeInt = 0
    """Steps between decays of the "step" policy."""
    milestones: tuple[PositiveInt, ...] = ()
    """Steps at which the "multistep" policy multiplies the learning rate by gamma."""
    total_steps: PositiveInt = 250000
    """Horizon of the poly decay, NUM_STEPS."""
    stop_step: PositiveInt = 150000
    """Training stops here, NUM_STEPS_STOP (official AdaptSegNet stops at 150k of a 250k schedule)."""

    def _invalid(self) -> Iterator[tuple[str, str, Any]]:
        if self.policy == "poly" and self.stop_step > self.total_steps:
            # lr * (1 - step / total) ** power is complex past the horizon
            yield "stop_step", f"<= schedule.total_steps ({self.total_steps}) under policy 'poly'", self.stop_step
        if self.policy == "step" and self.step_size < 1:
            yield "step_size", ">= 1 under policy 'step'", self.step_size
        if self.policy == "multistep" and (
            not self.milestones or list(self.milestones) != sorted(set(self.milestones))
        ):
            yield "milestones", "increasing steps, at least one, under policy 'multistep'", self.milestones


# ---------------------------------------------------------------------------------------------------------- train
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values


@_frozen
class Train:
    run_dir: str = "runs/{recipe}"
    """Output directory; "{recipe}" and "{method}" are substituted."""
    device: str = "auto"
    """"auto" (CUDA when present), "cuda", "cuda:N" or "cpu"."""
    precision: str = "auto"
    """"auto" (bf16 where supported, fp16 + GradScaler on older GPUs, fp32 on CPU), "bf16", "fp16" or "fp32"."""
    matmul_precision: str = "highest"
    """fp32 matmul precision, as torch.set_float32_matmul_precision: "highest" (PyTorch's default, fp32 throughout),
    "high" (TF32 tensor cores, or bf16x3) or "medium" (bf16). The fused upsample+CE backward follows it for fp32
    logits: TF32 reduction dots under "high" / "medium" (about 2x fewer instructions on sm_90, bench roofline)."""
    seed: NonNegativeInt = 1234
    """Seed of every random stream (model init, data order, augmentation)."""
    iter_size: PositiveInt = 1
    """Gradient accumulation micro-steps per optimizer step."""
    log_every: PositiveInt = 10
    """Steps between log lines; the only steps on which losses are read from the device."""
    eval_every: NonNegativeInt = 5000
    """Steps between evaluations on the val stream (0 = only at the end)."""
    checkpoint_every: NonNegativeInt = 5000
    """Steps between checkpoints (official: a snapshot every 5000)."""
    progress: bool = True
    """Show a progress bar with rate and ETA."""
    tensorboard: bool = True
    """Also write TensorBoard event files next to metrics.jsonl."""
    compare_methods: tuple[str, ...] = ()
    """Baselines trained with the same recipe afterwards and tabulated next to this method (the demo uses it)."""
    batch_scaling: str = "keep_global"
    """Multi-process runs (torchrun): "keep_global" splits every stream's batch_size over the W processes (must
    divide) and keeps the learning rates; "scale_lr" gives each process batch_size images (global batch W times
    larger) and multiplies every learning rate by W (linear scaling rule). The log says which."""
    sync_bn: bool = False
    """Multi-GPU runs: convert the segmenter's BatchNorm to SyncBatchNorm (U2PL's official setting); CUDA only."""
    dist_backend: str = "auto"
    """torch.distributed backend: "auto" (NCCL on CUDA, gloo on CPU), "nccl" or "gloo"."""
    dist_timeout_s: PositiveFloat = 1800.0
    """Seconds a collective waits for a missing rank before raising (no silent hang)."""
    official_host_roundtrips: bool = False
    """Reproduce the official loops' per-iteration host reads: every loss read with .item()-equivalent each step, as
    train_gta2cityscapes_multi.py's loss_seg_value += loss.data.cpu().numpy() does; for benchmarking the official-style
    loop only."""

    def _invalid(self) -> Iterator[tuple[str, str, Any]]:
        if self.matmul_precision not in MATMUL_PRECISIONS:
            yield "matmul_precision", "one of 'highest', 'high', 'medium'", self.matmul_precision


# ----------------------------------------------------------------------------------------------------------- eval
@_frozen
class Eval:
    input_size: tuple[NonNegativeInt, NonNegativeInt] = (1024, 512)
    """(W, H) images are resized to before whole-image inference; (0, 0) keeps the native size."""
    align_corners: bool = True
    """align_corners when upsampling logits to label size (official AdaptSegNet numbers need True on torch >= 0.4)."""
    mode: str = "whole"
    """"whole" image inference or "slide" (sliding window, as U2PL's eval.sh)."""
    crop: tuple[PositiveInt, PositiveInt] = (769, 769)
    """(W, H) window of sliding-window inference."""
    stride_ratio: Annotated[float, Range(0, 1, low_open=True)] = 2.0 / 3.0
    """Window stride as a fraction of the window size, for sliding-window inference."""
    class_subset: str = "all"
    """Classes averaged into mIoU: "all", "synthia16" or "synthia13"."""
    batch_size: PositiveInt = 1
    """Images per evaluation forward."""
    save_predictions: NonNegativeInt = 4
    """How many colourised prediction PNGs to write per evaluation."""
    max_images: NonNegativeInt = 0
    """Evaluate at most this many images (0 = all)."""
    protocol: str = "standard"
    """An official evaluation protocol scored beside the standard one (bilinear logits to the label size, argmax):
    "advsemi_voc" (evaluate_voc.py: pad to 505x505 with the mean colour, align_corners=True, crop back),
    "lsd_cityscapes" (eval_cityscapes.py: argmax at the input size, PIL NEAREST to the label size) or "standard"."""
    metric: str = "nanmean"
    """Mean of the official figure: "nanmean" (compute_iou.py) or "nonzero_diagonal" (AdvSemiSeg utils/metric.py
    ConfusionMatrix.jaccard: only classes with a correct pixel); the headline miou is always the nanmean."""


@_frozen
class Export:
    opset: Annotated[int, Range(17)] = 17
    """ONNX opset (>= 17)."""
    output: str = "label"
    """Exported output: "label" (argmax map at input size), "upsampled" logits or "logits" at stride 8."""
    dynamic: bool = False
    """Dynamic batch and image size in the exported graph."""


# ---------------------------------------------------------------------------------------------------------- start
@_frozen
class Start:
    recipe: str = ""
    """A recipe whose trained model this run starts from: `segadapt train` trains it first (once; a finished run with
    the same settings is reused) and sets model.pretrained to its final checkpoint, for this method and every
    compare_methods baseline alike. The demo's stand-in for the papers' ImageNet(+COCO) weights; "" = none."""
    set: tuple[str, ...] = ()
    """`--set` overrides of the start recipe, e.g. its own data draw, seed and run directory. The run's own --set
    flags do not reach the start."""


# ---------------------------------------------------------------------------------------------------------- root
@_frozen
class Config:
    model: Model = field(default_factory=Model)
    """The segmenter."""
    data: Data = field(default_factory=Data)
    """Input streams and their pipelines."""
    method: MethodSection = field(default_factory=SourceOnly)
    """The training method; its fields depend on `method.name`."""
    optim: Optim = field(default_factory=Optim)
    """The segmenter's optimizer."""
    schedule: Schedule = field(default_factory=Schedule)
    """Learning-rate schedule and stopping step."""
    train: Train = field(default_factory=Train)
    """The training loop."""
    eval: Eval = field(default_factory=Eval)
    """Evaluation protocol."""
    export: Export = field(default_factory=Export)
    """ONNX / TensorRT export."""
    start: Start = field(default_factory=Start)
    """A pretrained start trained by segadapt itself from another recipe (`segadapt train` only)."""
    recipe: str = ""
    """Name of the recipe this config came from (set by the loader)."""

    def _invalid(self) -> Iterator[tuple[str, str, Any]]:
        if self.start.recipe and self.model.pretrained:
            weights = f"'' while model.pretrained = {self.model.pretrained!r} (both name the weights: --set "
            yield "start.recipe", weights + "start.recipe='\"\"' to start from model.pretrained)", self.start.recipe


# ------------------------------------------------------------------------------------------------------- loading
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return " ".join([_type_name(args[0]), *(str(mark) for mark in args[1:] if isinstance(mark, Range))])
    if origin is tuple:
        return f"tuple[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _nearest(key: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.0)
    return match[0] if match else ""


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` of dotted `key` against annotation `tp`; convert lists to tuples and ints to floats where
    declared."""
    where = f"{source}: key '{key}'"
    origin = typing.get_origin(tp)
    if origin is Annotated:
        value = _coerce(value, typing.get_args(tp)[0], source, key)
        if not all(mark.holds(value) for mark in typing.get_args(tp)[1:] if isinstance(mark, Range)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected float (finite), got {type(value).__name__} {value!r}")
        return float(value)
    if tp in (int, bool, str):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=False)))
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")  # internal: a field type we never declare


def _build(cls: type, data: dict[str, Any], path: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{path or 'root'}] must be a table, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if key not in names:
            near = _nearest(key, names)
            prefix = f"{path}." if path else ""
            raise ConfigError(
                f"{source}: unknown key '{dotted}' (did you mean '{prefix}{near}'?); "
                f"valid keys of [{path or 'root'}]: {', '.join(names)}. Run `segadapt train --help` for every field."
            )
        tp = hints[key]
        if path == "" and key == "method":
            kwargs[key] = _build_method(value, source)
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted, source)
        else:
            kwargs[key] = _coerce(value, tp, source, dotted)
    section = cls(**kwargs)
    for key, expected, got in section._invalid() if hasattr(section, "_invalid") else ():
        dotted = f"{path}.{key}" if path else key
        raise ConfigError(f"{source}: key '{dotted}': expected {expected}, got {got!r}")
    return section


def _build_method(data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [method] must be a table, got {type(data).__name__}")
    name = data.get("name", "sourceonly")
    if name not in METHOD_SECTIONS:
        near = _nearest(str(name), list(METHOD_SECTIONS))
        raise ConfigError(
            f"{source}: key 'method.name' = {name!r} is not a method (did you mean {near!r}?); "
            f"known methods: {', '.join(sorted(METHOD_SECTIONS))}"
        )
    return _build(METHOD_SECTIONS[name], data, "method", source)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `key=value`; the value is read as TOML (`3`, `1e-4`, `true`, `[1, 2]`, `"x"`), else as a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def load_dict(tree: dict[str, Any], source: str, overrides: list[str] = (), recipe: str = "") -> Config:
    """Build a Config from a parsed TOML tree plus `--set` overrides."""
    tree = _deep_copy(tree)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    if recipe and "recipe" not in tree:
        tree["recipe"] = recipe
    where = source if not overrides else f"{source} (with --set {' '.join(overrides)})"
    return _build(Config, tree, "", where)


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree


_PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_RECIPES_DIR = _PACKAGE_DIR.parent / "recipes"
"""recipes/ of a source checkout (engine/ is the package root there); it wins, so a recipe edited in place is used."""
INSTALLED_RECIPES_DIR = _PACKAGE_DIR / "recipes"
"""The recipes shipped in the wheel as package data (`segadapt.recipes`)."""


def recipes_dir() -> Path:
    """Where `segadapt train NAME` looks for NAME.toml: a checkout's recipes/ first, else the installed copies."""
    in_checkout = _PACKAGE_DIR.name == "engine"  # installed, the package directory is named segadapt
    for candidate in (CHECKOUT_RECIPES_DIR, INSTALLED_RECIPES_DIR)[0 if in_checkout else 1 :]:
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    raise ConfigError(
        f"no recipes found: neither {CHECKOUT_RECIPES_DIR} (a source checkout) nor {INSTALLED_RECIPES_DIR} "
        "(an installed wheel) holds *.toml files; reinstall segadapt or pass a recipe file path"
    )


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe name (`demo`, the stem of recipes/demo.toml) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    directory = recipes_dir()
    candidate = directory / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = recipe_names()
        near = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown recipe {name_or_path!r}{hint}; recipes in {directory}: {', '.join(names)} "
            "(`segadapt recipes` lists them with their descriptions)"
        )
    return candidate


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def recipe_description(path: Path) -> str:
    """A recipe's first line, without its comment mark: what `segadapt recipes` prints beside the name."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line:
            break
    return ""


def load(name_or_path: str, overrides: list[str] = ()) -> Config:
    """Load a recipe by name or path and apply `--set` overrides."""
    path = resolve_recipe(name_or_path)
    try:
        tree = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    return load_dict(tree, str(path), overrides, recipe=path.stem)


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace` with dotted keys: replace(cfg, **{"train.seed": 3})."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (lists for tuples) that `load_dict` turns back into the same Config."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A `to_dict` / config.json tree as {dotted.key: value}, the keys `--set` takes."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {
        k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}.{key}" if prefix else key).items()
    }


# ----------------------------------------------------------------------------------------------------- field docs
def field_docs() -> dict[str, str]:
    """Map `Class.field` to the docstring written under the field in this file; a field a class inherits from a field
    group has the docstring of the nearest class along its bases that declares one."""
    module = sys.modules[__name__]
    tree = ast.parse(inspect.getsource(module))
    docs: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for first, second in zip(body, body[1:], strict=False):
            if (
                isinstance(first, ast.AnnAssign)
                and isinstance(first.target, ast.Name)
                and isinstance(second, ast.Expr)
                and isinstance(second.value, ast.Constant)
                and isinstance(second.value.value, str)
            ):
                docs[f"{node.name}.{first.target.id}"] = " ".join(second.value.value.split())
    for node in tree.body:
        cls = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
        for name in getattr(cls, "__dataclass_fields__", ()):
            for base in cls.__mro__:
                doc = docs.get(f"{base.__name__}.{name}")
                if doc:
                    docs.setdefault(f"{cls.__name__}.{name}", doc)
                    break
    return docs


def describe_fields() -> str:
    """Every config field as `dotted.key (type, default): doc`, for --help."""
    docs = field_docs()
    lines: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            dotted = f"{prefix}{f.name}"
            tp = hints[f.name]
            if prefix == "" and f.name == "method":
                for name, section in METHOD_SECTIONS.items():
                    lines.append(f"\n[method] when method.name = {name!r}")
                    walk(section, "method.")
                continue
            if dataclasses.is_dataclass(tp):
                lines.append(f"\n[{dotted}] {docs.get(f'{cls.__name__}.{f.name}', '')}")
                walk(tp, dotted + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(
                f"  {dotted} ({_type_name(tp)}, default {default!r}): {docs.get(f'{cls.__name__}.{f.name}', '')}"
            )

    walk(Config, "")
    return "\n".join(lines).lstrip("\n")
