"""The official values of every paper recipe, in one table, each with the official file it comes from.

A paper recipe reproduces its paper's official run (DESIGN "Faithful first"): the values below are read from the
official repositories (Haochen-Wang409/U2PL experiments/*/ours/config.yaml + train_semi.py, wasidennis/AdaptSegNet
train_gta2cityscapes_multi.py, hfslyc/AdvSemiSeg train.py + README command, swamiviv/LSD-seg code/train.py +
code/torchfcn/trainer_LSD.py), never from the recipes. Counts the official code keeps in epochs are converted with the
official loader length (`segadapt.schedule_epochs`), whose formula is itself checked against torch's
DistributedSampler + DataLoader below. A value a recipe changes on purpose belongs in a demo recipe, not here.
"""

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from segadapt import config
from segadapt.schedule_epochs import official_steps_per_epoch
from segadapt.schedule_epochs import u2pl_epoch_samples

PAPER_RECIPES = sorted(name for name in config.recipe_names() if "demo" not in name)
# Every official code base here trained in fp32 (V100 / Titan X: no TF32; Caffe for Mix-and-Match).
FP32 = {"train.precision": "fp32"}


def _u2pl(dataset: str, labeled: int) -> dict:
    """experiments/{pascal/1464,cityscapes/744}/ours/config.yaml (the repo ships one config per dataset; the other
    splits change data_list and n_sup only), train_semi.py and the README's GPU counts (4 VOC, 8 Cityscapes)."""
    voc = dataset == "voc"
    total, gpus, per_gpu, epochs = (10582, 4, 4, 80) if voc else (2975, 8, 2, 200)
    per_epoch = official_steps_per_epoch(u2pl_epoch_samples(total, labeled), gpus, per_gpu)  # train_semi.py:272
    crop = (513, 513) if voc else (769, 769)
    streams = {
        f"data.{stream}.{key}": value
        for stream in ("labeled", "unlabeled")
        for key, value in {
            "batch_size": gpus * per_gpu,  # dataset.batch_size per GPU; recipes hold the global batch
            "crop": crop,  # dataset.train.crop.size
            "scale_range": (0.5, 2.0),  # dataset.train.rand_resize
            "flip": True,  # dataset.train.flip: True
        }.items()
    }
    return {
        **FP32,
        **streams,
        "data.labeled.list_file": f"data/splits/{'pascal' if voc else 'cityscapes'}/{labeled}/labeled.txt",
        "data.mean": (123.675, 116.28, 103.53),
        "data.std": (58.395, 57.12, 57.375),
        "model.backbone": "resnet101",
        "model.num_classes": 21 if voc else 19,
        "model.multi_level": not voc,  # net.aux_loss only in the Cityscapes config
        "model.aspp_rates": (12, 24, 36),  # net.decoder.kwargs.dilations
        "method.ema_decay": 0.99,
        "method.sup_only_steps": (1 if voc else 0) * per_epoch,  # trainer.sup_only_epoch (default 1; Cityscapes 0)
        "method.teacher_copy_steps": per_epoch,  # train_semi.py:309: t.data = s.data through that whole epoch
        "method.steps_per_epoch": per_epoch,
        "method.onehot": "official",  # train_semi.py:456-465 label_onehot (utils.py:50)
        "method.cutmix_p": 0.5,  # train_semi.py:327 np.random.uniform(0, 1) < 0.5, apply_aug: cutmix
        "method.drop_percent": 80.0,
        "method.low_entropy_threshold": 20.0,
        "method.low_rank": 3,
        "method.high_rank": 20,
        "method.current_class_threshold": 0.3,
        "method.current_class_negative_threshold": 1.0,
        "method.num_queries": 256,
        "method.num_negatives": 50,
        "method.temperature": 0.5,
        "method.queue_length": 0,  # train_semi.py:166-169: 30000, class 0 50000
        "method.unsup_weight": 1.0,
        "method.contra_weight": 1.0,
        "method.ohem": not voc,  # criterion.type: CELoss / ohem
        "method.ohem_thresh": 0.7,
        "method.ohem_min_kept": 100000,
        "method.aux_weight": 0.4,  # net.aux_loss.loss_weight
        "optim.name": "sgd",
        "optim.lr": 0.001 if voc else 0.01,
        "optim.momentum": 0.9,
        "optim.weight_decay": 1e-4 if voc else 5e-4,
        "optim.head_lr_mult": 10.0 if voc else 1.0,  # train_semi.py:100 times = 10 if "pascal" else 1
        "schedule.policy": "poly",
        "schedule.power": 0.9,
        "schedule.total_steps": epochs * per_epoch,
        "schedule.stop_step": epochs * per_epoch,
        "train.sync_bn": True,
        "train.eval_every": per_epoch,  # validation after every epoch
        "eval.mode": "whole" if voc else "slide",  # eval.py:130-153: valiadte_whole (pascal) / validate_city
        **({} if voc else {"eval.crop": crop, "eval.stride_ratio": 2 / 3}),  # eval.py:184 scale_crop_process
    }


