"""LSD-seg: learning from synthetic data by image generation (Sankaranarayanan et al., CVPR 2018).

Official code: github.com/swamiviv/LSD-seg @ 25ea4ce, `code/train.py`, `code/torchfcn/trainer_LSD.py`,
`code/torchfcn/models/fcn8s_LSD.py` (`_netG`, `_netD`), `model_utils.py` (`ResnetBlock`), `utils.py`
(`cross_entropy2d`). Three networks: F (segmenter, FCN-8s VGG-16) whose embedding (fc7, pool4, pool3) feeds G (a
generator reconstructing the image), and D (a 4-way domain classifier + auxiliary segmenter on images). Domain
classes of D: 0 source-real, 1 source-fake (G of a source image), 2 target-real, 3 target-fake.

Losses, each `cross_entropy2d(size_average=False)` (a sum over pixels) and the total divided by the source batch
size n; images for D and for G's L1 target are the un-normalised inputs in [0, 1] (network channel order):
  L_D = [CE(D_s(src), 0) + CE(D_s(G(src)), 1) + CE(D_c(src), y_D) + CE(D_s(tgt), 2) + CE(D_s(G(tgt)), 3)] / n
  L_G = [CE(D_c(G(src)), y_D) + g_adv_weight * (CE(D_s(G(src)), 0) + CE(D_s(G(tgt)), 2))
         + l1_weight * (L1(G(src), src) + L1(G(tgt), tgt))] / n
  L_F = [CE(F(src), y) + adv_weight * (CE(D_s(G(src)), 2) + CE(D_s(G(tgt)), 0)) + c_weight * CE(D_c(G(src)), y_D)] / n
with y_D the source label resized (nearest) to D's output size (`label_for_d`). F's flipped domain targets: generated
source -> 2 (target-real), generated target -> 0 (source-real), trainer_LSD.py:281-282. Optimisers: F Adam 1e-5
betas (0.9, 0.999), biases at 2x lr; G and D Adam 1e-4 betas (0.7, 0.999); updates in the order D, G, F.

How one step here equals the official one. trainer_LSD.py:211-221 runs every network forward once per iteration, in
the order F(src), G(src), D(G(src)), D(src), F(tgt), G(tgt), D(tgt), D(G(tgt)), and computes L_D, L_G and L_F on that
one graph (shared dropout masks); it then backpropagates L_D (retain_graph) and steps D, L_G (retain_graph) and steps
G, L_F and steps F, each optimizer zeroed right before its backward, so each network is moved by its own loss only.
We run the same forwards in the same order (so a transcription of the official loop seeded alike draws the same
dropout masks on the CPU: the tests rely on it) and the same three backward passes, each restricted to its own
network's parameters (`backward(inputs=...)`: the official zeroing, without computing the gradients it throws away),
then step D, G, F. Every DDP-wrapped module gets one backward per step (F and G run two forwards, D four, as
officially).

Quirks (official code @ 25ea4ce under its Python 2 / PyTorch 0.2; "on" = what the paper recipes set):

| official behaviour                                                  | here                                         |
|---------------------------------------------------------------------|----------------------------------------------|
| pixel-sum CE divided by batch (size_average=False)                  | always (`_ce_sum`, fused kernel for F's CE)  |
| G's domain weight 0.1 hard-coded                                    | method.g_adv_weight = 0.1                    |
| F: Adam, biases 2x lr, no weight decay (Adam branch of train.py)    | method.bias_lr_mult = 2, optim.weight_decay=0|
| F lr x0.1 every 8 epochs (F only; epoch = 2975 target images)       | schedule.policy = "step"; G, D unscheduled   |
| F scores G(src) as class 2, target-real (trainer_LSD.py:281         | always (segadapt before issue 17 used 3,     |
|   lossF_src_adv_s uses domain_labels_tgt_real)                      |   target-fake: loss/f 22603 vs 22825 at it 0)|
| one forward of F, G, D per iteration (trainer_LSD.py:211-221); the  | always (before issue 17 segadapt re-ran G    |
|   D, G, F losses share graphs and dropout masks                     |   and D per update, with fresh masks)        |
| PyTorch 0.2: the G and F backward passes, run with retain_graph     | NOT reproduced: all three gradients at the   |
|   after optimD.step() / optimG.step(), read D's (and G's) weights   |   start-of-step weights, the steps after the |
|   as updated in place (`.data`, not version-checked). Measured by   |   three backwards; modern autograd refuses   |
|   the parity script (issue 17): G grads move up to 1.5e-1 rel, F's  |   saved weights changed in place             |
|   3.4e-2, at the official lrs                                       |                                              |
| y_D: PIL resize((h, w)) (the (W, H) argument swapped): a (w, h)     | method.label_d_swapped_hw = true (on): the   |
|   map, copied row-major into the (h, w) buffer by PyTorch 0.2:      |   same scramble (`label_for_d`); false: a    |
|   ~15% of cells agree with a correct resize. -1 -> 19 -> -1: the    |   correct PIL-NEAREST resize to (h, w).      |
|   ignore label stays ignored                                        |   255 stays ignored either way               |
| Python 2: max_epoch = ceil(100000 // 2975) = 33 epochs, so the loop | schedule.total_steps = stop_step = 98175     |
|   runs 98,175 iterations and never reaches --num_iters 100000       |   (paper recipes)                            |
| GTA5 (class defined, not wired in train.py): resize to (1280,       | data.source.resize = [1280, 703] (a fixed    |
|   int(1280 / aspect)) = 1280x703 for 1914x1052, image LANCZOS,      |   size; images of another aspect get 703     |
|   label resize(LANCZOS): Pillow resamples "P" labels NEAREST        |   too), image bicubic (the loader's filter), |
|   whatever the filter, "L" labels by interpolating ids (the mapped  |   label nearest (see lsd_gta2cs.toml)        |
|   labels were never released: their mode is unknown)                |                                              |
| train.py image_size [640, 320]; paper 1024x512 (author, LSD-seg#4)  | documented choice: 1024x512 crops, eval input|
| validation every 500 iterations, best snapshot kept                 | documented choice: train.eval_every = 5000   |
| G's last ConvT(64->3, k8, s2, p100) undoes FCN's 100-px padding     | padding = model.input_padding (FCN: 100),    |
|                                                                     | 3 (exact x2) for segmenters without padding  |
| G's skip concats assume sizes that match (640x320, 1024x512)        | 1-px ceil-mode excess cropped, other sizes   |
|                                                                     | bilinearly resized (never for those sizes)   |

Beside the official loop (issue 17's parity script, 2 iterations, same weights and inputs, dropout off, both loops
also run in float64: official main() with its nets `.double()` under float64 default dtype, this method
`.double()`): the float64 gradients of D, G and F agree to 1.9e-7 (134 tensors). In float32 a few tensors differ by up
to 1e-2 from either side, and that is float32 rounding of ill-conditioned sums, not semantics: measured against the
float64 answer, the official float32 run is as far or further off on the tensors the parity script flags (D
feature.8 conv, iteration 0: official 3.5e-3, here 2.0e-3; G stage3.4 conv, iteration 1: official 1.5e-2, here 2.7e-3),
and each side has tensors where the other is closer (F conv4_2, iteration 0: official 2.7e-6, here 5.6e-3).

Segmenter feature contract: the forward dict holds "main" plus either FCN-8s's "fc7", "pool4", "pool3" or the generic
"feat_deep", "feat_mid", "feat_shallow" (DeepLab-v2: layer4, layer3, layer2; toy: its stem three times; both
return them once `return_features` is set, which this method does), and the segmenter exposes their channels as
`feature_channels` (FCN-8s) or through its known attributes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch import nn

from segadapt.config import Config
from segadapt.config import LSDSeg as LSDSegConfig
from segadapt.config import Optim
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.losses import label_agreement

__all__ = ["Discriminator", "Generator", "LSDSeg", "ResBlock", "build", "feature_keys", "label_for_d"]

FCN_KEYS = ("fc7", "pool4", "pool3")
GENERIC_KEYS = ("feat_deep", "feat_mid", "feat_shallow")


class ResBlock(nn.Module):
    """Official ResnetBlock: x + Dropout(Act(InstanceNorm(Conv3x3(x)))).

    Args:
        channels: in = out channels.
        bias: conv bias (G: False, D: True).
        leaky: LeakyReLU(0.2) (D) instead of ReLU (G).
        dropout: dropout probability (official 0.5).
    """

    def __init__(self, channels: int, bias: bool, leaky: bool, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=bias)
        self.norm = nn.InstanceNorm2d(channels)
        self.act = nn.LeakyReLU(0.2) if leaky else nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (N, channels, H, W). Returns the same shape."""
        return x + self.dropout(self.act(self.norm(self.conv(x))))


