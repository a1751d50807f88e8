"""AdaptSegNet: output-space adversarial adaptation (Tsai et al., CVPR 2018).

Official code: github.com/wasidennis/AdaptSegNet, train_gta2cityscapes_multi.py (pytorch_0.4/ is the same loop).
One step, in the official order (METHODS.md A1):
  1. discriminators frozen; source forward; L_seg = CE(main) + lambda_seg * CE(aux); backward.
  2. target forward; L_adv = sum_l lambda_adv_l * GAN(D_l(softmax(up(pred_l))), source_label); backward.
  3. discriminators unfrozen; D loss on detached source predictions (source_label) and detached target
     predictions (target_label), each halved; backward.
  4. step the segmenter and the discriminators.
Segmenter SGD 2.5e-4 (heads 10x); discriminators Adam 1e-4 betas (0.9, 0.99); poly 0.9 on both.

| official behaviour                                               | switch                              |
|------------------------------------------------------------------|-------------------------------------|
| ASPP sums only its first two branches (return inside the loop)   | model.aspp_sum_first_two_only       |
| D output BCE at 1/32 (the code; the paper upsamples it)          | method.d_upsample_output = false    |
| `interp` upsampler with align_corners=True (PyTorch >= 0.4 copy) | method.align_corners                |
| single-level: lambda_seg = lambda_adv_target1 = 0                | method.lambda_* (recipe variants)   |
| LS-GAN (`--gan LS`): MSE instead of BCE                          | method.gan = "ls"                   |
| backbone SGD group repeats parameters (get_1x_lr_params_NOscale, | optim.official_repeated_groups      |
| model/deeplab_multi.py:185): Bottleneck convs 3x, downsample 4x  | (engine/optim.py)                   |
The repeated group (issue 17.1): `get_1x_lr_params_NOscale` walks `modules()` and calls the recursive `parameters()`
on each, and torch.optim.SGD updates a parameter once per listing, so every published number was trained with a
backbone step ~3x the stated lr (head/backbone ~3.3, not 10) and momentum accumulated per listing. segadapt runs
torch.optim.SGD's single-tensor path over the same lists (engine/optim.py RepeatedGroupSGD). PyTorch 0.4, the
official environment, differed once more: its SGD added weight decay into `p.grad` in place, so the second listing
saw the gradient plus decay twice (compounding per listing), and the momentum buffer lived in `state[p]` from the
first listing on; segadapt reproduces the current torch.optim.SGD (what the parity scripts run), not that.
Differences that do not change the math: one Adam over both discriminators (Adam is per-parameter, so this equals
the official two optimizers); the discriminator loss is backpropagated once per domain instead of once per level.
"""

from __future__ import annotations

from torch import Tensor
from torch import nn

from segadapt.config import AdaptSegNet as AdaptSegNetConfig
from segadapt.config import Optim
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.base import frozen
from segadapt.methods.base import segmenter_optimizer
from segadapt.methods.losses import adversarial_loss
from segadapt.methods.losses import channel_softmax
from segadapt.methods.losses import domain_accuracy
from segadapt.methods.losses import label_agreement
from segadapt.methods.losses import upsample
from segadapt.methods.supervised import supervised_loss
from segadapt.models import build_discriminator