def _adaptseg(recipe: str) -> dict:
    """train_gta2cityscapes_multi.py constants (lines 27-51) and the discriminator's Adam betas (0.9, 0.99)."""
    values = {
        **FP32,
        "data.source.batch_size": 1,
        "data.target.batch_size": 1,
        "data.target.resize": (1024, 512),  # INPUT_SIZE_TARGET
        "data.source.flip": False,  # --random-mirror not set
        "optim.lr": 2.5e-4,
        "optim.momentum": 0.9,
        "optim.weight_decay": 5e-4,
        "optim.head_lr_mult": 10.0,
        "method.d_lr": 1e-4,
        "method.d_betas": (0.9, 0.99),
        "schedule.power": 0.9,
        "schedule.total_steps": 250000,
        "schedule.stop_step": 150000,
        "model.num_classes": 19,
    }
    if recipe == "adaptseg_gta2cs":
        values |= {"data.source.resize": (1280, 720), "method.lambda_seg": 0.1}
        values |= {"method.lambda_adv_target1": 0.0002, "method.lambda_adv_target2": 0.001}
    return values


def _advsemi(fraction: float) -> dict:
    """train.py constants (lines 34-54) with the README command's --lambda-adv-pred 0.01 --lambda-semi 0.1
    --semi-start 5000 --mask-T 0.2 --num-steps 20000 (--partial-data p)."""
    values = {
        **FP32,
        "data.labeled.batch_size": 10,
        "data.labeled.crop": (321, 321),
        "data.labeled.flip": False,  # --random-mirror not set
        "data.labeled.scale_range": (1.0, 1.0),  # --random-scale not set
        "data.labeled.fraction": fraction,
        "optim.lr": 2.5e-4,
        "optim.momentum": 0.9,
        "optim.weight_decay": 5e-4,
        "method.d_lr": 1e-4,
        "method.lambda_adv_pred": 0.01,
        "method.mask_t": 0.2,
        "method.semi_start": 5000,
        "schedule.power": 0.9,
        "schedule.total_steps": 20000,
        "model.num_classes": 21,
    }
    if fraction < 1:
        values |= {"method.lambda_semi": 0.1}
    return values