def _up(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, dropout: float) -> list:
    """ConvTranspose2d (no bias) + InstanceNorm + ReLU + 2 ResBlocks, the generator's unit."""
    return [
        nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding, bias=False),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(),
        ResBlock(out_channels, False, False, dropout),
        ResBlock(out_channels, False, False, dropout),
    ]


def _match(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring a decoder map to `size`: crop a ceil-mode 1-pixel excess (top-left kept), else bilinear resize."""
    height, width = x.shape[-2:]
    if (height, width) == tuple(size):
        return x
    if 0 <= height - size[0] <= 1 and 0 <= width - size[1] <= 1:
        return x[:, :, : size[0], : size[1]]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Generator(nn.Module):
    """Official _netG: reconstructs the image from the segmenter's deep, mid and shallow features.

    Args:
        in_channels: channels of (deep, mid, shallow) features (official 4096, 512, 256).
        ngf: base width (official 64): stages produce 4, 8 | 4 | 2, 1 times ngf channels.
        final_padding: padding of the last ConvT(ngf->3, k8, s2) (official 100, FCN's input padding).
        dropout: ResBlock dropout.
    """

    def __init__(self, in_channels: tuple[int, int, int], ngf: int, final_padding: int, dropout: float) -> None:
        super().__init__()
        deep, mid, shallow = in_channels
        self.stage1 = nn.Sequential(*_up(deep, ngf * 4, 7, 1, 0, dropout), *_up(ngf * 4, ngf * 8, 3, 2, 1, dropout))
        self.stage2 = nn.Sequential(*_up(mid + ngf * 8, ngf * 4, 3, 2, 1, dropout))
        self.stage3 = nn.Sequential(
            *_up(shallow + ngf * 4, ngf * 2, 5, 2, 2, dropout), *_up(ngf * 2, ngf, 5, 2, 2, dropout)
        )
        self.stage4 = nn.ConvTranspose2d(ngf, 3, 8, 2, final_padding)

    def forward(self, deep: Tensor, mid: Tensor, shallow: Tensor, size: tuple[int, int]) -> Tensor:
        """Args: deep, mid, shallow: (N, C_i, h_i, w_i) features; size: (H, W) of the image.

        Returns: (N, 3, H, W) image in [0, 1] (Sigmoid).
        """
        x = _match(self.stage1(deep), mid.shape[-2:])
        x = _match(self.stage2(torch.cat((x, mid), 1)), shallow.shape[-2:])
        x = self.stage4(self.stage3(torch.cat((x, shallow), 1)))
        return torch.sigmoid(_match(x, size))


class Discriminator(nn.Module):
    """Official _netD: Conv(3->w, k4 s2 p2) + IN + LeakyReLU, 3 ResBlocks, MaxPool, 3 ResBlocks, MaxPool, 3 ResBlocks;
    heads `out_s` (4 domain classes) and `out_c` (num_classes), both 3x3.

    Args:
        num_classes: classes of the auxiliary segmentation head.
        width: channels of every layer (official 128).
        dropout: ResBlock dropout.
    """

    def __init__(self, num_classes: int, width: int = 128, dropout: float = 0.5) -> None:
        super().__init__()

        def blocks() -> list[nn.Module]:
            return [ResBlock(width, True, True, dropout) for _ in range(3)]

        self.feature = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 2), nn.InstanceNorm2d(width), nn.LeakyReLU(0.2),
            *blocks(), nn.MaxPool2d(2, 2), *blocks(), nn.MaxPool2d(2, 2), *blocks(),
        )  # fmt: skip
        self.out_s = nn.Conv2d(width, 4, 3, padding=1)
        self.out_c = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Args: image: (N, 3, H, W) in [0, 1]. Returns out_s (N, 4, h, w), out_c (N, num_classes, h, w) with
        h = floor((floor(H / 2) + 1) / 4)."""
        x = self.feature(image)
        return self.out_s(x), self.out_c(x)


def official_init(module: nn.Module) -> None:
    """util_fns.weights_init: every conv / transposed-conv weight N(0, 0.02), bias U(-0.01, 0.01)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.01, 0.01)


def feature_keys(model: nn.Module) -> tuple[str, str, str]:
    """The forward-dict keys of the generator's (deep, mid, shallow) inputs."""
    return FCN_KEYS if type(model).__name__ == "FCN8s" else GENERIC_KEYS


def feature_channels(model: nn.Module) -> tuple[int, int, int]:
    """Channels of the (deep, mid, shallow) features the segmenter returns (see the module docstring)."""
    if hasattr(model, "feature_channels"):
        return tuple(model.feature_channels)
    if hasattr(model, "layer4_channels"):  # DeepLab-v2: layer4, layer3, layer2 (all stride 8)
        layer2 = [m for m in model.layer2.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        return (model.layer4_channels, model.layer3_channels, layer2)
    if hasattr(model, "stem"):  # toy: its only hidden map
        return (model.stem.out_channels,) * 3
    raise ValueError(
        f"method.name = 'lsdseg' needs a segmenter returning {FCN_KEYS} or {GENERIC_KEYS}; "
        f"{type(model).__name__} does not (model.name: use 'fcn8s', 'deeplabv2' or 'toy')"
    )


def _ce_sum(logits: Tensor, label: Tensor | int) -> Tensor:
    """Official cross_entropy2d(size_average=False): summed over pixels; an int label fills the map (domain class)."""
    logits = logits.float()
    if isinstance(label, int):
        label = torch.full((logits.shape[0], *logits.shape[2:]), label, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, label, ignore_index=255, reduction="sum")


@functools.lru_cache(maxsize=64)
def _pil_nearest_index(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """Source index of each output index of PIL's NEAREST resize along one axis, read off PIL itself (PIL works in
    16.16 fixed point, so floor((i + 0.5) * in / out) picks a neighbour on ties); cached on the device, so a training
    step with fixed sizes copies nothing to it."""
    ramp = Image.fromarray(np.arange(size_in, dtype=np.int32)[None, :])
    return torch.from_numpy(np.asarray(ramp.resize((size_out, 1), Image.NEAREST))[0].astype(np.int64)).to(device)


def label_for_d(label: Tensor, size: tuple[int, int], swapped_hw: bool) -> Tensor:
    """D's auxiliary-class labels y_D: the source label (N, H, W) resized with PIL NEAREST to D's output (h, w).

    swapped_hw (official, method.label_d_swapped_hw): segmentation_datasets.py:144-154 `transform_label_forD` calls
    PIL `resize((h, w))`, whose argument is (width, height), so PIL returns a map of h columns and w rows;
    trainer_LSD.py:229-231 copies it into the (h, w) buffer `label_forD[i]`, which PyTorch 0.2 did element by element
    in row-major order (same element count, other shape): a reshape. Off: a correct nearest resize to (h, w). The
    ignore label survives either way (official -1 -> 19 -> -1; 255 here).
    """
    h, w = size
    rows_out, columns_out = (w, h) if swapped_hw else (h, w)
    rows = _pil_nearest_index(label.shape[1], rows_out, label.device)
    columns = _pil_nearest_index(label.shape[2], columns_out, label.device)
    return label[:, rows[:, None], columns[None, :]].reshape(label.shape[0], h, w)


class LSDSeg(Method):
    streams = ("source", "target")
    unregistered = ("net", "g_net", "d_net")

    def __init__(self, model: nn.Module, cfg: LSDSegConfig, full: Config) -> None:
        super().__init__(model)
        for key in ("d_width", "g_width"):
            value = getattr(cfg, key)
            if value < 0 or (key == "d_width" and value == 0):
                raise ValueError(f"method.{key} = {value}: expected a positive channel count")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"method.dropout = {cfg.dropout}: expected a probability in [0, 1)")
        self.cfg = cfg
        self.keys = feature_keys(model)
        if hasattr(model, "return_features"):  # DeepLab-v2 / toy return their generator inputs only on request
            model.return_features = True
        ngf = cfg.g_width or full.model.width
        final_padding = max(3, getattr(model, "input_padding", 0))
        self.generator = Generator(feature_channels(model), ngf, final_padding, cfg.dropout)
        self.discriminators = nn.ModuleDict({"d": Discriminator(full.model.num_classes, cfg.d_width, cfg.dropout)})
        official_init(self.generator)
        official_init(self.discriminators)
        self.g_net: nn.Module = self.generator
        self.d_net: nn.Module = self.discriminators["d"]
        # Inverse of the loader's normalisation, (x * std + mean) / 255, in the network's channel order.
        self.register_buffer("pixel_mean", torch.tensor(full.data.mean).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(full.data.std).view(1, 3, 1, 1) / 255, persistent=False)

    def distribute(self, wrap) -> None:
        super().distribute(wrap)
        self.g_net = wrap(self.generator)
        self.d_net = wrap(self.discriminators["d"])

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        cfg = self.cfg
        names = {id(p): name for name, p in self.model.named_parameters()}
        groups = []
        for part, params, mult in (
            ("backbone", self.model.backbone_parameters(), 1.0),
            ("head", self.model.head_parameters(), optim.head_lr_mult),
        ):
            biases = [p for p in params if names[id(p)].endswith("bias")]
            weights = [p for p in params if not names[id(p)].endswith("bias")]
            groups.append({"params": weights, "lr_mult": mult, "name": part})
            groups.append({"params": biases, "lr_mult": mult * cfg.bias_lr_mult, "name": f"{part}_bias"})
        model = OptimizerSpec(groups, optim.name, optim.lr, optim.momentum, optim.betas, optim.weight_decay)

        def adam(module: nn.Module, name: str, lr: float) -> OptimizerSpec:
            # Official: only F's optimizer decays (x0.1 every 8 epochs); G and D keep their learning rate.
            return OptimizerSpec([{"params": list(module.parameters()), "lr_mult": 1.0, "name": name}], "adam", lr,
                                 betas=cfg.gd_betas, scheduled=False)  # fmt: skip

        return {
            "model": model,
            "generator": adam(self.generator, "generator", cfg.g_lr),
            "discriminator": adam(self.discriminators, "discriminator", cfg.d_lr),
        }

    def to_unit(self, image: Tensor) -> Tensor:
        """Normalised network input (N, 3, H, W) -> the official D / L1 image: pixels / 255 in [0, 1]."""
        return image.float() * self.pixel_std + self.pixel_mean

    def _features(self, out: dict[str, Tensor]) -> list[Tensor]:
        return [out[k] for k in self.keys]

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.cfg
        source, target = batch["source"], batch["target"]
        n = source["image"].shape[0]  # official: every loss / len(data_source)
        real_src, real_tgt = self.to_unit(source["image"]), self.to_unit(target["image"])
        # One forward of each network per iteration, in trainer_LSD.py:211-221's order; all three losses below are
        # taken on this graph (shared dropout masks, as officially).
        with ctx.autocast():
            out_src = self.net(source["image"])
            fake_src = self.g_net(*self._features(out_src), tuple(real_src.shape[-2:]))
            src_fake_s, src_fake_c = self.d_net(fake_src)
            src_real_s, src_real_c = self.d_net(real_src)
            out_tgt = self.net(target["image"])
            fake_tgt = self.g_net(*self._features(out_tgt), tuple(real_tgt.shape[-2:]))
            tgt_real_s, _ = self.d_net(real_tgt)
            tgt_fake_s, _ = self.d_net(fake_tgt)
        label_d = label_for_d(source["label"], tuple(src_fake_c.shape[-2:]), cfg.label_d_swapped_hw)

        # (1) D: trainer_LSD.py:252-260.
        loss_d = (_ce_sum(src_real_s, 0) + _ce_sum(src_fake_s, 1) + _ce_sum(src_real_c, label_d)
                  + _ce_sum(tgt_real_s, 2) + _ce_sum(tgt_fake_s, 3)) / n  # fmt: skip
        # (2) G: trainer_LSD.py:267-274 (L1 is a mean over elements, as F.l1_loss).
        l1 = F.l1_loss(fake_src.float(), real_src) + F.l1_loss(fake_tgt.float(), real_tgt)
        loss_g = (_ce_sum(src_fake_c, label_d) + cfg.g_adv_weight * (_ce_sum(src_fake_s, 0) + _ce_sum(tgt_fake_s, 2))
                  + cfg.l1_weight * l1) / n  # fmt: skip
        # (3) F: trainer_LSD.py:280-286; generated source -> 2 (target-real), generated target -> 0 (source-real).
        seg = upsample_cross_entropy(out_src["main"], source["label"], align_corners=cfg.align_corners, reduction="sum")
        loss_f = (seg + cfg.adv_weight * (_ce_sum(src_fake_s, 2) + _ce_sum(tgt_fake_s, 0))
                  + cfg.c_weight * _ce_sum(src_fake_c, label_d)) / n  # fmt: skip

        # The official optimD / optimG / optim.zero_grad() before each backward keeps each network's own loss only:
        # each backward here reaches its own network's parameters and nothing else.
        ctx.backward(loss_d, retain_graph=True, inputs=self._trainable(self.discriminators))
        ctx.backward(loss_g, retain_graph=True, inputs=self._trainable(self.generator))
        ctx.backward(loss_f, inputs=self._trainable(self.model))
        ctx.step("discriminator")
        ctx.step("generator")
        ctx.step("model")
        out = {"loss/seg": seg.detach() / n, "loss/d": loss_d.detach(), "loss/g": loss_g.detach(),
               "loss/f": loss_f.detach()}  # fmt: skip
        if not ctx.log_step:
            return out
        with torch.no_grad():  # diagnosis (issue 18): D's 4-way domain accuracy; F's accuracy on the target batch
            out["diag/d_acc"] = sum(
                (scores.argmax(1) == cls).float().mean()
                for scores, cls in ((src_real_s, 0), (src_fake_s, 1), (tgt_real_s, 2), (tgt_fake_s, 3))
            ) / 4  # fmt: skip
            if "label" in target:  # the loaders always give one; a caller may pass images only
                size = tuple(target["image"].shape[-2:])
                pred = F.interpolate(out_tgt["main"].float(), size, mode="bilinear", align_corners=cfg.align_corners)
                out["diag/target_acc"] = label_agreement(pred.argmax(1), target["label"])
        return out

    @staticmethod
    def _trainable(module: nn.Module) -> list[Tensor]:
        return [p for p in module.parameters() if p.requires_grad]


def build(model: nn.Module, cfg: Config) -> LSDSeg:
    """The registry's builder: LSD-seg around `model` with the `[method]` section `cfg.method`."""
    return LSDSeg(model, cfg.method, cfg)
