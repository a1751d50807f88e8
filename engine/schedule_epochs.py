"""Official epoch lengths, for recipes whose official schedules count epochs (U2PL, LSD-seg).

A recipe counts in steps (`schedule.total_steps`, `method.steps_per_epoch`, ...); where the official code counts in
epochs, the recipe's step counts are epochs x the official `len(loader)`, computed here and checked against every such
recipe by tests/recipes/test_official_values.py. The lengths depend on the official world size, which a segadapt run
does not share (its global batch is split over whatever W it runs on), so they are recipe data, not derived at run time.
"""

from __future__ import annotations

import math


def official_steps_per_epoch(num_samples: int, world_size: int, batch_per_rank: int, drop_last: bool = True) -> int:
    """`len(DataLoader(dataset, batch_per_rank, sampler=DistributedSampler(dataset), drop_last=drop_last))`.

    torch's DistributedSampler (drop_last=False, its default) pads the dataset to ceil(N / W) samples per rank; the
    DataLoader then yields floor (drop_last) or ceil of that over the per-rank batch. U2PL's loaders
    (u2pl/dataset/{pascal_voc,cityscapes}.py build_*_semi_loader) use DistributedSampler + drop_last=True; a
    single-process loader without a sampler is world_size = 1.

    Args:
        num_samples: N, the dataset length the sampler sees.
        world_size: W, the official number of processes (GPUs).
        batch_per_rank: the official per-GPU batch (dataset.batch_size).
        drop_last: the DataLoader's drop_last.
    """
    for name, value, low in (("num_samples", num_samples, 0), ("world_size", world_size, 1),
                             ("batch_per_rank", batch_per_rank, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"official_steps_per_epoch: {name} = {value!r}: expected an int >= {low}")
    per_rank = math.ceil(num_samples / world_size)
    return per_rank // batch_per_rank if drop_last else math.ceil(per_rank / batch_per_rank)


def u2pl_epoch_samples(total: int, labeled: int) -> int:
    """The official U2PL epoch's dataset length: both loaders sample `total - n_sup` images per epoch
    (build_*_semi_loader: `n_sup = 10582 - cfg["n_sup"]` for VOC, `2975 - cfg["n_sup"]` for Cityscapes; the labelled
    list is repeated and resampled to that length), i.e. the unlabeled set's size."""
    if not 0 < labeled < total:
        raise ValueError(f"u2pl_epoch_samples: labeled = {labeled!r}: expected 0 < labeled < total ({total})")
    return total - labeled