# trainer_LSD.py:182 and :354-359: an epoch is min(len(source loader), len(target loader)) at batch 1 (no sampler, no
# drop_last), F's lr x0.1 every 8 epochs; the target is Cityscapes train (2975), shorter than GTA5 and SYNTHIA.
_LSD_EPOCH = min(official_steps_per_epoch(n, 1, 1, drop_last=False) for n in (24966, 2975))
LSD = {
    **FP32,
    "data.source.batch_size": 1,  # --batchSize 1
    "data.target.batch_size": 1,
    "optim.name": "adam",  # --optimizer Adam
    "optim.lr": 1e-5,
    "optim.betas": (0.9, 0.999),  # --beta1 0.9
    "optim.weight_decay": 0.0,  # the Adam branch passes no weight_decay (train.py:97-104)
    "method.bias_lr_mult": 2.0,
    "method.g_lr": 1e-4,  # optimG / optimD (train.py:109-110)
    "method.d_lr": 1e-4,
    "method.gd_betas": (0.7, 0.999),
    "method.l1_weight": 1.0,
    "method.adv_weight": 0.1,
    "method.c_weight": 0.1,
    "schedule.policy": "step",
    "schedule.gamma": 0.1,
    "schedule.step_size": 8 * _LSD_EPOCH,
    # trainer_LSD.py:354: max_epoch = int(math.ceil(self.max_iter / min(len(loaders)))), integer division under the
    # official Python 2, so ceil(33) = 33 epochs of 2975: 98,175 iterations; --num_iters 100000 is never reached.
    "schedule.total_steps": 33 * _LSD_EPOCH,
    "schedule.stop_step": 33 * _LSD_EPOCH,
}

OFFICIAL: dict[str, dict] = {
    **{f"u2pl_voc_{n}": _u2pl("voc", n) for n in (92, 183, 366, 732, 1464)},
    **{f"u2pl_cityscapes_{n}": _u2pl("cityscapes", n) for n in (186, 372, 744, 1488)},
    **{name: _adaptseg(name) for name in PAPER_RECIPES if name.startswith("adaptseg_")},
    **{f"advsemi_voc_{k}": _advsemi(p) for k, p in (("1_8", 0.125), ("1_4", 0.25), ("1_2", 0.5), ("full", 1.0))},
    "lsd_gta2cs": LSD,
    "lsd_synthia2cs": LSD,
    # Baselines and Mix-and-Match (Caffe prototxts, not checked out here): precision only so far.
    **{name: dict(FP32) for name in PAPER_RECIPES if name.startswith(("mm_", "oracle_", "sourceonly_"))},
}


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return tuple(value) if isinstance(value, list) else value


def test_every_paper_recipe_has_a_row():
    assert sorted(OFFICIAL) == PAPER_RECIPES


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipe_matches_the_official_values(recipe):
    cfg = config.load(recipe)
    wrong = {key: (_get(cfg, key), want) for key, want in OFFICIAL[recipe].items() if _get(cfg, key) != want}
    assert not wrong, f"{recipe}: key -> (recipe, official): {wrong}"


@pytest.mark.parametrize(
    ("num_samples", "world_size", "batch", "drop_last"),
    [(10490, 4, 4, True), (2789, 8, 2, True), (2231, 8, 2, True), (9118, 4, 4, True), (7, 3, 2, True),
     (7, 3, 2, False), (2975, 1, 1, False), (5, 8, 1, True)],
)  # fmt: skip
def test_official_steps_per_epoch_is_len_of_a_distributed_loader(num_samples, world_size, batch, drop_last):
    """u2pl/dataset/pascal_voc.py build_voc_semi_loader: DataLoader(dset, batch_size, sampler=DistributedSampler(dset),
    drop_last=True), one per rank; train_semi.py:272 iterates range(len(loader_l))."""
    dataset = torch.utils.data.TensorDataset(torch.zeros(num_samples))
    lengths = {
        len(DataLoader(dataset, batch, sampler=DistributedSampler(dataset, world_size, rank), drop_last=drop_last))
        for rank in range(world_size)
    }
    assert lengths == {official_steps_per_epoch(num_samples, world_size, batch, drop_last)}


def test_official_steps_per_epoch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world_size = 0"):
        official_steps_per_epoch(10, 0, 2)
    with pytest.raises(ValueError, match="labeled = 3000"):
        u2pl_epoch_samples(2975, 3000)
