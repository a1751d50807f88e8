"""U2PL against transcriptions of the official formulas (`compute_unsupervised_loss`,
`compute_contra_memobank_loss`, `OhemCrossEntropy2dTensor`, `generate_cutout_mask`) and the EMA / queue rules."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segadapt import config
from segadapt.methods import StepContext
from segadapt.methods import build_method
from segadapt.methods import u2pl
from segadapt.models import build_segmenter
from segadapt.optim import make_optimizer

C = 5


def _build(**method):
    model = {"name": "deeplabv3plus", "backbone": "resnet18", "width": 4, "num_classes": C}
    cfg = config.load_dict({"model": model, "method": {"name": "u2pl", **method}}, "test.toml")
    method = build_method(build_segmenter(cfg.model), cfg)
    specs = method.optimizers(cfg.optim)
    optimizers = {n: make_optimizer(s, torch.device("cpu"), "off") for n, s in specs.items()}
    return method, StepContext("cpu", None, torch.amp.GradScaler("cpu", enabled=False), optimizers)


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)

    def stream():
        return {"image": torch.randn(2, 3, 32, 48, generator=g), "label": torch.randint(0, C, (2, 32, 48), generator=g)}

    return {"labeled": stream(), "unlabeled": stream()}


def test_unsupervised_loss_matches_the_official_formula_with_numpy_percentile():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, C, 8, 12, generator=g) * 2
    student = torch.randn(2, C, 8, 12, generator=g)
    pseudo = teacher.argmax(dim=1)
    pseudo[0, 0, :3] = 255  # a few ignored pixels (CutOut-style) stay out of the percentile
    loss, reliable = u2pl.unsupervised_loss(student, pseudo, teacher, 80.0, align_corners=True)

    prob = torch.softmax(teacher.double(), dim=1)
    entropy = -(prob * prob.log()).sum(dim=1).numpy()
    valid = (pseudo != 255).numpy()
    thresh = np.percentile(entropy[valid], 80)
    drop = (entropy >= thresh) & valid
    target = pseudo.clone()
    target[torch.from_numpy(drop)] = 255
    weight = target.numel() / (target != 255).sum()
    want = weight * F.cross_entropy(student, target, ignore_index=255)
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(reliable, torch.from_numpy(valid & (entropy < thresh)))
    assert 0 < int(reliable.sum()) < int(valid.sum())


def _official_contrastive(rep, rep_t, onehot, prob, low_mask, high_mask, num_labeled, cfg, uniforms, negatives):
    """Loop transcription of compute_contra_memobank_loss, with its randint draws replaced by fixed uniforms and its
    memory-bank draws by `negatives[class]`; returns (loss, keys per class)."""
    low_valid = onehot.float() * low_mask[:, None].float()
    high_valid = onehot.float() * high_mask[:, None].float()
    rep_p, rep_t_p = rep.permute(0, 2, 3, 1), rep_t.permute(0, 2, 3, 1)
    _, idx_l = torch.sort(prob[:num_labeled], dim=1, descending=True, stable=True)
    _, idx_u = torch.sort(prob[num_labeled:], dim=1, descending=True, stable=True)
    idx_l, idx_u = idx_l.permute(0, 2, 3, 1), idx_u.permute(0, 2, 3, 1)
    low_entropy_feats, protos, valid_classes, keys = [], [], [], []
    for i in range(C):
        low_seg, high_seg = low_valid[:, i].bool(), high_valid[:, i].bool()
        low_entropy_feats.append(rep_p[(prob[:, i] > cfg.current_class_threshold) & low_seg])
        protos.append(rep_t_p[low_seg].mean(dim=0, keepdim=True))
        class_u = (idx_u[..., cfg.low_rank : cfg.high_rank] == i).sum(dim=3).bool()
        class_l = (idx_l[..., : cfg.low_rank] == i).sum(dim=3).bool() & (onehot[:num_labeled, i] == 0)
        negative = (prob[:, i] < cfg.current_class_negative_threshold) & high_seg & torch.cat((class_l, class_u))
        keys.append(rep_t_p[negative])
        if low_seg.sum() > 0:
            valid_classes.append(i)
    if len(valid_classes) <= 1:
        return torch.tensor(0.0), keys
    total = torch.tensor(0.0)
    for i in range(len(valid_classes)):
        candidates = low_entropy_feats[i]
        if len(candidates) == 0:
            continue
        anchor = candidates[(uniforms[i] * len(candidates)).floor().long()]
        positive = protos[i].repeat(len(anchor), 1)[:, None]
        all_feat = torch.cat((positive, negatives[valid_classes[i]]), dim=1)
        logits = torch.cosine_similarity(anchor[:, None], all_feat, dim=2)
        total = total + F.cross_entropy(logits / cfg.temperature, torch.zeros(len(anchor), dtype=torch.long))
    return total / len(valid_classes), keys


def _official_onehot_oracle(label: torch.Tensor) -> torch.Tensor:
    """u2pl/utils/utils.py:50-59 `label_onehot`, by its semantics, one image at a time: line 55 sets 255 to 0, line 56
    `outputs.scatter_(0, inputs_temp.unsqueeze(1), 1.0)` on (C, B, H, W) writes outputs[label[b, y, x], 0, y, x] = 1
    for every b (torch.scatter_: self[index[i][j][k][l]][j][k][l] = 1 with j = 0), line 57 `outputs[:, inputs == 255]
    = 0` clears each image's own ignored pixels, line 59 permutes to (B, C, H, W)."""
    batch, height, width = label.shape
    out = torch.zeros(batch, C, height, width, dtype=torch.bool)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                value = int(label[b, y, x])
                out[0, 0 if value == 255 else value, y, x] = True
    out.permute(0, 2, 3, 1)[label == 255] = False  # line 57: every class at each image's own ignored pixels
    return out


