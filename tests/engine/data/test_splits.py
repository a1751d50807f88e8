"""Partial-data splits: fraction / count draws, their complement, the record in the run directory, and errors."""

import numpy as np
import pytest
from test_datasets import _gta5

from segadapt import config
from segadapt.config import Stream
from segadapt.data.datasets import Sample
from segadapt.data.datasets import draw_subset
from segadapt.data.datasets import list_samples


def _samples(n: int) -> list[Sample]:
    return [Sample(f"img{i:03d}.png", f"lbl{i:03d}.png", f"{i:03d}") for i in range(n)]


def test_fraction_draws_the_first_ids_of_a_seeded_permutation_and_complement_takes_the_rest():
    samples = _samples(150)
    labeled = draw_subset(samples, Stream(dataset="cityscapes", fraction=0.125, split_seed=7))
    rest = draw_subset(samples, Stream(dataset="cityscapes", fraction=0.125, split_seed=7, complement=True))
    order = np.random.Generator(np.random.PCG64(7)).permutation(150)  # AdvSemiSeg: shuffle, keep the first part
    assert [s.id for s in labeled] == [f"{i:03d}" for i in sorted(order[:19])]  # round(0.125 * 150) = 19
    assert {s.id for s in labeled}.isdisjoint(s.id for s in rest)
    assert len(labeled) + len(rest) == 150
    other = draw_subset(samples, Stream(dataset="cityscapes", fraction=0.125, split_seed=8))
    assert {s.id for s in other} != {s.id for s in labeled}


def test_count_overrides_fraction_and_whole_keeps_everything():
    samples = _samples(20)
    assert len(draw_subset(samples, Stream(dataset="voc", count=3, fraction=0.5))) == 3
    assert draw_subset(samples, Stream(dataset="voc")) is samples


@pytest.mark.parametrize(
    ("stream", "match"),
    [
        (Stream(dataset="voc", count=30), "count = 30 but only 20 images"),
        (Stream(dataset="voc", fraction=0.0), r"fraction = 0.0 in \(0, 1\]"),
        (Stream(dataset="voc", count=20, complement=True), "complement of the draw of 20 of 20 images .* is empty"),
    ],
)
def test_impossible_draws_name_the_setting(stream, match):
    with pytest.raises(ValueError, match=match):
        draw_subset(_samples(20), stream)


def test_list_samples_applies_the_draw_after_the_list_file(tmp_path):
    root = _gta5(tmp_path / "gta5", count=6)
    ids = tmp_path / "ids.txt"
    ids.write_text("00000\n00002\n00003\n00005\n")
    stream = Stream(dataset="gta5", root=str(root), list_file=str(ids), count=2, split_seed=1)
    chosen = [s.id for s in list_samples(stream)]
    assert len(chosen) == 2 and set(chosen) <= {"00000", "00002", "00003", "00005"}


def test_the_trainer_records_the_drawn_ids(tmp_path):
    from segadapt.train import Run
    from segadapt.train import write_splits

    root = _gta5(tmp_path / "gta5", count=8)
    tree = {"data": {"labeled": {"dataset": "gta5", "root": str(root), "fraction": 0.25, "split_seed": 3},
                     "unlabeled": {"dataset": "gta5", "root": str(root), "fraction": 0.25, "split_seed": 3,
                                   "complement": True}}}  # fmt: skip
    cfg = config.load_dict(tree, "test.toml")

    class _Method:
        streams = ("labeled", "unlabeled")

    run = Run(cfg, None, _Method(), None, {}, {}, None, tmp_path / "run")
    write_splits(run)
    labeled = (tmp_path / "run" / "splits" / "labeled.txt").read_text().split()
    unlabeled = (tmp_path / "run" / "splits" / "unlabeled.txt").read_text().split()
    assert labeled == [s.id for s in list_samples(cfg.data.labeled)] and len(labeled) == 2
    assert sorted(labeled + unlabeled) == [f"{i:05d}" for i in range(8)]


@pytest.mark.parametrize(("fraction", "official"), [(0.125, 1322), (0.25, 2645), (0.5, 5291)])
def test_floor_rounding_is_the_official_partial_size(fraction, official):
    # hfslyc/AdvSemiSeg train.py:253 partial_size = int(args.partial_data * train_dataset_size), train_aug 10,582
    samples = _samples(10582)
    floor = Stream(dataset="voc", fraction=fraction, fraction_rounding="floor")
    assert len(draw_subset(samples, floor)) == official == int(fraction * 10582)
    rest = draw_subset(samples, Stream(dataset="voc", fraction=fraction, fraction_rounding="floor", complement=True))
    assert len(rest) == 10582 - official  # train_ids[partial_size:]
    assert len(draw_subset(samples, Stream(dataset="voc", fraction=fraction))) == round(fraction * 10582)
    with pytest.raises(ValueError, match="fraction_rounding = 'up'"):
        draw_subset(samples, Stream(dataset="voc", fraction=fraction, fraction_rounding="up"))


@pytest.mark.parametrize("recipe", ["advsemi_voc_1_8", "advsemi_voc_1_4", "advsemi_voc_1_2"])
def test_advsemi_paper_recipes_cut_the_split_as_the_official_code(recipe):
    data = config.load(recipe).data
    assert data.labeled.fraction_rounding == data.unlabeled.fraction_rounding == "floor"
