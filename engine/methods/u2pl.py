"""U2PL: semi-supervised segmentation with unreliable pseudo-labels (Wang et al., CVPR 2022).

Official code: github.com/Haochen-Wang409/U2PL, `train_semi.py` (`train`), `u2pl/utils/loss_helper.py`
(`compute_unsupervised_loss`, `compute_contra_memobank_loss`, `CriterionOhem`), `u2pl/dataset/augmentation.py`
(`generate_unsup_data`, CutMix). Facts in METHODS.md A3. One step, in the official order:

  sup-only phase (step < sup_only_steps): student CE (+ aux) on the labelled batch; the teacher runs a train-mode
    forward on the same batch (its BatchNorm statistics follow the data, as the official `_ = model_teacher(image_l)`).
  semi phase:
  1. at the first semi step the teacher's parameters are copied from the student (buffers are not).
  2. eval-mode teacher on the unlabeled batch -> softmax argmax pseudo-labels at image size.
  3. CutMix with probability cutmix_p (one coin per batch): image i takes a box of image i+1 (area H*W/2,
     width uniform in [floor(W/2) + 1, W - 1]) and its pseudo-label the same box.
  4. student on cat(labeled, mixed unlabeled): supervised CE (or OHEM) on main (+ aux_weight * aux).
  5. train-mode teacher (no grad) on the same cat: probabilities, representations, unlabeled logits at image size.
  6. unsupervised loss: drop pseudo-labels whose teacher entropy is >= the drop_percent-th percentile (the
     unreliable share 100 - drop_percent decays linearly to 0), CE on the rest times B*H*W / #kept.
  7. contrastive loss: anchors (student rep) from labelled pixels and low-entropy (<= alpha_t-th percentile)
     unlabeled pixels with teacher probability > delta_p; positive = the class prototype (mean teacher rep over those
     pixels); negatives from the per-class memory queues, fed with teacher reps of high-entropy pixels whose class
     ranks in [low_rank, high_rank) (labelled: rank < low_rank); InfoNCE at temperature 0.5, averaged over classes.
  8. backward of sup + unsup_weight * unsup + contra_weight * contra; step; EMA teacher update
     (momentum min(1 - 1/(step - sup_only_steps + 1), ema_decay)).

| official behaviour                                                           | switch / handling                 |
|------------------------------------------------------------------------------|-----------------------------------|
| teacher copy inside the iteration loop: teacher = student for a whole epoch  | method.teacher_copy_steps         |
| `epoch / epochs` decay of the unreliable share and alpha_t (per epoch); an   | method.steps_per_epoch (paper     |
|   epoch is len(loader_l) = ceil(N / GPUs) // per-GPU batch (drop_last)       |   recipes: schedule_epochs)       |
| negatives need (pseudo-)label == class (one-hot x high mask, U2PL#171): the  | always (official); labelled rows  |
|   labelled part never contributes, unlabeled ones only via CutMix/mode gaps  |   are not enqueued                |
| i-th valid class pairs anchors/prototype of class i with the queue of        | always (official), see            |
|   valid_classes[i] (the per-class lists are indexed by the enumeration)      |   `contrastive_slots`             |
| contrastive loss 0 when at most one class is present                         | same                              |
| `label_onehot` (utils.py:50) scatters along dim 0 with a (B, 1, H, W) index: | method.onehot = "official" (paper |
|   per half-batch and rank, image 0 holds the union of the half's classes     |   recipes; "true" = per-image     |
|   (255 -> class 0 where image 0 is valid), images 1..B-1 are all zero; so    |   one-hot); keys of a pixel go to |
|   only image 0 of each half gives anchors / prototypes, only the first       |   several queues, pixel-major     |
|   unlabeled image gives negatives, and one pixel can be a key for several    |   (`negative_slots`)              |
|   classes                                                                    |                                   |
| contrastive loss all-reduced, then / world_size (train_semi.py:515-518):     | same (all_reduce_mean, no autograd|
|   value = rank mean, gradient = own / W, so its weight is 1/W: 1-GPU runs    |   through the reduction); recipes |
|   weigh it 4x (VOC) / 8x (Cityscapes) the official runs                      |   and README say so               |
| validation uses the student during sup-only epochs, then the teacher         | `eval_model()`                    |
Deviations (no effect on the math unless stated): the memory bank lives on the device as ring buffers
(kernels.memory_queue) and is checkpointed (the official CPU list is not saved); every unlabeled pixel (with the
official maps: the first unlabeled image's, in min(C, #unlabeled) class slots) is enqueued with class -1 where it is
no negative, so the all-gather has a fixed size; percentiles are computed on the device
(kernels.entropy_percentile, exact log-softmax entropy instead of -sum p log(p + 1e-10)); #kept is clamped at 1 (the
official divides by 0 when every pixel is dropped); randomness (CutMix, anchors, negatives) comes from torch's
device generator, so the trainer's RNG checkpoint makes resumes exact.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from segadapt import distributed
from segadapt.config import U2PL as U2PLConfig
from segadapt.config import Config
from segadapt.config import Optim
from segadapt.kernels.entropy_percentile import entropy_percentile
from segadapt.kernels.entropy_percentile import entropy_thresholds
from segadapt.kernels.memory_queue import MemoryQueue
from segadapt.kernels.memory_queue import u2pl_lengths
from segadapt.kernels.pseudo_label import one_hot_labels
from segadapt.kernels.pseudo_label import pseudo_label
from segadapt.kernels.upsample_cross_entropy import upsample_cross_entropy
from segadapt.methods.base import Method
from segadapt.methods.base import OptimizerSpec
from segadapt.methods.base import StepContext
from segadapt.methods.base import segmenter_optimizer
from segadapt.methods.losses import label_agreement
from segadapt.methods.losses import seg_loss
from segadapt.methods.losses import upsample

IGNORE = 255


# ------------------------------------------------------------------------------------------------- pure pieces
def ohem_cross_entropy(logits: Tensor, label: Tensor, thresh: float, min_kept: int) -> Tensor:
    """`OhemCrossEntropy2dTensor` without host sync: CE over valid pixels whose true-class probability is <= the
    threshold max(thresh, min_kept-th smallest probability); all valid pixels when fewer than min_kept are valid.

    Args:
        logits: (N, C, H, W) logits at the label size.
        label: (N, H, W) int64, 255 = ignore.
    """
    with torch.no_grad():
        valid = label != IGNORE
        prob = torch.softmax(logits.detach().float(), dim=1)
        p_true = prob.gather(1, torch.where(valid, label, 0)[:, None])[:, 0]
        p_true = torch.where(valid, p_true, torch.ones_like(p_true))  # masked_fill_(~valid, 1): sorted last
        kth = torch.kthvalue(p_true.flatten(), min(p_true.numel(), min_kept)).values
        threshold = torch.clamp_min(kth, thresh)
        kept = torch.where(valid.sum() < min_kept, valid, valid & (p_true <= threshold))
        target = torch.where(kept, label, IGNORE)
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def cutmix_boxes(batch: int, height: int, width: int, uniforms: Tensor) -> Tensor:
    """`generate_cutout_mask(ratio=2)` per image, on the device: True inside the box taken from the next image.

    Args:
        uniforms: (batch, 3) in [0, 1): box width, x start, y start draws.

    Returns:
        (batch, height, width) bool.
    """
    low, high = int(width / 2 + 1), width
    box_w = (low + (uniforms[:, 0] * max(high - low, 1)).floor()).clamp(max=width)
    box_h = torch.round(height * width / 2 / box_w).clamp(max=height)
    x0 = (uniforms[:, 1] * (width - box_w + 1)).floor()
    y0 = (uniforms[:, 2] * (height - box_h + 1)).floor()
    ys = torch.arange(height, device=uniforms.device, dtype=uniforms.dtype)[None, :, None]
    xs = torch.arange(width, device=uniforms.device, dtype=uniforms.dtype)[None, None, :]
    inside_y = (ys >= y0[:, None, None]) & (ys < (y0 + box_h)[:, None, None])
    inside_x = (xs >= x0[:, None, None]) & (xs < (x0 + box_w)[:, None, None])
    return inside_y & inside_x


def cutmix(image: Tensor, label: Tensor, apply: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mix image i with image (i + 1) % N inside a box, and its pseudo-label the same way (`generate_unsup_data`).

    Args:
        image: (N, 3, H, W); label: (N, H, W); apply: 0-d bool (the batch's coin); uniforms: (N, 3) box draws.

    Returns:
        mixed image, mixed label and the (N, H, W) bool box mask actually applied.
    """
    batch, _, height, width = image.shape
    box = cutmix_boxes(batch, height, width, uniforms) & apply
    mixed = torch.where(box[:, None], image.roll(-1, dims=0), image)
    return mixed, torch.where(box, label.roll(-1, dims=0), label), box