def test_official_label_onehot_puts_each_half_union_in_image_zero():
    label = torch.tensor([[[0, 1], [255, 3]], [[1, 1], [0, 255]], [[2, 2], [3, 3]]])
    got = u2pl.official_label_onehot(label, C)
    assert not got[1:].any()  # images 1..B-1 all zero
    # image 0 at (0, 0): {0, 1, 2}; (0, 1): {1, 2}; (1, 0): image 0 ignored -> nothing; (1, 1): {3, 0 (ignore), 3}
    want = {(0, 0): {0, 1, 2}, (0, 1): {1, 2}, (1, 0): set(), (1, 1): {0, 3}}
    for (y, x), classes in want.items():
        assert set(got[0, :, y, x].nonzero().flatten().tolist()) == classes, (y, x)
    g = torch.Generator().manual_seed(0)
    for batch in (1, 2, 4):
        label = torch.randint(0, C, (batch, 5, 6), generator=g)
        label[torch.rand(batch, 5, 6, generator=g) < 0.2] = 255
        assert torch.equal(u2pl.official_label_onehot(label, C), _official_onehot_oracle(label)), batch


def test_unknown_onehot_mode_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match=r"method\.onehot = 'both': expected 'official' or 'true'"):
        _build(onehot="both")


@pytest.mark.parametrize("onehot_mode", ["official", "true"])
def test_contrastive_loss_and_negative_keys_match_a_loop_transcription(onehot_mode):
    g = torch.Generator().manual_seed(3)
    cfg = config.U2PL(
        low_rank=1, high_rank=4, current_class_threshold=0.25, num_queries=7, num_negatives=3, onehot=onehot_mode
    )
    batch, dim, height, width, num_labeled = 4, 6, 5, 7, 2
    rep = torch.randn(batch, dim, height, width, generator=g)
    rep_t = torch.randn(batch, dim, height, width, generator=g)
    prob = torch.softmax(torch.randn(batch, C, height, width, generator=g) * 2, dim=1)
    # Unlabeled pseudo-labels differ from the teacher argmax here (as after CutMix), so the rank window can hold them.
    labels = torch.randint(0, C, (batch, height, width), generator=g)
    labels[labels == 1] = 2  # class 1 absent: valid classes [0, 2, 3, 4], so slot i pairs class i with class i + 1
    labels[0, 0] = 255
    onehot = F.one_hot(labels.clamp_max(C - 1), C).permute(0, 3, 1, 2).bool() & (labels != 255)[:, None]
    if onehot_mode == "official":  # train_semi.py: label_onehot(label_l) and label_onehot(label_u_aug), one per half
        halves = (labels[:num_labeled], labels[num_labeled:])
        onehot = torch.cat([_official_onehot_oracle(half) for half in halves])
    low_mask = torch.rand(batch, height, width, generator=g) < 0.6
    high_mask = torch.rand(batch, height, width, generator=g) < 0.6
    low_mask[:num_labeled], high_mask[:num_labeled] = labels[:num_labeled] != 255, labels[:num_labeled] != 255
    uniforms = torch.rand(C, cfg.num_queries, generator=g)
    negatives = torch.randn(C, cfg.num_queries, cfg.num_negatives, dim, generator=g)

    low_valid, anchor, negative_class = u2pl.contrastive_masks(onehot, prob, low_mask, high_mask, num_labeled, cfg)
    count = low_valid.sum(dim=(0, 2, 3))
    prototypes = torch.einsum("bchw,bdhw->cd", low_valid.float(), rep_t) / count.clamp_min(1)[:, None]
    loss = u2pl.contrastive_loss(
        rep, prototypes, count > 0, anchor, uniforms, lambda q: (negatives[q], torch.ones(C, dtype=torch.bool)), 0.5
    )
    want, keys = _official_contrastive(
        rep, rep_t, onehot, prob, low_mask, high_mask, num_labeled, cfg, uniforms, negatives
    )
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert loss > 0
    slots = negative_class.shape[-1]
    flat_keys = rep_t.permute(0, 2, 3, 1)[..., None, :].expand(-1, -1, -1, slots, -1).reshape(-1, dim)
    for c in range(C):
        torch.testing.assert_close(flat_keys[negative_class.flatten() == c], keys[c], msg=f"keys of class {c}")
    assert sum(len(k) for k in keys) > 0
    assert (negative_class[:num_labeled] == -1).all()  # the official masks never take labelled negatives (U2PL#171)


