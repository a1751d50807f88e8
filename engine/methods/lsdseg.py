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
  L_F = [CE(F(src), y) + adv_weight * (CE(D_s(G(src)), 3) + CE(D_s(G(tgt)), 0)) + c_weight * CE(D_c(G(src)), y_D)] / n
with y_D the source label resized (nearest) to D's output size. Optimisers: F Adam 1e-5 betas (0.9, 0.999), biases at
2x lr; G and D Adam 1e-4 betas (0.7, 0.999); updates in the order D, G, F.

How one step here equals the official one. The official loop runs every forward once with the parameters of the
start of the step and then, with `retain_graph=True`, backpropagates L_D into D and steps it, L_G into G and steps
it, L_F into F and steps it (each optimizer is zeroed right before its backward, so each network is moved by its own
loss only). Every loss value therefore depends on the start-of-step parameters, and each network's update is the
gradient of its own loss there. We compute exactly those three gradients before any step, each from forwards in
which the other networks are frozen or their inputs detached (D: on G's outputs detached; G: on F's features
detached, D frozen; F: G and D frozen), then step D, G, F. Re-running the G / D forwards per update (instead of one
graph with retain_graph) keeps every DDP-wrapped module to one backward per step: D runs one forward and one
backward per domain; G and F run one forward per domain and a single backward of both domains' summed terms.
The one thing not reproduced: under PyTorch 0.2 the official G and F backward passes read D's (and G's) weights
*after* their in-place `optimizer.step()` (a `.data` update the 0.2 autograd did not version-check); modern
PyTorch refuses that, and we use the start-of-step weights throughout.

| official behaviour                                                | here                                         |
|-------------------------------------------------------------------|----------------------------------------------|
| pixel-sum CE divided by batch (size_average=False)                | always (`_ce_sum`, fused kernel for F's CE)  |
| G's domain weight 0.1 hard-coded                                  | method.g_adv_weight = 0.1                    |
| F: Adam, biases 2x lr, no weight decay (Adam branch of train.py)  | method.bias_lr_mult = 2, optim.weight_decay=0|
| F lr x0.1 every 8 epochs (F only; epoch = 2975 target images)     | schedule.policy = "step"; G, D unscheduled   |
| y_D: PIL resize((h, w)) (the (W, H) argument order swapped), -1   | nearest-exact resize to (h, w), 255 ignored  |
|   ignore cast to uint8 255 and not ignored                         |                                              |
| G's last ConvT(64->3, k8, s2, p100) undoes FCN's 100-px padding    | padding = model.input_padding (FCN: 100),    |
|                                                                   | 3 (exact x2) for segmenters without padding  |
| G's skip concats assume sizes that match (640x320, 1024x512)      | 1-px ceil-mode excess cropped, other sizes   |
|                                                                   | bilinearly resized (never for those sizes)   |

Segmenter feature contract: the forward dict holds "main" plus either FCN-8s's "fc7", "pool4", "pool3" or the generic
"feat_deep", "feat_mid", "feat_shallow" (DeepLab-v2: layer4, layer3, layer2; toy: its stem three times; both
return them once `return_features` is set, which this method does), and the segmenter exposes their channels as
`feature_channels` (FCN-8s) or through its known attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt.config import Config
from segadapt.config import LSDSeg as LSDSegConfig
from segadapt.config import Optim
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.base import frozen
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy

__all__ = ["Discriminator", "Generator", "LSDSeg", "ResBlock", "build", "feature_keys"]

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

    def _features(self, out: dict[str, Tensor], detach: bool) -> list[Tensor]:
        return [out[k].detach() if detach else out[k] for k in self.keys]

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.cfg
        source, target = batch["source"], batch["target"]
        n = source["image"].shape[0]  # official: every loss / len(data_source)
        real = {"source": self.to_unit(source["image"]), "target": self.to_unit(target["image"])}
        sizes = {d: tuple(real[d].shape[-2:]) for d in real}
        with ctx.autocast():
            out = {"source": self.net(source["image"]), "target": self.net(target["image"])}
            # G forwards for the D and G updates: on F's features detached (F is moved by L_F only).
            fake = {d: self.g_net(*self._features(out[d], True), sizes[d]) for d in out}

        # (1) D: real and (detached) generated images of one domain in one forward, one backward per forward.
        loss_d = 0.0
        label_d = None
        for domain, (real_class, fake_class) in (("source", (0, 1)), ("target", (2, 3))):
            with ctx.autocast():
                s, c = self.d_net(torch.cat((real[domain], fake[domain].detach().float())))
            if label_d is None:
                label_d = F.interpolate(source["label"][:, None].float(), size=s.shape[-2:], mode="nearest-exact")
                label_d = label_d[:, 0].long()
            loss = _ce_sum(s[:n], real_class) + _ce_sum(s[n:], fake_class)
            if domain == "source":
                loss = loss + _ce_sum(c[:n], label_d)
            ctx.backward(loss / n)
            loss_d = loss_d + loss.detach() / n

        # (2) G: through the frozen raw D (its parameters get no gradient here). Both domains' terms go into one
        # backward: G ran one forward per domain, and under DDP a module's forwards of a step share one backward.
        loss_g = 0.0
        with frozen(self.discriminators):
            for domain, domain_class in (("source", 0), ("target", 2)):
                with ctx.autocast():
                    s, c = self.discriminators["d"](fake[domain])
                loss = cfg.g_adv_weight * _ce_sum(s, domain_class)
                loss = loss + cfg.l1_weight * F.l1_loss(fake[domain].float(), real[domain])
                if domain == "source":
                    loss = loss + _ce_sum(c, label_d)
                loss_g = loss_g + loss / n
        ctx.backward(loss_g)

        # (3) F: segmentation + flipped domain labels through frozen raw G and D; one backward for both domains (F
        # also ran one forward per domain).
        loss_f = 0.0
        with frozen(self.generator, self.discriminators):
            for domain, flipped_class in (("source", 3), ("target", 0)):
                with ctx.autocast():
                    regenerated = self.generator(*self._features(out[domain], False), sizes[domain])
                    s, c = self.discriminators["d"](regenerated)
                loss = cfg.adv_weight * _ce_sum(s, flipped_class)
                if domain == "source":
                    seg = upsample_cross_entropy(
                        out[domain]["main"], source["label"], align_corners=cfg.align_corners, reduction="sum"
                    )
                    loss = loss + seg + cfg.c_weight * _ce_sum(c, label_d)
                loss_f = loss_f + loss / n
        ctx.backward(loss_f)

        ctx.step("discriminator")
        ctx.step("generator")
        ctx.step("model")
        return {"loss/seg": seg.detach() / n, "loss/d": loss_d, "loss/g": loss_g.detach(), "loss/f": loss_f.detach()}


def build(model: nn.Module, cfg: Config) -> LSDSeg:
    """The registry's builder: LSD-seg around `model` with the `[method]` section `cfg.method`."""
    return LSDSeg(model, cfg.method, cfg)