def unsupervised_loss(
    student_logits: Tensor,
    pseudo: Tensor,
    teacher_logits: Tensor,
    drop_percent: float,
    align_corners: bool,
    reliable: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`compute_unsupervised_loss`: CE on the pseudo-labels whose teacher entropy is below the drop_percent-th
    percentile, times B*H*W / #kept.

    Args:
        student_logits: (N, C, h, w) student logits (upsampled to the label size inside the fused CE).
        pseudo: (N, H, W) int64 pseudo-labels (255 = ignore).
        teacher_logits: (N, C, H, W) teacher logits at the label size.
        reliable: the (N, H, W) reliable mask when the caller already split the entropy at drop_percent (one
            `entropy_thresholds` call per step serves every threshold); None computes it here.

    Returns:
        the loss (0-d) and the (N, H, W) bool reliable mask.
    """
    with torch.no_grad():
        if reliable is None:
            _, _, reliable, _ = entropy_percentile(teacher_logits.float(), pseudo == IGNORE, float(drop_percent))
        target = torch.where(reliable, pseudo, IGNORE)
        weight = pseudo.numel() / reliable.sum().clamp_min(1)
    loss = upsample_cross_entropy(student_logits, target, align_corners=align_corners)
    return weight * loss, reliable


def class_ranks(prob: Tensor) -> Tensor:
    """(B, C, h, w) probabilities -> rank of each class in the descending order at each pixel (0 = argmax)."""
    order = torch.argsort(prob, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(prob.shape[1], device=prob.device).view(1, -1, 1, 1).expand_as(order)
    return ranks.scatter_(1, order, positions)


def official_label_onehot(label: Tensor, num_classes: int) -> Tensor:
    """The official `label_onehot` (u2pl/utils/utils.py:50-59), applied to one half-batch of one rank.

    `outputs` is (C, B, H, W) and `outputs.scatter_(0, label.unsqueeze(1), 1.0)` takes a (B, 1, H, W) index: entry
    [b, 0, h, w] writes outputs[label[b, h, w], 0, h, w], so every image writes into image 0. Ignore (255) was set to
    0 before the scatter, and `outputs[:, label == 255] = 0` clears only the positions where that image is ignored.
    Hence image 0 holds, at each pixel where it is not ignored, the union of the half's classes there (class 0 for a
    pixel another image ignores), and images 1..B-1 are all zero.

    Args:
        label: (B, H, W) int64, 255 = ignore.

    Returns:
        (B, C, H, W) bool.
    """
    ignore = label == IGNORE
    classes = torch.arange(num_classes, device=label.device).view(1, num_classes, 1, 1)
    union = (torch.where(ignore, 0, label)[:, None] == classes).any(dim=0) & ~ignore[0]  # (C, H, W)
    return torch.cat((union[None], torch.zeros_like(union)[None].expand(label.shape[0] - 1, -1, -1, -1)))


def negative_slots(negative: Tensor, slots: int) -> Tensor:
    """(B, C, h, w) bool negatives -> (B, h, w, slots) int64: each pixel's negative classes ascending, -1 padded.

    With a true one-hot a pixel is a negative for at most one class (slots = 1); with the official union maps, for at
    most one class per unlabeled image of the half, so min(C, #unlabeled) slots hold every (pixel, class) pair.
    """
    order = torch.argsort((~negative).to(torch.uint8), dim=1, stable=True)[:, :slots]  # negative classes first
    return torch.where(negative.gather(1, order), order, -1).permute(0, 2, 3, 1)


def newest_negatives(keys: Tensor, classes: Tensor, cap: int) -> tuple[Tensor, Tensor, Tensor]:
    """Compact (M, D) keys with (M,) classes (-1 = no negative) to the newest `cap` negative rows, order kept.

    Device-only (a cumsum and one scatter, no host sync), so the all_gather that follows has a fixed size.

    Returns:
        keys (cap, D) and classes (cap,) int64: the last `cap` rows with a class >= 0 in their original order,
        then zero keys with class -1; dropped: 0-d int64, negatives that did not fit.
    """
    negative = classes >= 0
    position = torch.cumsum(negative, 0) - 1  # rank of each negative among the negatives
    total = negative.sum()
    first_kept = (total - cap).clamp_min(0)
    keep = negative & (position >= first_kept)
    slot = torch.where(keep, position - first_kept, cap)  # rows not kept go to a spill slot, dropped below
    out_keys = keys.new_zeros(cap + 1, keys.shape[1]).index_copy_(0, slot, keys)[:cap]
    out_classes = torch.full((cap + 1,), -1, dtype=classes.dtype, device=classes.device)
    out_classes = out_classes.index_copy_(0, slot, torch.where(keep, classes, -1))[:cap]
    return out_keys, out_classes, first_kept


def contrastive_masks(
    onehot: Tensor, prob: Tensor, low_mask: Tensor, high_mask: Tensor, num_labeled: int, cfg: U2PLConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The masks of `compute_contra_memobank_loss`, for every class at once.

    Args:
        onehot: (B, C, h, w) bool (pseudo-)labels, labelled images first; prob: (B, C, h, w) teacher probabilities;
        low_mask, high_mask: (B, h, w) bool (labelled rows: label != 255; unlabeled: low / high entropy).

    Returns:
        low_valid (B, C, h, w): prototype pixels; anchor (B, C, h, w): low_valid and prob > delta_p;
        negative_class (B, h, w, S) int64: the classes whose queues the pixel's key joins, -1 for none
        (S = 1 for method.onehot = "true", min(C, #unlabeled) for the official union maps).
    """
    low_valid = onehot & low_mask[:, None]
    anchor = low_valid & (prob > cfg.current_class_threshold)
    ranks = class_ranks(prob)
    top_l = (ranks[:num_labeled] < cfg.low_rank) & ~onehot[:num_labeled]
    window_u = (ranks[num_labeled:] >= cfg.low_rank) & (ranks[num_labeled:] < cfg.high_rank)
    negative = onehot & high_mask[:, None] & (prob < cfg.current_class_negative_threshold)
    negative = negative & torch.cat((top_l, window_u))
    # negative is a subset of the one-hot: one class per pixel with a true one-hot, up to one per unlabeled image
    # (the union) with the official maps.
    slots = 1 if cfg.onehot == "true" else min(onehot.shape[1], max(onehot.shape[0] - num_labeled, 1))
    return low_valid, anchor, negative_slots(negative, slots)


def sample_anchor_indices(anchor: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """Uniform draws with replacement among each class's anchor pixels (torch.randint over the candidates).

    Args:
        anchor: (B, C, h, w) bool; uniforms: (C, Q) in [0, 1).

    Returns:
        (C, Q) int64 flat pixel indices into (B, h, w) order, and (C,) bool "the class has an anchor".
    """
    flat = anchor.permute(1, 0, 2, 3).reshape(anchor.shape[1], -1)
    cumulative = flat.to(torch.int64).cumsum(dim=1)
    count = cumulative[:, -1]
    rank = (uniforms * count[:, None]).floor().to(torch.int64).clamp_max((count - 1).clamp_min(0)[:, None])
    index = torch.searchsorted(cumulative, rank + 1).clamp_max(flat.shape[1] - 1)
    return index, count > 0


def contrastive_slots(class_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The official pairing: slot i < #valid uses anchors/prototype of class i and the queue of valid_classes[i].

    Returns:
        anchor_class (C,), queue_class (C,) int64 and slot_active (C,) bool (i < number of valid classes).
    """
    num_classes = class_valid.shape[0]
    slots = torch.arange(num_classes, device=class_valid.device)
    queue_class = torch.argsort((~class_valid).to(torch.uint8), stable=True)  # valid classes first, ascending
    return slots, queue_class, slots < class_valid.sum()


def info_nce(anchor: Tensor, positive: Tensor, negative: Tensor, temperature: float) -> Tensor:
    """Per-slot mean over queries of CE(cos(anchor, [positive, negatives]) / temperature, target 0).

    Args:
        anchor: (S, Q, D); positive: (S, D); negative: (S, Q, K, D). Returns (S,).
    """
    keys = torch.cat((positive[:, None, None, :].expand(-1, anchor.shape[1], 1, -1), negative), dim=2)
    logits = F.cosine_similarity(anchor[:, :, None, :], keys, dim=-1) / temperature
    return -torch.log_softmax(logits, dim=-1)[..., 0].mean(dim=1)


def contrastive_loss(
    rep: Tensor,
    prototypes: Tensor,
    class_valid: Tensor,
    anchor: Tensor,
    anchor_uniforms: Tensor,
    sample_negatives,
    temperature: float,
) -> Tensor:
    """The InfoNCE part of `compute_contra_memobank_loss`, with the sampling passed in.

    Args:
        rep: (B, D, h, w) student representations (gradient flows to the anchors).
        prototypes: (C, D) teacher prototypes; class_valid: (C,) bool (class has low_valid pixels).
        anchor: (B, C, h, w) bool anchor candidates; anchor_uniforms: (C, Q) draws.
        sample_negatives: callable(queue_class (C,)) -> (negatives (C, Q, K, D), queue_nonempty (C,) bool).
    """
    index, has_anchor = sample_anchor_indices(anchor, anchor_uniforms)
    anchor_class, queue_class, active = contrastive_slots(class_valid)
    features = rep.permute(0, 2, 3, 1).reshape(-1, rep.shape[1])
    anchors = features[index[anchor_class]]
    negatives, queue_nonempty = sample_negatives(queue_class)
    per_slot = info_nce(anchors.float(), prototypes[anchor_class], negatives.float(), temperature)
    used = active & has_anchor[anchor_class] & queue_nonempty
    total = torch.where(used, per_slot, torch.zeros_like(per_slot)).sum() / class_valid.sum().clamp_min(1)
    return torch.where(class_valid.sum() > 1, total, torch.zeros_like(total)) + 0 * rep.sum()


@contextlib.contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[None]:
    was_training = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(was_training)


def _nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W) map -> (N, h, w) by F.interpolate(mode="nearest"), as the official mask/label downsampling."""
    return F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].to(x.dtype)


# ------------------------------------------------------------------------------------------------------ method
class U2PL(Method):
    streams = ("labeled", "unlabeled")

    def __init__(self, model: nn.Module, cfg: U2PLConfig, num_classes: int, total_steps: int):
        super().__init__(model)
        _check(cfg, model, total_steps)
        self.cfg, self.num_classes, self.total_steps = cfg, num_classes, total_steps
        self.teacher = copy.deepcopy(model)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        lengths = u2pl_lengths(num_classes) if cfg.queue_length == 0 else cfg.queue_length
        self.queue = MemoryQueue(num_classes, model.rep_channels, lengths, device="cpu")
        # The queue's tensors are buffers, so they move with .to() and live in state_dict (checkpoints).
        self.register_buffer("queue_storage", self.queue.storage)
        self.register_buffer("queue_write_ptr", self.queue.write_ptr)
        self.register_buffer("queue_count", self.queue.count)
        self.register_buffer("queue_lengths", self.queue.lengths, persistent=False)
        self.register_buffer("queue_offsets", self.queue.offsets, persistent=False)
        self.register_buffer("semi_steps", torch.zeros((), dtype=torch.int64))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        queue = self.queue
        queue.storage, queue.write_ptr, queue.count = self.queue_storage, self.queue_write_ptr, self.queue_count
        queue.lengths, queue.offsets = self.queue_lengths, self.queue_offsets
        return self

    def optimizers(self, optim: Optim) -> dict[str, OptimizerSpec]:
        return {"model": segmenter_optimizer(self.model, optim)}

    def eval_model(self) -> nn.Module:
        """Official validate(): the student during sup-only epochs, the teacher once the semi phase has run."""
        if self.cfg.sup_only_steps == 0:
            return self.teacher
        return self.teacher if int(self.semi_steps) > 0 else self.model  # host read: evaluation only

    # -------------------------------------------------------------------------------------------- schedule
    def progress(self, step: int) -> float:
        """epoch / epochs of the official decays; per step when steps_per_epoch = 0."""
        per_epoch = self.cfg.steps_per_epoch
        if per_epoch > 0:
            return min((step // per_epoch) / max(self.total_steps // per_epoch, 1), 1.0)
        return min(step / self.total_steps, 1.0)

    @torch.no_grad()
    def update_teacher(self, step: int) -> None:
        """After the student's step: copy inside the copy window, else EMA with the official momentum."""
        teacher, student = list(self.teacher.parameters()), list(self.model.parameters())
        if step < self.cfg.sup_only_steps + self.cfg.teacher_copy_steps:
            torch._foreach_copy_(teacher, student)
            return
        momentum = min(1.0 - 1.0 / (step - self.cfg.sup_only_steps + 1), self.cfg.ema_decay)
        torch._foreach_lerp_(teacher, student, 1.0 - momentum)

    # ------------------------------------------------------------------------------------------------ losses
    def supervised_loss(self, main: Tensor, aux: Tensor | None, label: Tensor) -> Tensor:
        loss = self._ce(main, label)
        if aux is not None and self.cfg.aux_weight > 0:
            loss = loss + self.cfg.aux_weight * self._ce(aux, label)
        return loss

    def _ce(self, logits: Tensor, label: Tensor) -> Tensor:
        if not self.cfg.ohem:
            return seg_loss(logits, label, self.cfg.align_corners)
        large = upsample(logits, tuple(label.shape[-2:]), self.cfg.align_corners)
        return ohem_cross_entropy(large, label, self.cfg.ohem_thresh, self.cfg.ohem_min_kept)

    @torch.no_grad()
    def enqueue(self, rep_teacher: Tensor, negative_class: Tensor) -> None:
        """Every pixel's teacher key with its negative classes (-1 = none), gathered over ranks, into the queues.

        Args:
            rep_teacher: (N, D, h, w); negative_class: (N, h, w) or (N, h, w, S) int64 (S classes per pixel: rows
            run pixel-major, so each class's keys keep the official (image, y, x) order).
        """
        if negative_class.dim() == 3:
            negative_class = negative_class[..., None]
        slots, dim = negative_class.shape[-1], rep_teacher.shape[1]
        # The bytes the all_gather moves, without changing a value: keys travel in the representation's own dtype
        # (bf16 under AMP; the queue stores float32, and bf16 -> float32 is exact) and once per pixel, expanded to
        # the pixel's class slots after the gather; classes travel as int8 (class ids < 128, -1 = none).
        keys = rep_teacher.permute(0, 2, 3, 1).reshape(-1, dim)
        classes = negative_class.reshape(-1, slots)
        if self.cfg.queue_gather_cap > 0:  # the cap counts (pixel, class) rows: compact after the expansion
            keys = keys[:, None].expand(-1, slots, -1).reshape(-1, dim)
            keys, classes, dropped = newest_negatives(keys, classes.reshape(-1), self.cfg.queue_gather_cap)
            classes = classes[:, None]
            self.queue_dropped = distributed.all_reduce_sum(dropped)
        small = torch.int8 if self.num_classes < 128 else classes.dtype
        keys = distributed.all_gather_cat(keys)
        classes = distributed.all_gather_cat(classes.to(small)).long()
        slots = classes.shape[1]
        self.queue.enqueue(keys[:, None].expand(-1, slots, -1).reshape(-1, dim), classes.reshape(-1))

    def _sample_negatives(self, queue_class: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        generator = _default_generator(queue_class.device)
        classes = queue_class.repeat_interleave(cfg.num_queries)
        negatives, valid = self.queue.sample(classes, cfg.num_negatives, generator)
        shape = (self.num_classes, cfg.num_queries, cfg.num_negatives, negatives.shape[-1])
        return negatives.view(shape), valid.view(self.num_classes, cfg.num_queries)[:, 0]

    def contrastive(self, rep, rep_t, prob_t, label_l, pseudo, low_u, high_u) -> Tensor:
        """The contrastive branch at the representation's resolution (`compute_contra_memobank_loss`)."""
        size = tuple(rep.shape[-2:])
        num_labeled = label_l.shape[0]
        labels = _nearest(torch.cat((label_l, pseudo)), size)  # nearest commutes with the per-pixel one-hot / union
        if self.cfg.onehot == "official":  # train_semi.py: label_onehot(label_l), label_onehot(label_u_aug), per rank
            onehot = torch.cat(
                (
                    official_label_onehot(labels[:num_labeled], self.num_classes),
                    official_label_onehot(labels[num_labeled:], self.num_classes),
                )
            )
        else:
            onehot = one_hot_labels(labels, self.num_classes) > 0
        labelled_valid = label_l != IGNORE
        low_mask = _nearest(torch.cat((labelled_valid, low_u)), size)
        high_mask = _nearest(torch.cat((labelled_valid, high_u)), size)
        with torch.no_grad():
            low_valid, anchor, negative_class = contrastive_masks(
                onehot, prob_t, low_mask, high_mask, num_labeled, self.cfg
            )
            count = low_valid.sum(dim=(0, 2, 3))
            prototypes = torch.einsum("bchw,bdhw->cd", low_valid.float(), rep_t.float()) / count.clamp_min(1)[:, None]
            # official order: enqueue first, then sample from the bank. Labelled pixels are never negatives (U2PL#171)
            # and, with the official maps, unlabeled images after the first carry no class: their rows are skipped.
            rows = slice(num_labeled, num_labeled + 1 if self.cfg.onehot == "official" else None)
            self.enqueue(rep_t[rows], negative_class[rows])
            uniforms = torch.rand(self.num_classes, self.cfg.num_queries, device=rep.device)
        loss = contrastive_loss(
            rep.float(), prototypes, count > 0, anchor, uniforms, self._sample_negatives, self.cfg.temperature
        )
        return distributed.all_reduce_mean(loss)

    # ---------------------------------------------------------------------------------------------- steps
    def train_step(self, batch: dict[str, dict[str, Tensor]], ctx: StepContext) -> dict[str, Tensor]:
        if ctx.step_index < self.cfg.sup_only_steps:
            losses = self._sup_only_step(batch["labeled"], ctx)
        else:
            losses = self._semi_step(batch["labeled"], batch["unlabeled"], ctx)
        ctx.step("model")
        if ctx.step_index >= self.cfg.sup_only_steps and ctx.last_micro_step:
            self.update_teacher(ctx.step_index)
            self.semi_steps += 1
        return losses

    def _sup_only_step(self, labeled: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        with ctx.autocast():
            out = self.net(labeled["image"])
        sup = self.supervised_loss(out["main"], out.get("aux"), labeled["label"])
        ctx.backward(sup + 0 * out["rep"].sum())  # official `0 * rep.sum()`: every head stays in the graph (DDP)
        with torch.no_grad(), _mode(self.teacher, True), ctx.autocast():
            self.teacher(labeled["image"])  # official: teacher BatchNorm statistics follow the labelled batches
        zero = torch.zeros((), device=sup.device)
        return {"loss/sup": sup.detach(), "loss/unsup": zero, "loss/contra": zero}

    def _semi_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor], ctx: StepContext):
        cfg, step = self.cfg, ctx.step_index
        image_l, label_l, image_u = labeled["image"], labeled["label"], unlabeled["image"]
        size_u, num_labeled = tuple(image_u.shape[-2:]), image_l.shape[0]
        if step == cfg.sup_only_steps and ctx.micro_step == 0:
            with torch.no_grad():
                torch._foreach_copy_(list(self.teacher.parameters()), list(self.model.parameters()))
                if cfg.copy_teacher_buffers:
                    torch._foreach_copy_(list(self.teacher.buffers()), list(self.model.buffers()))
        with torch.no_grad():
            with _mode(self.teacher, False), ctx.autocast():
                logits_u = self.teacher(image_u)["main"]
            pseudo, _, _ = pseudo_label(upsample(logits_u.float(), size_u, cfg.align_corners))
            coin = torch.rand((), device=image_u.device) < cfg.cutmix_p
            uniforms = torch.rand(image_u.shape[0], 3, device=image_u.device, dtype=torch.float64)
            # Diagnosis only: the unlabelled images' own labels, never trained on (a caller may pass images only).
            hidden = unlabeled.get("label") if ctx.log_step else None
            pseudo_acc = None if hidden is None else label_agreement(pseudo, hidden)
            image_u, pseudo, box = cutmix(image_u, pseudo, coin, uniforms)
            if hidden is not None:
                hidden = torch.where(box, hidden.roll(-1, dims=0), hidden)
            image_all = torch.cat((image_l, image_u))
            if image_l.is_contiguous(memory_format=torch.channels_last):
                image_all = image_all.contiguous(memory_format=torch.channels_last)
        with ctx.autocast():
            out = self.net(image_all)
        aux = out["aux"][:num_labeled] if "aux" in out else None
        sup = self.supervised_loss(out["main"][:num_labeled], aux, label_l)
        with torch.no_grad():
            with _mode(self.teacher, True), ctx.autocast():
                out_t = self.teacher(image_all)
            logits_t = out_t["main"].float()
            logits_u_t = upsample(logits_t[num_labeled:], size_u, cfg.align_corners)
        progress = self.progress(step)
        drop_percent = 100.0 - (100.0 - cfg.drop_percent) * (1.0 - progress)
        alpha = cfg.low_entropy_threshold * (1.0 - progress)
        with torch.no_grad():
            # One entropy pass and one radix select for every threshold of the step: drop_percent for the
            # unsupervised loss, alpha / 100 - alpha for the contrastive anchors and negatives (same teacher
            # entropy and ignore mask in the official compute_unsupervised_loss and contrastive split).
            ignore = pseudo == IGNORE
            percentiles = [drop_percent, alpha, 100.0 - alpha] if cfg.contra_weight > 0 else [drop_percent]
            entropy, thresholds = entropy_thresholds(logits_u_t, ignore, percentiles)
            reliable = ~ignore & (entropy < thresholds[0])
        unsup, _ = unsupervised_loss(
            out["main"][num_labeled:], pseudo, logits_u_t, drop_percent, cfg.align_corners, reliable=reliable
        )
        contra = torch.zeros((), device=sup.device)
        if cfg.contra_weight > 0:
            with torch.no_grad():
                high_u = ~ignore & (entropy >= thresholds[2])
                low_u = ~ignore & (entropy <= thresholds[1])
            contra = self.contrastive(
                out["rep"], out_t["rep"], torch.softmax(logits_t, dim=1), label_l, pseudo, low_u, high_u
            )
        loss = sup + cfg.unsup_weight * unsup + cfg.contra_weight * contra
        ctx.backward(loss)
        out = {"loss/sup": sup.detach(), "loss/unsup": unsup.detach(), "loss/contra": contra.detach()}
        # Pseudo-label quality against the unlabelled images' labels: the teacher's map before CutMix, and on the
        # reliable pixels the unsupervised loss trains on (after CutMix, labels mixed by the same box).
        if ctx.log_step:
            out["diag/pl_reliable_share"] = reliable.float().mean()
        if hidden is not None:
            out["diag/pl_acc_all"] = pseudo_acc
            out["diag/pl_acc_reliable"] = label_agreement(pseudo, hidden, reliable)
        if ctx.log_step and cfg.queue_gather_cap > 0 and cfg.contra_weight > 0:
            out["diag/queue_dropped"] = self.queue_dropped
        return out


def _default_generator(device: torch.device) -> torch.Generator:
    """torch's default generator of `device`: its state is what the trainer's RNG checkpoint saves."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _check(cfg: U2PLConfig, model: nn.Module, total_steps: int) -> None:
    if not isinstance(getattr(model, "rep_channels", None), int):
        raise ValueError("method.name = 'u2pl' needs a segmenter with a representation head ('rep' output): "
                         "set model.name = 'deeplabv3plus'")  # fmt: skip
    checks = [
        ("cutmix_p", 0.0 <= cfg.cutmix_p <= 1.0, "in [0, 1]"),
        ("drop_percent", 0.0 <= cfg.drop_percent <= 100.0, "in [0, 100]"),
        ("low_entropy_threshold", 0.0 <= cfg.low_entropy_threshold <= 100.0, "in [0, 100]"),
        ("low_rank", 0 <= cfg.low_rank < cfg.high_rank, "in [0, method.high_rank)"),
        ("num_queries", cfg.num_queries >= 1, ">= 1"),
        ("num_negatives", cfg.num_negatives >= 1, ">= 1"),
        ("temperature", cfg.temperature > 0, "> 0"),
        ("queue_length", cfg.queue_length >= 0, ">= 0 (0 = official 50000 / 30000)"),
        ("sup_only_steps", cfg.sup_only_steps >= 0, ">= 0"),
        ("teacher_copy_steps", cfg.teacher_copy_steps >= 1, ">= 1"),
        ("steps_per_epoch", cfg.steps_per_epoch >= 0, ">= 0"),
        ("ema_decay", 0.0 <= cfg.ema_decay <= 1.0, "in [0, 1]"),
        ("ohem_min_kept", cfg.ohem_min_kept >= 1, ">= 1"),
        ("onehot", cfg.onehot in ("official", "true"), "'official' or 'true'"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(f"method.{key} = {getattr(cfg, key)!r}: expected {expected}")
    if total_steps < 1:
        raise ValueError(f"schedule.total_steps = {total_steps}: expected >= 1 (U2PL's decays run over it)")


def build(model: nn.Module, cfg: Config) -> U2PL:
    return U2PL(model, cfg.method, cfg.model.num_classes, cfg.schedule.total_steps)