def _ring(method, c: int) -> torch.Tensor:
    """Class c's queue, oldest key first."""
    queue = method.queue
    count, ptr, length = int(queue.count[c]), int(queue.write_ptr[c]), int(queue.lengths[c])
    start = int(queue.offsets[c])
    return torch.stack([queue.storage[start + (ptr - count + i) % length] for i in range(count)]) if count else None


@pytest.mark.parametrize("onehot_mode", ["official", "true"])
def test_contrastive_enqueues_the_official_label_onehot_negatives(onehot_mode):
    """`U2PL.contrastive` end to end against train_semi.py:456-465 (label_onehot per half, nearest downsampling) and
    loss_helper.py compute_contra_memobank_loss's per-class `keys = rep_teacher[negative_mask]`, enqueued class by class
    (utils.py dequeue_and_enqueue): with the official maps only image 0 of the unlabeled half gives keys, and one pixel
    can join several queues (its union holds several classes)."""
    method, _ = _build(low_rank=1, high_rank=4, queue_length=500, num_queries=3, num_negatives=2, onehot=onehot_mode)
    g = torch.Generator().manual_seed(7)
    num_labeled, num_unlabeled, dim, height, width = 2, 3, method.model.rep_channels, 6, 8
    batch = num_labeled + num_unlabeled
    rep = torch.randn(batch, dim, height, width, generator=g)
    rep_t = torch.randn(batch, dim, height, width, generator=g)
    prob = torch.softmax(torch.randn(batch, C, height, width, generator=g) * 2, dim=1)
    label_l = torch.randint(0, C, (num_labeled, height, width), generator=g)
    label_l[0, 0] = 255
    pseudo = torch.randint(0, C, (num_unlabeled, height, width), generator=g)
    low_u = torch.rand(num_unlabeled, height, width, generator=g) < 0.5
    high_u = torch.rand(num_unlabeled, height, width, generator=g) < 0.7
    method.contrastive(rep, rep_t, prob, label_l, pseudo, low_u, high_u)

    if onehot_mode == "official":
        onehot = torch.cat((_official_onehot_oracle(label_l), _official_onehot_oracle(pseudo)))
    else:
        onehot = F.one_hot(label_l.clamp_max(C - 1), C).permute(0, 3, 1, 2).bool() & (label_l != 255)[:, None]
        onehot = torch.cat((onehot, F.one_hot(pseudo, C).permute(0, 3, 1, 2).bool()))
    high = torch.cat((label_l != 255, high_u))
    _, order = torch.sort(prob, dim=1, descending=True, stable=True)
    order = order.permute(0, 2, 3, 1)
    rep_t_p = rep_t.permute(0, 2, 3, 1)
    per_pixel = torch.zeros(batch, height, width, dtype=torch.long)
    for c in range(C):
        class_l = (order[:num_labeled, ..., :1] == c).any(dim=3) & ~onehot[:num_labeled, c]
        class_u = (order[num_labeled:, ..., 1:4] == c).any(dim=3)
        negative = onehot[:, c] & high & (prob[:, c] < 1.0) & torch.cat((class_l, class_u))
        per_pixel += negative.long()
        want = rep_t_p[negative]
        got = _ring(method, c)
        assert (got is None and len(want) == 0) or torch.equal(got, want), f"queue {c}"
    if onehot_mode == "official":
        assert per_pixel.max() >= 2  # some pixel joined two queues: the case a one-class-per-pixel enqueue misses
        assert per_pixel[num_labeled + 1 :].sum() == 0
    assert per_pixel[num_labeled:].sum() > 0


