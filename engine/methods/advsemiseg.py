"""AdvSemiSeg: adversarial learning for semi-supervised segmentation (Hung et al., BMVC 2018).

Official code: github.com/hfslyc/AdvSemiSeg, train.py (README command = Table 5 of the paper). A fully-convolutional
discriminator D (the AdaptSegNet FCDiscriminator) tells softmax maps from one-hot ground truth per pixel; its
upsampled output is the segmenter's adversarial target on labelled and unlabelled images, and its confident pixels
(sigmoid >= T_semi) give pseudo-labels on unlabelled images. One step, in the official order (METHODS.md A2):
  1. D frozen. Unlabelled branch, when lambda_semi > 0 or lambda_semi_adv > 0 and step >= semi_start_adv:
     pred = interp(main logits); D_out = interp(D(softmax(pred))); L_semi_adv = BCE(D_out, gt_label), no ignore.
     Before semi_start: backward lambda_semi_adv * L_semi_adv. From semi_start: pseudo-label = argmax(pred), 255
     where sigmoid(D_out) < mask_t; backward lambda_semi * CE(pred, pseudo) + lambda_semi_adv * L_semi_adv.
     pred is kept (detached) for D when d_remain.
  2. Labelled branch: backward CE(pred, label) + lambda_adv_pred * BCE(interp(D(softmax(pred))), gt_label), the BCE
     ignoring pixels whose label is 255.
  3. D unfrozen. Fake: softmax of the detached labelled pred (+ the unlabelled pred when d_remain), target
     pred_label, labelled ignore pixels masked (the unlabelled part has no ignore); real: one-hot ground truth (all-zero
     rows at 255), target gt_label, ignore pixels masked. Each BCE halved, each backpropagated.
  4. Step the segmenter (SGD 2.5e-4, heads 10x, poly 0.9) and D (Adam 1e-4, betas (0.9, 0.99), poly 0.9).
Every BCE is the fused kernels.upsample_bce op (interp + BCE with a 255 mask, mean over valid pixels; it also
returns sigmoid(D_out) for T_semi); CE is kernels.upsample_cross_entropy on the stride-8 logits (the same math as CE
on interp(logits)); pseudo-labels and the one-hot come from segadapt.kernels.pseudo_label on the device, where the
official code round-trips through numpy every step.

| official behaviour                                                       | switch / note                         |
|--------------------------------------------------------------------------|---------------------------------------|
| ASPP sums only its first two branches (AdvSemiSeg#65, PR #63 unmerged)   | model.aspp_sum_first_two_only         |
| Res_Deeplab has one classifier: CE on the main output only               | model.multi_level = false in recipes  |
| `interp` with align_corners=True (PyTorch >= 0.4 branch of train.py)     | method.align_corners                  |
| README lambda_adv_pred 0.01; the code default LAMBDA_ADV_PRED is 0.1     | method.lambda_adv_pred (default 0.01) |
| no confident pixel in the batch (semi_ratio == 0): nothing of the        | reproduced: L_semi_adv is multiplied  |
| unlabelled branch is backpropagated, L_semi_adv included                 | by "any pixel confident" (no sync)    |
| backbone SGD group repeats parameters (get_1x_lr_params_NOscale,         | optim.official_repeated_groups        |
| model/deeplab.py:179): Bottleneck convs 3x, downsample convs 4x          | (engine/optim.py; as AdaptSegNet)     |
| input RGB after the BGR mean: voc_dataset.py:55,74 subtracts IMG_MEAN    | data.channel_order = "rgb", data.mean |
| from the cv2 (BGR) image, then `[:, :, ::-1]` ("change to BGR") -> RGB   | = IMG_MEAN reversed (paper recipes)   |
| crop pad after the mean subtraction (voc_dataset.py:59-62): 0 at the     | always (data/batch.py to_batch; U2PL  |
| network, the mean colour                                                 | pads so too); label 255               |
| partial split size int(p * N) (train.py:253): 1322 of 10582 at 1/8       | data.*.fraction_rounding = "floor"    |
| Res_Deeplab's one classifier is `layer5` (snapshots VOC_*.pth, inits);   | always: models/weights.py format      |
| segadapt's single-level model calls it `layer6`                          | "res_deeplab" renames on load         |
| D real one-hots from trainloader_gt: own sampler over the labelled ids,  | method.d_real_stream = true +         |
| VOCGTDataSet resizes small images to the crop (no pad)                   | data.labeled_real (small_images)      |
| evaluate_voc.py pads val images to 505x505 (mean colour), interp         | eval.protocol = "advsemi_voc" and     |
| align_corners=True, crops; ConfusionMatrix.jaccard averages only classes | eval.metric = "nonzero_diagonal":     |
| with a correct pixel; result.txt names kept classes by position (shifted | miou_official beside the standard     |
| after a dropped class: not reproduced)                                   | miou (paper recipes)                  |
D's real maps (method.d_real_stream, on in the paper recipes): the official code draws them from `trainloader_gt`
(train.py:266 a SubsetRandomSampler of its own over the labelled ids; dataset/voc_dataset.py:84-152 VOCGTDataSet,
which never pads: an image smaller than the crop is resized to it, label with cv2 INTER_NEAREST), so D sees other
labelled images than the segmenter's batch; segadapt reads them from the `labeled_real` stream (data.labeled_real,
small_images = "resize", its own order). Off, the one-hots are the labelled batch's own padded labels (one decode
less). Deviations (no effect on the expected gradient): the partial split is drawn by the data streams (fraction /
split_seed / complement, ids in run_dir/splits/) instead of np.random.shuffle + train_id.pkl. Where the official
code would crash: with step < semi_start_adv or both semi lambdas 0, `pred_remain` does not exist, so D's fake batch
is the labelled predictions only; with both semi lambdas 0 (the full-data "+L_adv" setting) the method reads no
unlabelled stream at all.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch import nn

from segadapt.config import AdvSemiSeg as AdvSemiSegConfig
from segadapt.config import Config
from segadapt.config import Optim
from segadapt.kernels.pseudo_label import one_hot_labels
from segadapt.kernels.pseudo_label import pseudo_label
from segadapt.kernels.upsample_bce import upsample_bce
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.base import frozen
from segadapt.methods.base import segmenter_optimizer
from segadapt.methods.losses import channel_softmax
from segadapt.methods.losses import domain_accuracy
from segadapt.methods.losses import label_agreement
from segadapt.methods.losses import seg_loss
from segadapt.methods.losses import upsample
from segadapt.models import build_discriminator

IGNORE = 255


def _check_config(cfg: AdvSemiSegConfig) -> None:
    """Raise ValueError naming the `method.*` key of a value the official procedure cannot run with."""
    for key in ("lambda_adv_pred", "lambda_semi", "lambda_semi_adv", "semi_start", "semi_start_adv"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"method.{key} = {getattr(cfg, key)!r}: expected a value >= 0")
    if not 0.0 <= cfg.mask_t <= 1.0:
        raise ValueError(f"method.mask_t = {cfg.mask_t!r}: expected a sigmoid threshold in [0, 1]")
    if cfg.d_lr <= 0:
        raise ValueError(f"method.d_lr = {cfg.d_lr!r}: expected a positive learning rate")
    if {cfg.pred_label, cfg.gt_label} != {0, 1}:
        raise ValueError(
            f"method.pred_label = {cfg.pred_label}, method.gt_label = {cfg.gt_label}: expected 0 and 1 (one each)"
        )


def d_target(label: Tensor, value: int) -> Tensor:
    """The official make_D_label: `value` everywhere, 255 where the label is 255.

    Args:
        label: (N, H, W) int64 trainIds, 255 = ignore.

    Returns:
        (N, H, W) uint8 target for kernels.upsample_bce.
    """
    return torch.full_like(label, value, dtype=torch.uint8).masked_fill_(label == IGNORE, IGNORE)


class AdvSemiSeg(Method):
    """Confidence discriminator + adversarial and self-taught losses; see the module docstring for the step."""

    streams = ("labeled", "unlabeled")

    def __init__(self, model: nn.Module, cfg: AdvSemiSegConfig, num_classes: int):
        super().__init__(model)
        _check_config(cfg)
        self.cfg = cfg
        self.num_classes = num_classes
        self.uses_unlabeled = cfg.lambda_semi > 0 or cfg.lambda_semi_adv > 0
        self.streams = ("labeled", "unlabeled") if self.uses_unlabeled else ("labeled",)
        if cfg.d_real_stream:  # the official trainloader_gt: D's real maps from a stream of their own
            self.streams += ("labeled_real",)
        self.discriminators = nn.ModuleDict({"confidence": build_discriminator(num_classes, cfg.d_width)})
        # The DDP-wrapped D for the D-update forwards; a plain dict so the wrapper is not a second state_dict entry.
        self._wrapped: dict[str, nn.Module] = {}

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        return {
            "model": segmenter_optimizer(self.model, optim),
            "discriminator": OptimizerSpec(
                groups=[{"params": list(self.discriminators.parameters()), "lr_mult": 1.0, "name": "discriminator"}],
                kind="adam",
                lr=self.cfg.d_lr,
                betas=self.cfg.d_betas,
            ),
        }

    def distribute(self, wrap) -> None:
        super().distribute(wrap)
        self._wrapped["confidence"] = wrap(self.discriminators["confidence"])

    def _forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Segmenter forward and the frozen (raw) D on its softmax. Call inside autocast.

        Returns:
            logits (N, C, h, w) at stride 8, pred = interp(logits) (N, C, H, W), D logits (N, 1, H/32, W/32).
        """
        logits = self.net(image)["main"]
        pred = upsample(logits, tuple(image.shape[-2:]), self.cfg.align_corners)
        return logits, pred, self.discriminators["confidence"](channel_softmax(pred))

    def _unlabeled_branch(self, data: dict[str, Tensor], ctx: StepContext, losses: dict[str, Tensor]) -> Tensor:
        """Step 1: L_semi_adv (and L_semi from semi_start) on unlabelled images; returns pred detached (N, C, H, W)."""
        cfg, image = self.cfg, data["image"]
        size = tuple(image.shape[-2:])
        with ctx.autocast():
            logits, pred, d_out = self._forward(image)
            loss_semi_adv, confidence = upsample_bce(
                d_out, size, float(cfg.gt_label), align_corners=cfg.align_corners, return_sigmoid=True
            )
        loss = cfg.lambda_semi_adv * loss_semi_adv
        if cfg.lambda_semi > 0 and ctx.step_index >= cfg.semi_start:
            pseudo, _, _ = pseudo_label(pred.detach(), confidence_mask=confidence, threshold=cfg.mask_t)
            loss_semi = seg_loss(logits, pseudo, cfg.align_corners)  # 0 with a zero gradient when nothing is valid
            # Official: semi_ratio == 0 skips the whole backward, L_semi_adv included; a 0/1 factor, no host read.
            any_confident = (pseudo != IGNORE).any().to(loss.dtype)
            loss = cfg.lambda_semi * loss_semi + loss * any_confident
            losses["loss/semi"] = loss_semi.detach()
        ctx.backward(loss)
        losses["loss/semi_adv"] = loss_semi_adv.detach()
        # Diagnosis against the unlabelled images' own labels (never trained on): the share of pixels D trusts
        # (confidence > T_semi, what L_semi would train on), the argmax accuracy there and over every pixel.
        if not ctx.log_step:
            return pred.detach()
        with torch.no_grad():
            trusted = confidence > cfg.mask_t
            argmax = pred.detach().argmax(1)
            losses["diag/pl_coverage"] = trusted.float().mean()
            if "label" in data:  # the loaders always give one; a caller may pass images only
                losses["diag/pl_acc_trusted"] = label_agreement(argmax, data["label"], trusted)
                losses["diag/pl_acc_all"] = label_agreement(argmax, data["label"])
        return pred.detach()

    def _labeled_branch(self, data: dict[str, Tensor], ctx: StepContext, losses: dict[str, Tensor]) -> Tensor:
        """Step 2: L_seg + lambda_adv_pred * L_adv on labelled images; returns pred detached (N, C, H, W)."""
        cfg, size = self.cfg, tuple(data["image"].shape[-2:])
        with ctx.autocast():
            logits, pred, d_out = self._forward(data["image"])
            loss_adv = upsample_bce(d_out, size, d_target(data["label"], cfg.gt_label), align_corners=cfg.align_corners)
        loss_seg = seg_loss(logits, data["label"], cfg.align_corners)
        ctx.backward(loss_seg + cfg.lambda_adv_pred * loss_adv)
        losses["loss/seg"] = loss_seg.detach()
        losses["loss/adv_pred"] = loss_adv.detach()
        return pred.detach()

    def _discriminator_step(
        self,
        pred: Tensor,
        label: Tensor,
        remain: Tensor | None,
        real_label: Tensor,
        ctx: StepContext,
        losses: dict[str, Tensor],
    ) -> None:
        """Step 3: D on fake (pred, + remain) and real (one-hot real_label) maps, each BCE halved and backpropagated."""
        cfg, size = self.cfg, tuple(label.shape[-2:])
        discriminator = self._wrapped.get("confidence", self.discriminators["confidence"])
        fake_target = d_target(label, cfg.pred_label)
        if remain is not None and cfg.d_remain:
            if remain.shape[-2:] != pred.shape[-2:]:
                raise ValueError(
                    f"method.d_remain = true concatenates labelled {tuple(pred.shape[-2:])} and unlabelled "
                    f"{tuple(remain.shape[-2:])} predictions: data.labeled and data.unlabeled must give the same "
                    "(H, W) (set the same crop / resize)"
                )
            pred = torch.cat((pred, remain), dim=0)
            shape = remain.shape[:1] + remain.shape[2:]
            no_ignore = torch.full(shape, cfg.pred_label, dtype=torch.uint8, device=label.device)
            fake_target = torch.cat((fake_target, no_ignore), dim=0)
        with ctx.autocast():
            d_fake = discriminator(channel_softmax(pred))
            loss_fake = upsample_bce(d_fake, size, fake_target, align_corners=cfg.align_corners) / 2
        ctx.backward(loss_fake)
        if ctx.log_step:
            losses["diag/d_acc_fake"] = domain_accuracy(d_fake, cfg.pred_label)  # D's accuracy on each input kind
        real = one_hot_labels(real_label, self.num_classes, memory_format=torch.channels_last)
        with ctx.autocast():
            d_real = discriminator(real)
            real_target = d_target(real_label, cfg.gt_label)  # train.py: ignore_mask_gt of the gt batch's labels
            real_size = tuple(real_label.shape[-2:])
            loss_real = upsample_bce(d_real, real_size, real_target, align_corners=cfg.align_corners) / 2
        ctx.backward(loss_real)
        losses["loss/d"] = (loss_fake + loss_real).detach()
        if ctx.log_step:
            losses["diag/d_acc_real"] = domain_accuracy(d_real, cfg.gt_label)

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        labeled = batch["labeled"]
        remain = None
        with frozen(self.discriminators):
            if self.uses_unlabeled and ctx.step_index >= self.cfg.semi_start_adv:
                remain = self._unlabeled_branch(batch["unlabeled"], ctx, losses)
            pred = self._labeled_branch(labeled, ctx, losses)
        real_label = batch["labeled_real"]["label"] if self.cfg.d_real_stream else labeled["label"]
        self._discriminator_step(pred, labeled["label"], remain, real_label, ctx, losses)
        ctx.step("model")
        ctx.step("discriminator")
        return losses


def build(model: nn.Module, cfg: Config) -> AdvSemiSeg:
    return AdvSemiSeg(model, cfg.method, cfg.model.num_classes)