class AdaptSegNet(Method):
    streams = ("source", "target")
    unregistered = ("net", "d_nets")

    def __init__(self, model: nn.Module, cfg: AdaptSegNetConfig, num_classes: int):
        super().__init__(model)
        if cfg.gan not in ("vanilla", "ls"):
            raise ValueError(f"method.gan = {cfg.gan!r}: expected 'vanilla' or 'ls'")
        self.cfg = cfg
        # level name -> (model output key, adversarial weight); a level with weight 0 gets no discriminator,
        # as the official single-level command (lambda_adv_target1 = 0) leaves D1 untrained.
        levels = {"d_main": ("main", cfg.lambda_adv_target2), "d_aux": ("aux", cfg.lambda_adv_target1)}
        self.levels = {name: spec for name, spec in levels.items() if spec[1] > 0}
        self.discriminators = nn.ModuleDict(
            {name: build_discriminator(num_classes, cfg.d_width) for name in self.levels}
        )
        # Views used by the discriminator update (DDP-wrapped under torchrun); frozen passes use the raw modules.
        self.d_nets: dict[str, nn.Module] = dict(self.discriminators.items())

    def distribute(self, wrap) -> None:
        super().distribute(wrap)
        self.d_nets = {name: wrap(module) for name, module in self.discriminators.items()}

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        specs = {"model": segmenter_optimizer(self.model, optim)}
        if self.levels:
            specs["discriminator"] = OptimizerSpec(
                groups=[{"params": list(self.discriminators.parameters()), "lr_mult": 1.0, "name": "discriminator"}],
                kind="adam",
                lr=self.cfg.d_lr,
                betas=self.cfg.d_betas,
            )
        return specs

    def _d_loss(
        self, net: nn.Module, pred: Tensor, label: int, size: tuple[int, int], diag: tuple[dict, str] | None = None
    ) -> Tensor:
        """GAN loss of D on softmax(pred) against `label`; with `diag` = (dict, key), also D's accuracy there."""
        d_out = net(channel_softmax(pred))
        if diag is not None:
            diag[0][diag[1]] = domain_accuracy(d_out, label, self.cfg.gan)
        return adversarial_loss(d_out, label, self.cfg.gan, upsample_to=size if self.cfg.d_upsample_output else None)

    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        cfg = self.cfg
        source, target = batch["source"], batch["target"]
        source_size, target_size = tuple(source["image"].shape[-2:]), tuple(target["image"].shape[-2:])
        losses: dict[str, Tensor] = {}
        with frozen(self.discriminators):
            with ctx.autocast():
                out_source = self.net(source["image"])
            loss_seg = supervised_loss(out_source, source["label"], cfg.lambda_seg, cfg.align_corners)
            ctx.backward(loss_seg)
            losses["loss/seg"] = loss_seg.detach()

            with ctx.autocast():
                out_target = self.net(target["image"])
                pred_target = {
                    n: upsample(out_target[k], target_size, cfg.align_corners) for n, (k, _) in self.levels.items()
                }
                loss_adv = sum(
                    weight * self._d_loss(self.discriminators[n], pred_target[n], cfg.source_label, target_size)
                    for n, (_, weight) in self.levels.items()
                )
            if self.levels:
                ctx.backward(loss_adv)
                losses["loss/adv"] = loss_adv.detach()

        if self.levels:
            with ctx.autocast():
                pred_source = {
                    n: upsample(out_source[k].detach(), source_size, cfg.align_corners)
                    for n, (k, _) in self.levels.items()
                }
                # diag/<level>_acc_source | _target: D's accuracy on each domain during its update (0.5 = fooled).
                loss_d_source = sum(
                    self._d_loss(self.d_nets[n], p, cfg.source_label, source_size,
                                 (losses, f"diag/{n}_acc_source") if ctx.log_step else None) / 2
                    for n, p in pred_source.items()
                )  # fmt: skip
            ctx.backward(loss_d_source)
            with ctx.autocast():
                loss_d_target = sum(
                    self._d_loss(self.d_nets[n], p.detach(), cfg.target_label, target_size,
                                 (losses, f"diag/{n}_acc_target") if ctx.log_step else None) / 2
                    for n, p in pred_target.items()
                )  # fmt: skip
            ctx.backward(loss_d_target)
            losses["loss/d"] = (loss_d_source + loss_d_target).detach()
        # diag/target_acc: the segmenter's pixel accuracy on the target batch against its labels, never trained on
        # (where the batch carries them: the loaders always do; a caller may pass images only).
        if ctx.log_step and "label" in target:
            losses["diag/target_acc"] = label_agreement(
                upsample(out_target["main"].detach(), target_size, cfg.align_corners).argmax(1), target["label"]
            )

        ctx.step("model")
        if self.levels:
            ctx.step("discriminator")
        return losses