_RANK_SCRIPT = """
import sys
import torch
from segadapt import distributed
from segadapt.methods import u2pl
from segadapt.models import build_segmenter
from segadapt import config

world = distributed.init("gloo", "cpu", 120.0)
torch.manual_seed(0)
cfg = config.load_dict({"model": {"name": "deeplabv3plus", "backbone": "resnet18", "width": 4, "num_classes": 5},
                        "method": {"name": "u2pl", "low_rank": 1, "high_rank": 4, "num_queries": 4,
                                   "num_negatives": 3, "queue_length": 50}}, "rank.toml")
method = u2pl.build(build_segmenter(cfg.model), cfg)
g = torch.Generator().manual_seed(10 + world.rank)  # each rank its own images
nl, nu, d, h, w = 2, 2, method.model.rep_channels, 6, 8
rep = torch.randn(nl + nu, d, h, w, generator=g).requires_grad_(True)
rep_t = torch.randn(nl + nu, d, h, w, generator=g)
prob = torch.softmax(torch.randn(nl + nu, 5, h, w, generator=g) * 2, dim=1)
label_l = torch.randint(0, 5, (nl, h, w), generator=g)
pseudo = torch.randint(0, 5, (nu, h, w), generator=g)
low_u, high_u = torch.rand(nu, h, w, generator=g) < 0.5, torch.rand(nu, h, w, generator=g) < 0.7
torch.manual_seed(100)  # the same anchor / negative draws on every rank
method.contrastive(rep.detach(), rep_t, prob, label_l, pseudo, low_u, high_u)  # fill the queues first
state = {key: value.clone() for key, value in method.state_dict().items()}
torch.manual_seed(200 + world.rank)
loss = method.contrastive(rep, rep_t, prob, label_l, pseudo, low_u, high_u)
loss.backward()
grad, rep.grad = rep.grad.clone(), None
method.load_state_dict(state)  # the same queues and draws again, without the reduction: this rank's own loss
distributed.all_reduce_mean = lambda tensor: tensor
torch.manual_seed(200 + world.rank)
local = method.contrastive(rep, rep_t, prob, label_l, pseudo, low_u, high_u)
local.backward()
torch.save({"loss": loss.detach(), "grad": grad, "local": local.detach(), "local_grad": rep.grad},
           sys.argv[1] + f".{world.rank}")
distributed.shutdown()  # as `segadapt train` leaves a torchrun job (distributed.shutdown says why)
distributed.exit_process(0)
"""


def test_contrastive_value_is_the_rank_mean_and_its_gradient_local_over_world_size(tmp_path):
    """train_semi.py:515-518: `dist.all_reduce(contra_loss); contra_loss = contra_loss / world_size * loss_weight`.
    The in-place all_reduce is invisible to autograd, so the value is the mean over ranks while each rank's gradient
    is its own loss's gradient / world_size (then DDP averages ranks): the term weighs 1/W against the other losses."""
    import os
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(script),
               str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"out.{rank}", weights_only=True) for rank in range(2)]
    assert float(ranks[0]["local"]) != float(ranks[1]["local"])  # each rank's own loss differs ...
    mean = (ranks[0]["local"] + ranks[1]["local"]) / 2
    for rank in ranks:
        torch.testing.assert_close(rank["loss"], mean)  # ... the value both return is their mean
        assert rank["local_grad"].abs().sum() > 0
        torch.testing.assert_close(rank["grad"], rank["local_grad"] / 2)  # the gradient of loss_r / W


def test_contrastive_loss_is_zero_with_one_class():
    rep = torch.randn(2, 4, 3, 3, requires_grad=True)
    anchor = torch.zeros(2, C, 3, 3, dtype=torch.bool)
    anchor[:, 1] = True
    valid = torch.tensor([False, True, False, False, False])
    loss = u2pl.contrastive_loss(
        rep, torch.randn(C, 4), valid, anchor, torch.rand(C, 2), lambda q: (torch.randn(C, 2, 3, 4), valid), 0.5
    )
    assert loss == 0 and loss.requires_grad


def test_queue_keeps_the_newest_keys_per_class_through_enqueue():
    method, _ = _build(queue_length=3, onehot="true")
    g = torch.Generator().manual_seed(0)
    history = {c: [] for c in range(C)}
    for _ in range(3):
        rep_t = torch.randn(1, method.model.rep_channels, 2, 3, generator=g)
        classes = torch.randint(-1, 3, (1, 2, 3), generator=g)
        method.enqueue(rep_t, classes)
        flat = rep_t.permute(0, 2, 3, 1).reshape(-1, rep_t.shape[1])
        for row, c in zip(flat, classes.flatten().tolist(), strict=True):
            if c >= 0:
                history[c].append(row)
    state = method.state_dict()
    for c in range(C):
        kept = history[c][-3:]
        count, ptr = int(state["queue_count"][c]), int(state["queue_write_ptr"][c])
        assert count == len(kept)
        ring = state["queue_storage"][3 * c : 3 * c + 3]
        got = [ring[(ptr - count + i) % 3] for i in range(count)]  # oldest first
        for a, b in zip(got, kept, strict=True):
            torch.testing.assert_close(a, b)


def test_newest_negatives_keeps_the_last_negative_rows_in_order():
    """The compaction before the capped all_gather, against a Python list: the last `cap` rows with class >= 0, in
    order, then class -1 padding, and the count of negatives that did not fit."""
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(40, 4, generator=g)
    classes = torch.randint(-1, 3, (40,), generator=g)
    classes[::3] = -1
    rows = [(k, c) for k, c in zip(keys, classes.tolist(), strict=True) if c >= 0]
    for cap in (1, 7, len(rows), len(rows) + 5):
        got_keys, got_classes, dropped = u2pl.newest_negatives(keys, classes, cap)
        kept = rows[-cap:]
        assert got_keys.shape == (cap, 4) and got_classes.shape == (cap,)
        assert got_classes[: len(kept)].tolist() == [c for _, c in kept]
        assert (got_classes[len(kept) :] == -1).all() and (got_keys[len(kept) :] == 0).all()
        assert torch.equal(got_keys[: len(kept)], torch.stack([k for k, _ in kept]))
        assert int(dropped) == max(len(rows) - cap, 0)


def test_capped_queue_gather_equals_the_full_one_while_the_cap_holds():
    """method.queue_gather_cap: the queues equal the uncapped ones when every step's negatives fit the cap (the
    compaction keeps their order), and when they do not, equal enqueuing only each step's newest `cap` negatives."""
    g = torch.Generator().manual_seed(1)
    dim = _build(onehot="true")[0].model.rep_channels
    steps = [(torch.randn(1, dim, 3, 4, generator=g), torch.randint(-1, 3, (1, 3, 4), generator=g)) for _ in range(4)]
    full, _ = _build(queue_length=6, onehot="true")
    capped, _ = _build(queue_length=6, onehot="true", queue_gather_cap=12)
    tight, _ = _build(queue_length=6, onehot="true", queue_gather_cap=2)
    newest, _ = _build(queue_length=6, onehot="true")
    for rep_t, classes in steps:
        full.enqueue(rep_t, classes)
        capped.enqueue(rep_t, classes)
        assert int(capped.queue_dropped) == 0
        tight.enqueue(rep_t, classes)
        negatives = int((classes >= 0).sum())
        assert int(tight.queue_dropped) == max(negatives - 2, 0)
        # the newest two negatives only, enqueued uncapped
        flat = classes.flatten()
        order = torch.nonzero(flat >= 0).flatten()[-2:]
        only = torch.full_like(flat, -1)
        only[order] = flat[order]
        newest.enqueue(rep_t, only.view_as(classes))
    for key in ("queue_storage", "queue_write_ptr", "queue_count"):
        torch.testing.assert_close(capped.state_dict()[key], full.state_dict()[key], rtol=0, atol=0)
        torch.testing.assert_close(tight.state_dict()[key], newest.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(tight.state_dict()["queue_count"], full.state_dict()["queue_count"])


def _student(method):
    return [p.detach().clone() for p in method.model.parameters()]


@pytest.mark.parametrize("cap", [0, 40])
def test_enqueue_gathers_each_pixel_once_in_its_own_dtype_and_fills_the_queues_as_before(monkeypatch, cap):
    """Issue 20, the all_gather's bytes: keys cross ranks in the representation's dtype (bf16 under AMP) and once per
    pixel, classes as int8, and the class-slot expansion happens after the gather. The queues must equal those of
    the float32 gather of every (pixel, class slot) row exactly (bf16 -> float32 is exact), with and without the cap.
    Two ranks are simulated by a gather that returns its input twice."""
    method, _ = _build(queue_length=50, onehot="official", queue_gather_cap=cap)
    expected, _ = _build(queue_length=50, onehot="official", queue_gather_cap=cap)
    g = torch.Generator().manual_seed(4)
    dim, slots = method.model.rep_channels, 3
    rep_t = torch.randn(1, dim, 6, 8, generator=g).to(torch.bfloat16)
    negative = torch.rand(1, C, 6, 8, generator=g) < 0.4
    negative_class = u2pl.negative_slots(negative, slots)
    sent, shift = [], 5  # rank 1 holds rank 0's rows rotated by `shift` rows: a rank mix-up changes the rings

    def two_ranks(tensor):
        sent.append((tensor.dtype, tuple(tensor.shape)))
        return torch.cat((tensor, tensor.roll(shift, 0)))

    monkeypatch.setattr(u2pl.distributed, "all_gather_cat", two_ranks)
    monkeypatch.setattr(u2pl.distributed, "all_reduce_sum", lambda tensor: 2 * tensor)
    method.enqueue(rep_t, negative_class)

    keys = rep_t.float().permute(0, 2, 3, 1)[..., None, :].expand(-1, -1, -1, slots, -1).reshape(-1, dim)
    classes = negative_class.reshape(-1)
    rolled = shift * slots  # the same pixels rotated: `shift` pixels are shift * slots expanded rows
    if cap:
        keys, classes, first_kept = u2pl.newest_negatives(keys, classes, cap)
        rolled = shift  # compacted rows cross ranks as they are
        assert int(method.queue_dropped) == 2 * int(first_kept) > 0
    expected.queue.enqueue(torch.cat((keys, keys.roll(rolled, 0))), torch.cat((classes, classes.roll(rolled, 0))))
    rows = (cap, 1) if cap else (6 * 8, slots)
    assert sent == [(torch.bfloat16, (rows[0], dim)), (torch.int8, rows)]
    state, want = method.state_dict(), expected.state_dict()
    assert int(want["queue_count"].sum()) > 0
    for key in ("queue_storage", "queue_write_ptr", "queue_count"):
        assert torch.equal(state[key], want[key]), key


def test_teacher_follows_the_ema_formula_after_two_steps():
    method, ctx = _build(contra_weight=0.0, cutmix_p=0.0, ema_decay=0.99)
    snapshots = []
    for step in range(2):
        ctx.step_index = step
        method.train_step(_batch(step), ctx)
        snapshots.append(_student(method))
    # step 0: momentum min(1 - 1/1, 0.99) = 0 -> copy; step 1: min(1 - 1/2, 0.99) = 0.5.
    for teacher, s0, s1 in zip(method.teacher.parameters(), *snapshots, strict=True):
        torch.testing.assert_close(teacher, 0.5 * s0 + 0.5 * s1)
    assert any(not torch.equal(a, b) for a, b in zip(*snapshots, strict=True))
    assert method.eval_model() is method.teacher


def test_sup_only_phase_then_copy_window_and_eval_switch():
    method, ctx = _build(sup_only_steps=1, teacher_copy_steps=2, contra_weight=0.0)
    initial = [p.detach().clone() for p in method.teacher.parameters()]
    ctx.step_index = 0
    losses = method.train_step(_batch(0), ctx)
    assert losses["loss/unsup"] == 0 and method.eval_model() is method.model
    assert all(torch.equal(t, i) for t, i in zip(method.teacher.parameters(), initial, strict=True))
    for step in (1, 2):  # both inside the copy window: teacher = student after the step (official shared storage)
        ctx.step_index = step
        method.train_step(_batch(step), ctx)
        for teacher, student in zip(method.teacher.parameters(), method.model.parameters(), strict=True):
            assert torch.equal(teacher, student)
    assert method.eval_model() is method.teacher


@pytest.mark.parametrize("copy_buffers", [False, True])
def test_teacher_statistics_are_copied_at_the_semi_start_only_when_asked(copy_buffers):
    method, ctx = _build(sup_only_steps=1, contra_weight=0.0, copy_teacher_buffers=copy_buffers)
    ctx.step_index = 0
    method.train_step(_batch(0), ctx)  # sup-only: the teacher's own train-mode forward moves its statistics
    student = {k: v.clone() for k, v in method.model.named_buffers() if "running" in k}
    teacher = {k: v.clone() for k, v in method.teacher.named_buffers() if "running" in k}
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    calls = []
    real_teacher_forward = method.teacher.forward

    def spy(image):  # the statistics the first semi-phase pseudo-labels are computed with
        if not calls:
            calls.append({k: v.clone() for k, v in method.teacher.named_buffers() if "running" in k})
        return real_teacher_forward(image)

    method.teacher.forward = spy
    ctx.step_index = 1
    method.train_step(_batch(1), ctx)
    used = calls[0]
    reference = student if copy_buffers else teacher
    assert all(torch.equal(used[k], reference[k]) for k in used)


def test_cutmix_mixes_image_and_pseudo_label_with_the_same_box():
    g = torch.Generator().manual_seed(0)
    image, label = torch.randn(3, 3, 20, 30, generator=g), torch.randint(0, C, (3, 20, 30), generator=g)
    uniforms = torch.rand(3, 3, generator=g, dtype=torch.float64)
    mixed, mixed_label, box = u2pl.cutmix(image, label, torch.tensor(True), uniforms)
    for i in range(3):
        rows, cols = box[i].any(dim=1).nonzero().flatten(), box[i].any(dim=0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert box[i].sum() == h * w  # one rectangle
        assert 16 <= w <= 29 and h == round(20 * 30 / 2 / w)  # generate_cutout_mask(ratio=2) geometry
        nxt = (i + 1) % 3
        assert torch.equal(mixed[i][:, box[i]], image[nxt][:, box[i]])
        assert torch.equal(mixed[i][:, ~box[i]], image[i][:, ~box[i]])
        assert torch.equal(mixed_label[i], torch.where(box[i], label[nxt], label[i]))
    unchanged, same_label, none = u2pl.cutmix(image, label, torch.tensor(False), uniforms)
    assert torch.equal(unchanged, image) and torch.equal(same_label, label) and not none.any()


@pytest.mark.parametrize("min_kept", [5, 50, 10_000])
def test_ohem_matches_the_official_sort_based_version(min_kept):
    g = torch.Generator().manual_seed(min_kept)
    logits = torch.randn(2, C, 6, 7, generator=g) * 3
    label = torch.randint(0, C, (2, 6, 7), generator=g)
    label[0, :2] = 255
    got = u2pl.ohem_cross_entropy(logits, label, 0.7, min_kept)

    target = label.flatten().clone()
    valid = target != 255
    target = target * valid.long()
    prob = torch.softmax(logits, 1).transpose(0, 1).reshape(C, -1)
    if not min_kept > valid.sum():
        prob = prob.masked_fill(~valid, 1)
        mask_prob = prob[target, torch.arange(len(target))]
        threshold = 0.7
        _, index = mask_prob.sort()
        threshold_index = index[min(len(index), min_kept) - 1]
        if mask_prob[threshold_index] > 0.7:
            threshold = mask_prob[threshold_index]
        valid = valid & mask_prob.le(threshold)
    target = target.masked_fill(~valid, 255).view(2, 6, 7)
    torch.testing.assert_close(got, F.cross_entropy(logits, target, ignore_index=255))
