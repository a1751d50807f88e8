"""`python -m segadapt.bench methods`: does each method beat its baseline, over seeds, with an interval? (issue 18)

The protocol that replaces bench/demo_methods.sh. A lane is one comparison: a baseline (the lower row), the methods
and a ceiling, each trained with the same recipe settings (the baseline and ceiling differ from the method only in
the `[method]` section and, for the full-label ceiling, the labelled fraction), over K training seeds x D data seeds.
A data seed is synthshift's generation seed: every data seed is its own synthshift copy under
RUNS/data/synthshift-d<D>-<W>x<H>-n<count>/, so a pair (data seed, training seed) is a fresh draw of images and of
training randomness. Data seed 0 generated the data the demo recipes were tuned on; results that include it are
marked "tuning", not held out.

Lanes (each run alone with --lane):

- uda-adaptseg: source-only | AdaptSegNet multi-level | AdaptSegNet single-level | target oracle (`demo`)
- uda-lsd: source-only | LSD-seg | target oracle (`lsd_demo`)
- semi: per network, supervised-only on the labelled share | AdvSemiSeg or U2PL | full-label model
- uda-init: the uda-adaptseg lane from a pretrained start: every arm starts from one source-only `demo` model trained
  on a separate synthshift draw (data seed D + 1000, never the pair's images), once per data seed at seed 0
- semi-init: the same from the pretrained start (`semi_demo_init_*`, trained once per data seed at seed 0)
- mm: random init -> fine-tune | colorization -> fine-tune | colorization -> M&M -> fine-tune | full labels
- semi-curve: the semi regime study, supervised-only (AdvSemiSeg's DeepLab-v2 and U2PL's DeepLab-v3+ recipes) on 1/16,
  1/8, 1/4, 1/2 and all of the 150 labelled photo-domain train images: where do labels stop being the bottleneck? Each
  share is also paired with the next smaller one (the gain of one doubling). Run it on the tuning data seed 0: it
  chooses the semi lanes' labelled share, so it is a setting, not a result.

Every run is `segadapt train RECIPE --set ...` on one thread, into RUNS/<lane>/<arm>/d<D>-s<S>/, forked from a
server that imported the engine once (`--launch subprocess`: its own `python -m segadapt train` process, ~2.4 s
more a run, the same bits); its final and best evaluation are read from that run's metrics.jsonl. A run whose
results.json exists and whose config.json equals what the protocol would run now is not run again (resumable);
an unfinished or stale run directory is removed and the run repeated.

Tuning (issue 18: settings are chosen on training seeds 1-3 of data seed 0, then reported on held-out seeds): `--probe
ARM:KEY=VALUE --tag TAG` changes one arm only, e.g. `--lane semi --seeds 1-3 --data-seeds 0 --probe
u2pl:method.unsup_weight=0.25 --tag w025`; the probed arm runs as ARM@TAG (an arm starting from a probed stage too), in
its own run directories, so the baseline's and ceiling's finished runs are reused, and the result lands in
<lane>-<device>-tuning-<tag>.{json,md,png}, never in the README. `--table ARM` cuts the lane to the table(s) holding
row ARM and the stages those rows start from (`--lane semi-init --table u2pl` trains no DeepLab-v2 run), its files
named -only-ARM, never in the README either. `--starts per-pair` trains a lane's pretrained start once per pair (at the
pair's training seed) instead of once per data seed, as lane LANE-pp: the start's own randomness is then sampled by
the interval (measured: three starts of one recipe on one draw put supervised-only at 32.4, 39.3 and 42.8 mIoU).

A table's ceiling (target oracle, full-label model) is a reference, not a claim: it trains once per data seed, at
training seed 0 (RUNS/<lane>/<ceiling>/d<D>-s0), and every pair of that data seed is paired with that run, for the
ceiling's paired difference and for the share of the gap each method closes. That costs D ceiling runs instead of
K x D. `--ceilings per-pair` trains it once per pair, as the results before this change were made; the result JSON's
"ceilings" says which. The semi-curve lane's all-labels point is a point of its curve, paired with the share below
it, and always trains per pair.

Per lane and table the result JSON, markdown and one PNG (bars with 95% intervals) go to bench/results/methods/
<lane>-<device>.{json,md,png}: mean and std of mIoU (last snapshot; best-on-val, which selects on the data it is
scored on, labelled as such), the paired difference to the baseline over the (data seed, training seed) pairs with a
95% Student-t interval, the win rate over those pairs and the share of the baseline-to-ceiling gap closed, plus the
training seconds per arm. `python -m segadapt.bench report` renders the same files from the JSON. `--dry-run` prints
every command, which runs are done, and prices the rest at the lane's last measured seconds per arm.

The same protocol run another way (say `--set 'train.precision="bf16"' --runs runs/methods-bf16 --out
bench/results/methods/bf16`) is set beside the main results by a README block `<!-- methods-vs:bf16 begin -->`:
each method's paired difference in both runs and each lane's cost in both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

from segadapt.bench.common import RESULTS_DIR
from segadapt.bench.common import write_json

METHODS_RESULTS = RESULTS_DIR / "methods"
STREAMS = ("source", "target", "labeled", "unlabeled", "val")
QUICK = ("schedule.total_steps=2", "schedule.stop_step=2", "train.eval_every=0", "train.checkpoint_every=0")
"""--quick: every run trains 2 steps and is evaluated once, at the end (plumbing, not a measurement)."""
TUNING_DATA_SEED = 0
"""The synthshift seed the demo recipes' settings were chosen on (their data.synthshift.seed)."""
POOL_OFFSET = 1000
"""A pretrained start's own synthshift draw is data seed D + POOL_OFFSET: its images are none of the pair's."""


# ---------------------------------------------------------------------------------------------------------- lanes
@dataclass(frozen=True)
class Arm:
    """One row of a lane's table (or a stage another row starts from)."""

    key: str
    """Directory name under RUNS/<lane>/, unique in its lane."""
    label: str
    role: str
    """"baseline" (the lower row), "method", "ceiling" or "stage" (trained only as another arm's start)."""
    recipe: str
    overrides: tuple[str, ...] = ()
    start_from: str = ""
    """Key of the stage whose final checkpoint becomes this run's model.pretrained; "" = none."""
    once_per_data_seed: bool = False
    """Trained once per data seed at training seed 0, not once per pair: a stage (a shared pretrained start), or a
    ceiling (its row's statistics are over its D runs; every pair of a data seed is paired with that data seed's run,
    see `summarize`)."""
    versus: tuple[str, ...] = ()
    """Other arms of the same table this one is also compared with, paired (e.g. M&M against colorization)."""
    pool: int = 0
    """Added to the data seed for this arm's data: a stage trained on its own synthshift draw (a pretrained start's
    separate pool, as ImageNet is for the papers), 0 = the pair's data. Its run directory keeps the pair's data seed
    (RUNS/<lane>/<stage>/d<D>-s0 trained on draw D + pool; its config.json says so)."""


@dataclass(frozen=True)
class Table:
    title: str
    arms: tuple[Arm, ...]

    def arm(self, role: str) -> Arm | None:
        return next((arm for arm in self.arms if arm.role == role), None)


@dataclass(frozen=True)
class Lane:
    name: str
    description: str
    tables: tuple[Table, ...]
    stages: tuple[Arm, ...] = ()

    def arms(self) -> list[Arm]:
        """Stages first (so a plan lists a start before the runs that read it), then every table's rows."""
        return [*self.stages, *(arm for table in self.tables for arm in table.arms)]


def probe_lane(lane: Lane, probes: list[str], tag: str) -> Lane:
    """The lane with a tuning probe: each "ARM:KEY=VALUE" adds KEY=VALUE to that arm only, and the arm (with every arm
    that starts from it) becomes ARM@TAG, its own run directories, so the other arms' finished runs are reused as they
    are and nothing of theirs is removed. Raises ValueError naming an arm the lane does not have."""
    sets: dict[str, list[str]] = {}
    for probe in probes:
        arm, colon, setting = probe.partition(":")
        if not colon or "=" not in setting:
            raise ValueError(f"--probe {probe!r}: expected ARM:KEY=VALUE, e.g. u2pl:method.unsup_weight=0.25")
        sets.setdefault(arm, []).append(setting)
    keys = [arm.key for arm in lane.arms()]
    unknown = sorted(set(sets) - set(keys))
    if unknown:
        raise ValueError(
            f"--probe {', '.join(unknown)}: not an arm of lane {lane.name}; its arms are {', '.join(keys)}"
        )
    renamed = set(sets)
    for arm in lane.arms():  # stages come first: an arm starting from a probed stage is probed too
        if arm.start_from in renamed:
            renamed.add(arm.key)

    def name(key: str) -> str:
        return f"{key}@{tag}" if key in renamed else key

    def probed(arm: Arm) -> Arm:
        versus = tuple(name(key) for key in arm.versus)  # a comparison with a probed arm follows its new key
        if arm.key not in renamed:
            return replace(arm, versus=versus)
        extra = tuple(sets.get(arm.key, ()))
        label = f"{arm.label} [{', '.join(extra) or 'from ' + name(arm.start_from)}]"
        return replace(arm, key=name(arm.key), label=label, overrides=(*arm.overrides, *extra),
                       start_from=name(arm.start_from), versus=versus)  # fmt: skip

    tables = tuple(replace(table, arms=tuple(probed(arm) for arm in table.arms)) for table in lane.tables)
    return replace(lane, tables=tables, stages=tuple(probed(arm) for arm in lane.stages))


def select_tables(lane: Lane, arms: list[str]) -> Lane:
    """The lane cut to the tables that hold one of `arms` (their baseline, methods and ceiling), with only the stages
    those rows start from (directly or through another stage): tuning one method's arm reruns nothing of another
    table. Raises ValueError naming an arm that is no table's row."""
    keys = [arm.key for table in lane.tables for arm in table.arms]
    unknown = sorted(set(arms) - set(keys))
    if unknown:
        raise ValueError(
            f"--table {', '.join(unknown)}: no table of lane {lane.name} has that row; its rows are {', '.join(keys)}"
        )
    tables = tuple(table for table in lane.tables if any(arm.key in arms for arm in table.arms))
    needed = {arm.start_from for table in tables for arm in table.arms if arm.start_from}
    for stage in reversed(lane.stages):  # a stage listed after the one it starts from: walk back to front
        if stage.key in needed and stage.start_from:
            needed.add(stage.start_from)
    return replace(lane, tables=tables, stages=tuple(stage for stage in lane.stages if stage.key in needed))


PER_PAIR_SUFFIX = "-pp"
"""A lane with per-pair starts is its own lane, LANE-pp: own run directories, own result files, no README block."""


def per_pair_starts(lane: Lane) -> Lane:
    """The lane with every stage trained per (data seed, training seed) pair at the pair's training seed instead of
    once per data seed: a pretrained start here is itself a from-scratch training, its quality a random draw (the
    papers' ImageNet weights are one fixed model), and with one start per data seed all K pairs of a data seed share
    that draw, so their interval leaves it out. Named LANE-pp so no finished shared-start run is touched."""
    if not lane.stages:
        raise ValueError(f"--starts per-pair: lane {lane.name} has no pretrained start to train per pair")
    stages = tuple(replace(stage, once_per_data_seed=False) for stage in lane.stages)
    description = f"{lane.description}; every pair trains its own start at its training seed"
    return replace(lane, name=lane.name + PER_PAIR_SUFFIX, description=description, stages=stages)


def per_pair_ceilings(lane: Lane) -> Lane:
    """The lane with its ceilings trained once per pair, at the pair's training seed (the protocol until the ceilings
    were trained once per data seed, and how the results from before it were made). Same lane name: the two kinds
    of ceiling run have their own directories (d<D>-s<S> against d<D>-s0), and the result JSON records which ran."""

    def per_pair(arm: Arm) -> Arm:
        return replace(arm, once_per_data_seed=False) if arm.role == "ceiling" else arm

    return replace(lane, tables=tuple(replace(table, arms=tuple(map(per_pair, table.arms))) for table in lane.tables))


def ceilings_mode(lane: Lane) -> str:
    """How the lane's ceilings train: "once" (per data seed, every ceiling), "per-pair" (none), or "mixed"."""
    ceilings = [arm for table in lane.tables for arm in table.arms if arm.role == "ceiling"]
    once = {arm.once_per_data_seed for arm in ceilings}
    return "once" if once == {True} else "per-pair" if once <= {False} else "mixed"


def _method(name: str, **fields: str) -> str:
    """`--set method={...}`: replaces the whole [method] table, so the baseline gets its own section's defaults,
    exactly as `train.compare_methods` builds it (segadapt.cli.baseline_section)."""
    body = ", ".join([f'name = "{name}"', *(f'{key} = "{value}"' for key, value in fields.items())])
    return f"method={{{body}}}"


SOURCE_ONLY = _method("sourceonly")
ORACLE = _method("supervised", stream="target")  # all 150 labelled target train images: the UDA ceiling
LABELLED_SHARE = _method("supervised", stream="labeled")  # the semi recipe's labelled share only
FULL_LABELS = (LABELLED_SHARE, "data.labeled.fraction=1.0")  # every train image labelled: the semi ceiling
SINGLE_LEVEL = ("method.lambda_seg=0.0", "method.lambda_adv_target1=0.0")  # official README single-level command


def _uda(recipe: str, method: Arm, start: str = "") -> Table:
    return Table(
        f"{recipe}: game -> photo" + (", pretrained start" if start else ""),
        (
            Arm("sourceonly", "source-only", "baseline", recipe, (SOURCE_ONLY,), start_from=start),
            method,
            Arm(
                "oracle",
                "target oracle (all target labels)",
                "ceiling",
                recipe,
                (ORACLE,),
                start_from=start,
                once_per_data_seed=True,
            ),
        ),
    )


def _adaptseg(start: str = "") -> Table:
    """The demo's four arms: source-only, AdaptSegNet multi- and single-level, target oracle (from `start`, if any)."""
    multi = Arm("adaptsegnet", "AdaptSegNet multi-level", "method", "demo", start_from=start)
    single = Arm("adaptsegnet-single", "AdaptSegNet single-level", "method", "demo", SINGLE_LEVEL, start_from=start)
    table = _uda("demo", multi, start)
    return Table(table.title, (*table.arms[:2], single, table.arms[2]))


def _semi(network: str, recipe: str, method: Arm, start: str = "") -> Table:
    base = "pretrained start" if start else "from scratch"
    return Table(
        f"{recipe}, {base}: {network}",
        (
            Arm(f"supervised-{network}", "supervised-only (labelled share)", "baseline", recipe, (LABELLED_SHARE,),
                start_from=start),
            method,
            Arm(f"full-{network}", "full-label model (ceiling)", "ceiling", recipe, FULL_LABELS, start_from=start,
                once_per_data_seed=True),
        ),
    )  # fmt: skip


CURVE_SHARES = ((1 / 16, "1/16"), (1 / 8, "1/8"), (1 / 4, "1/4"), (1 / 2, "1/2"), (1.0, "all"))
"""Labelled shares of the semi-curve lane (of 150 images, nearest rounding: 9, 19, 38, 75, 150)."""
CURVE_POOL = "data.synthshift.count=200"
"""The pool the curve was measured on (150 train images); the semi recipes moved to 600 (441 unlabelled) after it."""


def _curve(recipe: str, prefix: str = "") -> Table:
    arms, previous = [], ()
    for index, (share, name) in enumerate(CURVE_SHARES):
        role = "baseline" if index == 0 else "ceiling" if share == 1.0 else "method"
        key = prefix + "labels-" + name.replace("/", "of")
        arms.append(Arm(key, f"supervised-only, {name} labelled", role, recipe,
                        (LABELLED_SHARE, CURVE_POOL, f"data.labeled.fraction={share!r}"), versus=previous))  # fmt: skip
        previous = (key,)
    return Table(f"{recipe}: supervised-only learning curve (labelled share of 150 train images)", tuple(arms))


def _lanes() -> dict[str, Lane]:
    init_pool = Arm("init-pool", "separate-pool start: source-only demo on data seed D + 1000", "stage", "demo",
                    (SOURCE_ONLY,), once_per_data_seed=True, pool=POOL_OFFSET)  # fmt: skip
    init_v2 = Arm("init-v2", "source-domain start, DeepLab-v2", "stage", "semi_demo_init_deeplabv2",
                  once_per_data_seed=True)  # fmt: skip
    init_v3 = Arm("init-v3plus", "source-domain start, DeepLab-v3+", "stage", "semi_demo_init_deeplabv3plus",
                  once_per_data_seed=True)  # fmt: skip
    scratch = 'model.pretrained=""'
    finetune = "mm_demo_finetune"
    lanes = [
        Lane("uda-adaptseg", "AdaptSegNet (single- and multi-level) vs source-only, target oracle", (_adaptseg(),)),
        Lane("uda-init", "the uda-adaptseg lane from a pretrained start (source-only on a separate draw, once per "
             "data seed)", (_adaptseg(init_pool.key),), stages=(init_pool,)),
        Lane("uda-lsd", "LSD-seg vs source-only, target oracle",
             (_uda("lsd_demo", Arm("lsdseg", "LSD-seg", "method", "lsd_demo")),)),
        Lane("semi", "AdvSemiSeg and U2PL vs supervised-only on the labelled share, full-label ceiling, from scratch", (
            _semi("v2", "semi_demo_advsemiseg", Arm("advsemiseg", "AdvSemiSeg", "method", "semi_demo_advsemiseg")),
            _semi("v3plus", "semi_demo_u2pl", Arm("u2pl", "U2PL", "method", "semi_demo_u2pl")))),
        Lane("semi-init", "the semi lane from a pretrained start (source-domain model, once per data seed)", (
            _semi("v2", "semi_demo_advsemiseg", Arm("advsemiseg", "AdvSemiSeg", "method", "semi_demo_advsemiseg",
                                                    start_from="init-v2"), start="init-v2"),
            _semi("v3plus", "semi_demo_u2pl", Arm("u2pl", "U2PL", "method", "semi_demo_u2pl",
                                                  start_from="init-v3plus"), start="init-v3plus")),
             stages=(init_v2, init_v3)),
        Lane("mm", "colorization and Mix-and-Match pre-training vs random init, fine-tuned on the labelled share", (
            Table("mm_demo_*: hypercolumn VGG-16-BN", (
                Arm("scratch", "random init -> fine-tune", "baseline", finetune, (scratch,)),
                Arm("colorization", "colorization -> fine-tune", "method", finetune, start_from="colorize"),
                Arm("mixmatch", "colorization -> M&M -> fine-tune", "method", finetune, start_from="mixmatch-stage",
                    versus=("colorization",)),
                Arm("full", "random init, full labels (ceiling)", "ceiling", finetune,
                    (scratch, "data.labeled.fraction=1.0"), once_per_data_seed=True))),),
             stages=(Arm("colorize", "colorization pre-training", "stage", "mm_demo_colorize"),
                     Arm("mixmatch-stage", "M&M stage", "stage", "mm_demo_mixmatch", start_from="colorize"))),
        Lane("semi-curve", "regime study: supervised-only against the labelled share, both semi recipes' networks",
             (_curve("semi_demo_advsemiseg"), _curve("semi_demo_u2pl", "v3plus-"))),
    ]  # fmt: skip
    return {lane.name: lane for lane in lanes}


LANES = _lanes()


# ----------------------------------------------------------------------------------------------------- statistics
def _log_beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz; Numerical Recipes
    `betacf`), converging for x < (a + 1) / (a + b + 2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _log_beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _log_beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution: P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(probability: float, df: float) -> float:
    """The Student-t quantile (scipy.stats.t.ppf) by bisection on `t_cdf`; scipy is not a dependency."""
    if not 0.0 < probability < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < probability < 1 and df > 0, got {probability}, {df}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < probability:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < probability else (low, middle)
    return 0.5 * (low + high)


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean and sample standard deviation (n - 1; None below 2 values)."""
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std}


def paired(values: dict[str, float], baseline: dict[str, float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired difference values - baseline over the pairs both have: mean, std, the Student-t interval of the mean
    (mean +- t_{(1+c)/2, n-1} * std / sqrt(n); None below 2 pairs) and wins (difference > 0) over n."""
    pairs = sorted(set(values) & set(baseline))
    differences = [values[p] - baseline[p] for p in pairs]
    stats = describe(differences)
    interval = None
    if stats["n"] > 1:
        half = t_quantile((1.0 + confidence) / 2.0, stats["n"] - 1) * stats["std"] / math.sqrt(stats["n"])
        interval = [stats["mean"] - half, stats["mean"] + half]
    wins = sum(d > 0 for d in differences)
    return {**stats, "ci95": interval, "wins": wins, "win_rate": wins / len(pairs) if pairs else None}


def gap_closed(values: dict[str, float], baseline: dict[str, float], ceiling: dict[str, float]) -> float | None:
    """Share of the baseline-to-ceiling gap closed, over the pairs all three have: mean(m - b) / mean(c - b); None
    when the ceiling does not beat the baseline on average (no gap to close: the ratio would mean nothing)."""
    pairs = sorted(set(values) & set(baseline) & set(ceiling))
    gap = sum(ceiling[p] - baseline[p] for p in pairs)
    if not pairs or gap <= 0:
        return None
    return sum(values[p] - baseline[p] for p in pairs) / gap


# --------------------------------------------------------------------------------------------------------- a plan
@dataclass
class Job:
    """One training run of the plan."""

    lane: str
    arm: Arm
    data_seed: int
    seed: int
    run_dir: Path
    overrides: list[str]
    expected: dict[str, Any]
    """The config the run must hold (its config.json) to count as done."""
    needs: str = ""
    """The run directory of the stage this run starts from ("" = none)."""

    @property
    def pair(self) -> str:
        return f"d{self.data_seed}-s{self.seed}"

    def argv(self) -> list[str]:
        """`segadapt`'s arguments for this run: train RECIPE --set ..."""
        return ["train", self.arm.recipe, *(part for override in self.overrides for part in ("--set", override))]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "segadapt", *self.argv()]


def _quote(path: Path | str) -> str:
    return json.dumps(str(path))  # a TOML basic string


def data_dir(runs: Path, synthshift, data_seed: int) -> Path:
    """The synthshift copy of one data seed; size and count are in the name, so recipes that differ get their own."""
    width, height = synthshift.size
    return runs / "data" / f"synthshift-d{data_seed}-{width}x{height}-n{synthshift.count}"


def _data_overrides(cfg, arm: Arm, directory: Path) -> list[str]:
    """Point synthshift and every stream the recipe reads at the data seed's copy."""
    out = Path(cfg.data.synthshift.out)
    sets = [f"data.synthshift.out={_quote(directory)}", "data.synthshift.generate=true"]
    for name in STREAMS:
        stream = getattr(cfg.data, name)
        if not stream.dataset:
            continue
        root = Path(stream.root)
        if out not in (root, *root.parents):
            raise ValueError(
                f"recipe {arm.recipe} (arm {arm.key}): data.{name}.root = {stream.root!r} is not under "
                f"data.synthshift.out = {str(out)!r}; the protocol varies synthshift's seed: every stream must be in it"
            )
        sets.append(f"data.{name}.root={_quote(directory / root.relative_to(out))}")
    return sets


def make_job(lane: Lane, arm: Arm, data_seed: int, seed: int, runs: Path, quick: bool, extra: list[str],
             start: Job | None) -> Job:  # fmt: skip
    """The run of `arm` on one pair: the arm's overrides, --quick, the user's --set, then the protocol's own."""
    from segadapt import config

    base = [*arm.overrides, *(QUICK if quick else ()), *extra]
    cfg = config.load(arm.recipe, base)  # a misspelt key fails here, before anything trains
    run_dir = runs / lane.name / arm.key / f"d{data_seed}-s{seed}"
    pool = data_seed + arm.pool  # the arm's own draw: the pair's data seed but for a separate-pool stage
    # no [start]: the protocol trains a lane's starts itself (its stages), once per data seed, never inside a run
    own = [f"train.seed={seed}", f"train.run_dir={_quote(run_dir)}", "train.progress=false",
           "train.tensorboard=false", "train.compare_methods=[]", 'start.recipe=""', "start.set=[]",
           f"data.synthshift.seed={pool}",
           *_data_overrides(cfg, arm, data_dir(runs, cfg.data.synthshift, pool))]  # fmt: skip
    if start is not None:
        own.append(f"model.pretrained={_quote(final_checkpoint(start))}")
    overrides = [*base, *own]
    expected = json.loads(json.dumps(config.to_dict(config.load(arm.recipe, overrides))))
    return Job(lane.name, arm, data_seed, seed, run_dir, overrides, expected, str(start.run_dir) if start else "")


def final_checkpoint(job: Job) -> Path:
    """The checkpoint a run writes at its last step (train.save_checkpoint: checkpoints/step_<stop>.pt)."""
    return job.run_dir / "checkpoints" / f"step_{job.expected['schedule']['stop_step']:07d}.pt"


def plan(lane: Lane, seeds: list[int], data_seeds: list[int], runs: Path, quick: bool = False,
         extra: list[str] = ()) -> list[Job]:  # fmt: skip
    """Every run of a lane, each stage before the runs that start from it; shared stages listed once."""
    pooled = [arm.key for arm in lane.arms() if arm.pool]
    if pooled and any(not 0 <= seed < POOL_OFFSET for seed in data_seeds):
        raise ValueError(
            f"--data-seeds {','.join(map(str, data_seeds))}: lane {lane.name} trains {', '.join(pooled)} on draw "
            f"D + {POOL_OFFSET}, so its data seeds must be 0..{POOL_OFFSET - 1} (a start never sees a pair's images)"
        )
    jobs: dict[tuple[str, int, int], Job] = {}
    stages = {stage.key: stage for stage in lane.stages}

    def job(arm: Arm, data_seed: int, seed: int) -> Job:
        """The run of `arm` on (data_seed, seed), its start first (a once-per-data-seed ceiling from per-pair starts
        gets the start at seed 0, which the pairs do not train)."""
        own_seed = 0 if arm.once_per_data_seed else seed
        if (arm.key, data_seed, own_seed) not in jobs:
            start = job(stages[arm.start_from], data_seed, own_seed) if arm.start_from else None
            jobs[(arm.key, data_seed, own_seed)] = make_job(
                lane, arm, data_seed, own_seed, runs, quick, list(extra), start
            )
        return jobs[(arm.key, data_seed, own_seed)]

    for data_seed in data_seeds:
        for seed in seeds:
            for arm in lane.arms():
                job(arm, data_seed, seed)
    return list(jobs.values())


# ------------------------------------------------------------------------------------------------------ execution
def run_state(job: Job) -> str:
    """ "done" (results.json, the run's last write, is there and config.json equals what the protocol would run now,
    but for keys one side lacks at their default and streams neither side reads), "to run", "unfinished" or "stale
    (settings changed: KEYS)"; anything but done is removed and run again."""
    if not job.run_dir.exists():
        return "to run"
    try:
        held = json.loads((job.run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unfinished"
    if held != job.expected:
        from segadapt import config

        old, new = config.flatten(held), config.flatten(job.expected)
        changed = sorted(k for k in {*old, *new} if old.get(k, "<absent>") != new.get(k, "<absent>"))
        # A key at its default on one side and absent on the other is the same run: a key the config gained after
        # the run (absent from config.json), or one the run's code had and this plan's does not know yet.
        defaults = _config_defaults()
        either = {**old, **new}
        changed = [k for k in changed if not ((k in old) != (k in new) and k in defaults and either[k] == defaults[k])]
        # A stream neither side reads (dataset "", as _data_overrides tells) cannot change what the run did.
        unread = [f"data.{name}." for name in STREAMS if not old.get(f"data.{name}.dataset") and
                  not new.get(f"data.{name}.dataset")]  # fmt: skip
        changed = [k for k in changed if not k.startswith(tuple(unread))]
        if changed:
            return f"stale (settings changed: {', '.join(changed)})"
    return "done" if (job.run_dir / "results.json").is_file() else "unfinished"


def _config_defaults() -> dict[str, Any]:
    """Every config key outside [method] at its default value, flattened as config.json's keys."""
    from segadapt import config

    defaults = config.flatten(json.loads(json.dumps(config.to_dict(config.Config()))))
    return {key: value for key, value in defaults.items() if not key.startswith("method.")}


def is_done(job: Job) -> bool:
    return run_state(job) == "done"


def _log_tail(job: Job, lines: int = 6) -> str:
    try:
        return "\n".join((job.run_dir / "train.log").read_text().splitlines()[-lines:])
    except OSError:
        return "(no train.log)"


RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Every run trains on one thread (the protocol's cost unit; `--jobs N` runs N side by side)."""
PRELOAD = ("segadapt.cli", "segadapt.train", "torch._dynamo")
"""What each run would otherwise import itself, about 3 s a run on the 2-core CPU: the engine with torch and triton,
and torch._dynamo, which the optimizers' constructors import (torch.optim's `_disable_dynamo` wrapper)."""


def _start(job: Job, launch: str = "fork") -> subprocess.Popen | _ForkedRun:
    """Start the run of `job` into its fresh run directory, its output in train.log.

    launch "fork" (the default): a child of a fork server that imported the engine once, with OMP_NUM_THREADS=1 set
    before its torch import, runs `segadapt.cli.main` on the job's arguments: the code and thread count of a
    `python -m segadapt train` process, without its ~3 s of imports (bitwise the same results: the test
    `test_a_forked_run_trains_on_one_thread_what_its_own_process_trains`). "subprocess": that command itself.
    """
    if job.run_dir.exists():
        shutil.rmtree(job.run_dir)  # unfinished or run with other settings: never mixed into the statistics
    job.run_dir.mkdir(parents=True)
    log_path = job.run_dir / "train.log"
    if launch == "fork":
        log_path.touch()
        process = _fork_server().Process(target=_train_in_child, args=(job.argv(), str(log_path)))
        process.start()
        return _ForkedRun(process)
    if launch != "subprocess":
        raise ValueError(f"launch = {launch!r}: expected 'fork' or 'subprocess'")
    with open(log_path, "w") as log:
        return subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RUN_ENV})


def _fork_server():
    """The forkserver context whose server has imported PRELOAD under RUN_ENV (started on first use, once per
    process; it exits with this process). RUN_ENV must be in the server's environment when it starts: OpenMP reads
    OMP_NUM_THREADS when torch loads it, and the server loads torch for every run it forks."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    saved = {key: os.environ.get(key) for key in RUN_ENV}
    os.environ.update(RUN_ENV)
    try:
        forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return context


def _train_in_child(argv: list[str], log_path: str) -> None:
    """A forked run: stdout and stderr to its train.log, then `segadapt train ...` as its own process would run it.
    The exit status is `main`'s (multiprocessing turns SystemExit into the exit code, an exception into 1)."""
    import torch

    from segadapt.cli import main

    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.update(RUN_ENV)  # for what the run itself starts, as a subprocess run's environment has it
    if torch.get_num_threads() != 1:  # a fork server this process had started before, without RUN_ENV
        torch.set_num_threads(1)
    sys.argv = ["segadapt", *argv]
    sys.exit(main(argv))


class _ForkedRun:
    """A forked run with the part of `subprocess.Popen` that `execute` uses: poll, returncode, terminate, wait."""

    def __init__(self, process) -> None:
        self.process = process

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # None while running, -N when a signal N ended it (Popen's convention)

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self) -> int:
        self.process.join()
        return self.process.exitcode


def _finish(job: Job, returncode: int, elapsed: float, launch: str = "fork") -> None:
    try:  # the run's own count (results.json, engine.train); None for a run that did not finish
        threads = json.loads((job.run_dir / "results.json").read_text()).get("threads")
    except (OSError, json.JSONDecodeError):
        threads = None
    write_json(job.run_dir / "protocol.json", {
        "command": shlex.join(job.command()), "launch": launch, "returncode": returncode, "elapsed_s": elapsed,
        "threads": threads, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})  # fmt: skip


def execute(jobs: list[Job], parallel: int = 1, log=print, launch: str = "fork") -> dict[str, str]:
    """Run what is not done, `parallel` at a time, a run only after its stage (each started as `_start`'s
    `launch` says); returns run dir -> status ("done" before, "ran", "failed" or "blocked" by a failed stage)."""
    status = {str(job.run_dir): "done" for job in jobs if is_done(job)}
    waiting = [job for job in jobs if str(job.run_dir) not in status]
    for job in waiting:
        if job.run_dir.exists():
            log(f"[methods] {job.lane}/{job.arm.key}/{job.pair}: {run_state(job)}; removed, runs again")
    running: dict[str, tuple[Job, subprocess.Popen | _ForkedRun, float]] = {}
    with _terminate_raises():
        try:
            while waiting or running:
                _launch(waiting, running, status, parallel, log, launch)
                _reap(running, status, log, launch)
                if running:
                    time.sleep(0.2)
        finally:
            for _, process, _ in running.values():  # interrupted (Ctrl-C, kill, an error): no orphaned run left
                process.terminate()
                process.wait()
    return status


@contextlib.contextmanager
def _terminate_raises():
    """SIGTERM (kill, a batch system's stop) raises SystemExit(143) while runs go, so `execute`'s cleanup stops them
    too; without it the runs outlive the protocol. Ctrl-C already raises; a background shell's `&` ignores SIGINT,
    so `kill PID` is how a user stops a protocol started with nohup. Main thread only (signal's own rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second kill must not cut the cleanup short
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launch(waiting: list[Job], running: dict, status: dict[str, str], parallel: int, log, launch: str) -> None:
    """Start waiting runs whose stage is done while fewer than `parallel` run; block those whose stage failed."""
    for job in list(waiting):
        if job.needs and status.get(job.needs) in ("failed", "blocked"):
            status[str(job.run_dir)] = "blocked"
            waiting.remove(job)
        elif len(running) < parallel and (not job.needs or status.get(job.needs) in ("done", "ran")):
            log(f"[methods] start {job.lane}/{job.arm.key}/{job.pair}")
            running[str(job.run_dir)] = (job, _start(job, launch), time.perf_counter())
            waiting.remove(job)


def _reap(running: dict, status: dict[str, str], log, launch: str = "fork") -> None:
    """Record the runs that ended: protocol.json with the seconds they took, and ran / failed."""
    for key, (job, process, started) in list(running.items()):
        if process.poll() is None:
            continue
        elapsed = time.perf_counter() - started
        _finish(job, process.returncode, elapsed, launch)
        ok = process.returncode == 0 and is_done(job)
        status[key] = "ran" if ok else "failed"
        log(
            f"[methods] {'done' if ok else 'FAILED'} {job.lane}/{job.arm.key}/{job.pair} in {elapsed:.0f} s"
            + ("" if ok else f" (exit {process.returncode}; {job.run_dir / 'train.log'} ends:\n{_log_tail(job)})")
        )
        del running[key]


def ensure_data(jobs: list[Job]) -> float:
    """Generate each data seed's synthshift copy once, before runs start side by side; returns the seconds spent."""
    from segadapt import config
    from segadapt.data import ensure_synthshift

    started = time.perf_counter()
    for key in sorted({json.dumps(job.expected["data"]["synthshift"], sort_keys=True) for job in jobs}):
        section = json.loads(key)
        ensure_synthshift(config.Synthshift(out=section["out"], count=section["count"],
                                            size=tuple(section["size"]), seed=section["seed"]))  # fmt: skip
    return time.perf_counter() - started


# -------------------------------------------------------------------------------------------------------- results
def read_run(job: Job) -> dict[str, Any] | None:
    """The final and best evaluation of a finished run, from its metrics.jsonl; None when not done or no eval."""
    from segadapt.report import best_and_last
    from segadapt.report import read_metrics

    if not is_done(job):
        return None
    _, evals, _ = read_metrics(job.run_dir / "metrics.jsonl")
    best, last = best_and_last(evals)
    steps = json.loads((job.run_dir / "results.json").read_text())["steps"]
    if last is None or last["step"] != steps:
        return None  # a stage (no val stream), or a run whose final evaluation is missing
    try:
        elapsed = json.loads((job.run_dir / "protocol.json").read_text())["elapsed_s"]
    except (OSError, json.JSONDecodeError, KeyError):
        elapsed = None
    return {"last": last["miou"], "best": best["miou"], "best_step": best["step"], "steps": steps,
            "elapsed_s": elapsed, "per_class": last.get("per_class")}  # fmt: skip


def broadcast(runs: dict[str, dict], pairs: list[str]) -> dict[str, dict]:
    """A once-per-data-seed arm's runs (keyed d<D>-s0) as every pair of `pairs` sees them: pair d<D>-s<S> gets the
    run of data seed D (pairs whose data seed has no such run are left out)."""
    return {pair: runs[f"{pair.split('-')[0]}-s0"] for pair in pairs if f"{pair.split('-')[0]}-s0" in runs}


def _row(arm: Arm, runs: dict[str, dict], table: dict[str, dict[str, dict]], lower: Arm | None,
         upper: Arm | None) -> dict[str, Any]:  # fmt: skip
    """`runs`: the arm's own runs (its mean +- std); `table`: every arm's runs as the pairs see them (a once-per-data-
    seed arm broadcast over its data seed's pairs), which every paired statistic reads, this arm's own included."""
    mine = table.get(arm.key, runs)
    last = {pair: run["last"] for pair, run in mine.items()}
    best = {pair: run["best"] for pair, run in mine.items()}

    def column(other: Arm | None, kind: str) -> dict[str, float]:
        return {p: r[kind] for p, r in table.get(other.key, {}).items()} if other else {}

    row = {"key": arm.key, "label": arm.label, "role": arm.role, "recipe": arm.recipe, "overrides": list(arm.overrides),
           "start_from": arm.start_from, "runs": runs, "last": describe([run["last"] for run in runs.values()]),
           "best": describe([run["best"] for run in runs.values()])}  # fmt: skip
    if arm.once_per_data_seed:
        row["once_per_data_seed"] = True
    if lower is not None and arm.key != lower.key:
        row["vs_baseline"] = paired(last, column(lower, "last"))
        row["vs_baseline_best"] = paired(best, column(lower, "best"))
        closes = upper is not None and arm.key != upper.key  # the ceiling closes 100% by definition
        row["gap_closed"] = gap_closed(last, column(lower, "last"), column(upper, "last")) if closes else None
    row["versus"] = {key: paired(last, {p: r["last"] for p, r in table.get(key, {}).items()}) for key in arm.versus}
    return row


def summarize(lane: Lane, jobs: list[Job]) -> list[dict[str, Any]]:
    """Per table: one row per arm with its runs and statistics (paired with the baseline on the same pairs)."""
    runs: dict[str, dict[str, dict]] = {}
    for job in jobs:
        record = read_run(job) if job.arm.role != "stage" else None
        if record is not None:
            runs.setdefault(job.arm.key, {})[job.pair] = record
    tables = []
    for table in lane.tables:
        lower, upper = table.arm("baseline"), table.arm("ceiling")
        pairs = sorted({pair for arm in table.arms if not arm.once_per_data_seed for pair in runs.get(arm.key, {})})
        seen = {arm.key: broadcast(runs.get(arm.key, {}), pairs) if arm.once_per_data_seed else runs.get(arm.key, {})
                for arm in table.arms}  # fmt: skip
        rows = [_row(arm, runs.get(arm.key, {}), seen, lower, upper) for arm in table.arms]
        tables.append({"title": table.title, "baseline": lower.key if lower else None,
                       "ceiling": upper.key if upper else None, "rows": rows})  # fmt: skip
    return tables


def timing(lane: Lane, jobs: list[Job]) -> dict[str, Any]:
    """Training seconds per arm (one thread a run), read from each run's protocol.json, and the arm's stop_step (what
    a forecast scales by when an arm's schedule has changed since)."""
    per_arm: dict[str, list[float]] = {}
    steps = {job.arm.key: job.expected["schedule"]["stop_step"] for job in jobs}
    for job in jobs:
        try:
            per_arm.setdefault(job.arm.key, []).append(
                json.loads((job.run_dir / "protocol.json").read_text())["elapsed_s"]
            )
        except (OSError, json.JSONDecodeError, KeyError):
            per_arm.setdefault(job.arm.key, [])
    arms = {key: {"runs": len(v), "mean_s": sum(v) / len(v) if v else None, "total_s": sum(v), "steps": steps[key]}
            for key, v in per_arm.items()}  # fmt: skip
    return {"per_arm": arms, "train_s_total": sum(a["total_s"] for a in arms.values()), "runs_planned": len(jobs)}


# ------------------------------------------------------------------------------------------------------- rendering
def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_std(stats: dict[str, Any]) -> str:
    if not stats.get("n"):
        return "-"
    return _number(stats["mean"]) + ("" if stats["std"] is None else f" +- {_number(stats['std'])}")


def _difference(stats: dict[str, Any] | None) -> str:
    if not stats or not stats.get("n"):
        return "-"
    interval = stats.get("ci95")
    text = f"{stats['mean']:+.2f}"
    return text + (f" [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "")


def _table_markdown(table: dict[str, Any]) -> list[str]:
    lines = [f"**{table['title']}**", "",
             "| method | role | pairs | mIoU last, mean +- std | best-on-val, mean +- std | last - baseline [95% CI] "
             "| wins | gap closed |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in table["rows"]:
        versus = row.get("vs_baseline")
        wins = f"{versus['wins']}/{versus['n']}" if versus and versus["n"] else "-"
        gap = row.get("gap_closed")
        role = row["role"] + (" (once per data seed)" if row.get("once_per_data_seed") else "")
        lines.append(f"| {row['label']} | {role} | {row['last']['n']} | {_mean_std(row['last'])} | "
                     f"{_mean_std(row['best'])} | {_difference(versus)} | {wins} | "
                     f"{'-' if gap is None else f'{100 * gap:.0f}%'} |")  # fmt: skip
    for row in table["rows"]:
        for key, stats in row.get("versus", {}).items():
            lines += ["", f"{row['label']} - {key}: {_difference(stats)} mIoU, wins {stats['wins']}/{stats['n']}."]
    pairs = sorted({p for row in table["rows"] for p in row["runs"]}, key=_pair_order)
    if pairs:
        lines += ["", "| last mIoU per pair | " + " | ".join(pairs) + " |", "|---|" + "---:|" * len(pairs)]
        for row in table["rows"]:
            cells = [_number(row["runs"][p]["last"]) if p in row["runs"] else "-" for p in pairs]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def per_class_summary(table: dict[str, Any]) -> dict[str, Any] | None:
    """Per class, each row's mean last IoU over its pairs and, for every row but the baseline, the mean paired
    difference to the baseline and its wins; None when the runs carry no per-class IoU (results from before it)."""
    rows = [row for row in table["rows"] if row["runs"] and all(r.get("per_class") for r in row["runs"].values())]
    if not rows:
        return None
    classes = list(next(iter(rows[0]["runs"].values()))["per_class"])
    base = next((row for row in rows if row["key"] == table["baseline"]), None)
    summary: dict[str, Any] = {"classes": classes, "rows": []}
    for row in rows:
        runs = row["runs"]
        entry = {"label": row["label"],
                 "mean": {c: sum(r["per_class"][c] for r in runs.values()) / len(runs) for c in classes}}  # fmt: skip
        if base is not None and row is not base:
            mine = broadcast(runs, list(base["runs"])) if row.get("once_per_data_seed") else runs
            entry["vs_baseline"] = {
                c: paired(
                    {p: r["per_class"][c] for p, r in mine.items()},
                    {p: r["per_class"][c] for p, r in base["runs"].items()},
                )  # fmt: skip
                for c in classes
            }
        summary["rows"].append(entry)
    return summary


def _per_class_markdown(table: dict[str, Any]) -> list[str]:
    """Where a method gains and loses: mean last IoU per class, then method - baseline per class (paired, its wins)."""
    summary = per_class_summary(table)
    if summary is None:
        return []
    classes = summary["classes"]
    lines = ["| per-class IoU, last, mean over pairs | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for entry in summary["rows"]:
        lines.append(f"| {entry['label']} | " + " | ".join(f"{entry['mean'][c]:.1f}" for c in classes) + " |")
    for entry in summary["rows"]:
        if "vs_baseline" in entry:
            stats = entry["vs_baseline"].values()
            cells = [f"{s['mean']:+.1f} ({s['wins']}/{s['n']})" if s["n"] else "-" for s in stats]
            lines.append(f"| {entry['label']} - baseline (wins) | " + " | ".join(cells) + " |")
    return lines


def _pair_order(pair: str) -> tuple[int, int]:
    data_seed, seed = re.match(r"d(\d+)-s(\d+)", pair).groups()
    return int(data_seed), int(seed)


def _cpu(payload: dict[str, Any]) -> str:
    """The page's " (CPU MODEL, CAPABILITY[+AMX])" where the payload records the CPU (results since it does)."""
    if not payload.get("cpu_model"):
        return ""
    return f" ({payload['cpu_model']}, {payload.get('cpu_capability')}{'+AMX' if payload.get('cpu_amx') else ''})"


def markdown(payload: dict[str, Any]) -> str:
    """The lane's page: what ran, one table per comparison, per-pair values, timing."""
    kind = "QUICK (2 steps a run: plumbing only, not a measurement)" if payload["quick"] else "full recipes"
    held = "held-out data seeds" if payload["held_out"] else "INCLUDES the tuning data seed 0: not held out"
    lines = [f"## methods: {payload['lane']}: {payload['description']}", "",
             f"{kind}; training seeds {payload['seeds']} x data seeds {payload['data_seeds']} ({held}); device "
             f"`{payload.get('device_name')}`{_cpu(payload)}, torch `{payload.get('torch')}`, git "
             f"`{payload.get('git_sha')}`, "
             f"{payload.get('timestamp')}.", "", f"`{payload['command']}`", "",
             "Differences are paired over (data seed, training seed); the interval is the 95% Student-t interval of "
             "the mean difference; wins count pairs with a positive difference; gap closed = mean(method - baseline) "
             "/ mean(ceiling - baseline), '-' where the ceiling does not beat the baseline. Best-on-val selects the "
             "snapshot on the data it is scored on; the last snapshot is the unselected number."
             + (" A row marked 'once per data seed' is trained once per data seed (training seed 0): its pairs column "
                "and mean +- std count those runs, and every pair of a data seed is paired with its data seed's run."
                if any(row.get("once_per_data_seed") for table in payload["tables"] for row in table["rows"])
                else ""), ""]  # fmt: skip
    for table in payload["tables"]:
        lines += [*_table_markdown(table), ""]
        per_class = _per_class_markdown(table)
        lines += [*per_class, ""] if per_class else []
    clock = payload["timing"]
    lines += [f"Training time (one thread a run): {clock['train_s_total']:.0f} s over the lane's "
              f"{clock['runs_planned']} runs; wall {_number(clock.get('wall_s'), 0)} s for this invocation "
              f"(--jobs {payload.get('jobs')}, data generation {_number(clock.get('data_s'), 0)} s).", "",
              "| arm | runs timed | mean s / run | total s |", "|---|---:|---:|---:|"]  # fmt: skip
    for key, arm in clock["per_arm"].items():
        lines.append(f"| {key} | {arm['runs']} | {_number(arm['mean_s'], 0)} | {arm['total_s']:.0f} |")
    if payload.get("plot"):
        lines += ["", f"![{payload['lane']}]({payload['plot']})"]
    return "\n".join(lines) + "\n"


def _interval(stats: dict[str, Any]) -> float:
    """Half-width of the 95% t-interval of a mean (0 below 2 values)."""
    if stats.get("n", 0) < 2:
        return 0.0
    return t_quantile(0.975, stats["n"] - 1) * stats["std"] / math.sqrt(stats["n"])


def plot(payload: dict[str, Any], path: Path) -> Path:
    """Per table, top: mean last mIoU per arm with the 95% t-interval of the mean, each pair a dot; bottom: the
    paired difference to the baseline with its 95% t-interval, each pair a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = payload["tables"]
    figure, axes = plt.subplots(2, len(tables), figsize=(4.8 * len(tables), 7.5), squeeze=False)
    colours = {"baseline": "tab:grey", "method": "tab:blue", "ceiling": "tab:green"}
    for column, table in enumerate(tables):
        top, bottom = axes[0][column], axes[1][column]
        labels = [row["label"] for row in table["rows"]]
        for index, row in enumerate(table["rows"]):
            colour = colours.get(row["role"], "tab:blue")
            if row["last"]["n"]:
                top.bar(index, row["last"]["mean"], yerr=_interval(row["last"]), capsize=4, color=colour, alpha=0.8)
                values = [run["last"] for run in row["runs"].values()]
                top.plot([index] * len(values), values, "k.", markersize=3)
            versus = row.get("vs_baseline")
            if versus and versus["n"]:
                bottom.bar(index, versus["mean"], yerr=_interval(versus), capsize=4, color=colour, alpha=0.8)
                baseline = next(r for r in table["rows"] if r["key"] == table["baseline"])["runs"]
                mine = broadcast(row["runs"], list(baseline)) if row.get("once_per_data_seed") else row["runs"]
                points = [run["last"] - baseline[p]["last"] for p, run in mine.items() if p in baseline]
                bottom.plot([index] * len(points), points, "k.", markersize=3)
        for axis in (top, bottom):
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        top.set_title(table["title"], fontsize=9)
        top.set_ylabel("mIoU, last snapshot")
        bottom.set_ylabel("paired difference to the baseline")
    quick = " (QUICK: plumbing only)" if payload["quick"] else ""
    figure.suptitle(f"{payload['lane']}{quick}: {len(payload['seeds'])} training x {len(payload['data_seeds'])} "
                    "data seeds\nbars: mean and 95% t-interval, dots: pairs", fontsize=10)  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def render(json_path: Path) -> tuple[Path, Path]:
    """Write the markdown and the plot of one lane's result JSON next to it; returns their paths."""
    from segadapt.checkpoint import atomic_write_text

    payload = json.loads(Path(json_path).read_text())
    picture = plot(payload, Path(json_path).with_suffix(".png"))
    payload["plot"] = picture.name
    page = Path(json_path).with_suffix(".md")
    atomic_write_text(page, markdown(payload))
    return page, picture


def report_sections(directory: Path = METHODS_RESULTS) -> list[str]:
    """For `python -m segadapt.bench report`: re-render every protocol JSON in `directory`, return their pages."""
    sections = []
    for path in sorted(Path(directory).glob("*.json")):
        if json.loads(path.read_text()).get("bench") != "methods":
            continue  # the tables of the retired bench/demo_methods_table.py
        page, _ = render(path)
        text = page.read_text().replace(f"]({path.with_suffix('.png').name})",
                                        f"](methods/{path.with_suffix('.png').name})")  # fmt: skip
        sections.append(text)
    return sections


README_BLOCK = re.compile(
    r"(<!-- methods:(?P<lane>[\w-]+) begin -->\n)(?P<body>.*?)(<!-- methods:(?P=lane) end -->)", re.S
)
"""A README block the protocol's JSON fills: `<!-- methods:LANE begin -->` ... `<!-- methods:LANE end -->`."""


def readme_block(payload: dict[str, Any]) -> str:
    """The README's text for one lane: provenance, then each table as the lane's page has it (no timing, no plot)."""
    held = "held-out data seeds" if payload["held_out"] else "INCLUDES the tuning data seed 0"
    kind = "QUICK plumbing run, not a measurement: " if payload["quick"] else ""
    lines = [f"{kind}training seeds {payload['seeds']} x data seeds {payload['data_seeds']} ({held}), "
             f"{payload.get('timestamp')}, git `{payload.get('git_sha')}`, `{payload['command']}`; written by "
             "`python -m segadapt.bench report` from "
             f"`bench/results/methods/{payload['lane']}-*.json`, do not edit by hand.", ""]  # fmt: skip
    for table in payload["tables"]:
        lines += [*_table_markdown(table), ""]
    return "\n".join(lines)


def lane_results(directory: Path) -> dict[str, dict[str, Any]]:
    """lane -> its whole-lane result JSON in `directory` (no probe, no --table cut, not --quick), the held-out one
    where a lane has both a held-out and a tuning result (one device per lane in a folder)."""
    payloads: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        payload = json.loads(path.read_text())
        partial = payload.get("probe") or payload.get("only")  # a probe or a cut lane is not the lane's result
        if payload.get("bench") == "methods" and not payload.get("quick") and not partial:
            if payload["lane"] not in payloads or payload["held_out"] or not payloads[payload["lane"]]["held_out"]:
                payloads[payload["lane"]] = payload
    return payloads


COMPARE_BLOCK = re.compile(
    r"(<!-- methods-vs:(?P<folder>[\w-]+) begin -->\n)(?P<body>.*?)(<!-- methods-vs:(?P=folder) end -->)", re.S
)
"""A README block comparing the held-out lanes of bench/results/methods/FOLDER/ (the same protocol run another way,
e.g. `--set train.precision="bf16"`) with those of bench/results/methods/: `<!-- methods-vs:FOLDER begin -->` ..."""


def _per_pair_s(payload: dict[str, Any]) -> float | None:
    pairs = len(payload["seeds"]) * len(payload["data_seeds"])
    total = payload.get("timing", {}).get("train_s_total")
    return total / pairs if total and pairs else None


def _cpu_short(payload: dict[str, Any]) -> str:
    if not payload.get("cpu_capability"):
        return "CPU not recorded"  # results from before env_stamp recorded the CPU
    return f"{payload['cpu_capability']}{'+AMX' if payload.get('cpu_amx') else ''}"


_LANE_ARGUMENT = re.compile(r"--lane[ =]\S+")


def lane_commands(payloads: dict[str, dict[str, Any]], lanes: list[str]) -> str:
    """The commands that made `lanes`' results: one line with `--lane LANE` where they differ only in the lane (or
    lane list) they name, else each lane's own command."""
    forms = {_LANE_ARGUMENT.sub("--lane LANE", payloads[lane]["command"]) for lane in lanes}
    if len(forms) == 1:
        return f"`{forms.pop()}`, LANE each lane below"
    return "; ".join(f"{lane}: `{payloads[lane]['command']}`" for lane in lanes)


def comparison_block(reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], folder: str) -> str:
    """The README's text comparing two runs of the protocol lane by lane (held-out results only): each method's paired
    difference in both, then each lane's cost in both (training core-seconds a pair; the other run's wall time, data
    generation included, and the whole lane's training seconds over its --jobs, which is what a lane resumed from
    earlier runs would have taken in one call; the git commit of each lane's result)."""
    lanes = [lane for lane in LANES if lane in reference and lane in other
             and reference[lane]["held_out"] and other[lane]["held_out"]]  # fmt: skip
    if not lanes:
        return f"no held-out lane in both bench/results/methods/ and bench/results/methods/{folder}/ yet\n"
    lines = [f"`bench/results/methods/{folder}/` ({lane_commands(other, lanes)}) against `bench/results/methods/` "
             "(this section's lane tables), held-out pairs only; written by `python -m segadapt.bench report`, do not "
             "edit by hand.", "",
             f"| lane | method - baseline | `methods/`: mean [95% CI], wins | `methods/{folder}/`: mean [95% CI], "
             "wins |", "|---|---|---:|---:|"]  # fmt: skip
    for lane in lanes:
        other_tables = {table.get("title"): table for table in other[lane]["tables"]}
        for ref_table in reference[lane]["tables"]:
            other_rows = {row["key"]: row for row in other_tables.get(ref_table.get("title"), {"rows": []})["rows"]}
            for row in ref_table["rows"]:
                if row["role"] not in ("method", "ceiling") or row["key"] not in other_rows:
                    continue
                pairs = [(ref_table["baseline"], row.get("vs_baseline"), other_rows[row["key"]].get("vs_baseline"))]
                pairs += [(key, stats, other_rows[row["key"]].get("versus", {}).get(key))
                          for key, stats in row.get("versus", {}).items()]  # fmt: skip
                for versus, ref_stats, other_stats in pairs:
                    cells = [f"{_difference(s)}, {s['wins']}/{s['n']}" if s and s.get("n") else "-"
                             for s in (ref_stats, other_stats)]  # fmt: skip
                    lines.append(f"| {lane} | {row['key']} - {versus} | {cells[0]} | {cells[1]} |")
    lines += ["", f"| lane | pairs | `methods/` core-s a pair (CPU) | `methods/{folder}/` core-s a pair (CPU) | "
              f"`methods/{folder}/` wall, --jobs | whole lane: training s / --jobs | git |",
              "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    wall = whole = 0.0
    for lane in lanes:
        ref, run = reference[lane], other[lane]
        lane_whole = (run["timing"].get("train_s_total") or 0.0) / run["jobs"]
        wall += run["timing"].get("wall_s") or 0.0
        whole += lane_whole
        done = run.get("status", {}).get("done", 0)  # runs finished before the call: its wall leaves them out
        resumed = f" (resumed: {done} runs done before)" if done else ""
        lines.append(f"| {lane} | {len(run['seeds']) * len(run['data_seeds'])} | {_number(_per_pair_s(ref), 0)} "
                     f"({_cpu_short(ref)}) | {_number(_per_pair_s(run), 0)} ({_cpu_short(run)}) | "
                     f"{(run['timing'].get('wall_s') or 0) / 60:.1f} min, {run['jobs']}{resumed} | "
                     f"{lane_whole / 60:.1f} min | "
                     f"`{str(run.get('git_sha'))[:7]}` |")  # fmt: skip
    lines.append(f"| all {len(lanes)} | | | | **{wall / 3600:.2f} h** | **{whole / 3600:.2f} h** | |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, directory: Path = METHODS_RESULTS) -> list[str]:
    """Rewrite every methods block of `readme` whose lane has a (non-quick) result JSON in `directory`, the held-out
    one where a lane has both, and every comparison block (COMPARE_BLOCK) whose folder has results; returns the lanes
    (and `vs:FOLDER`) written. Blocks without results are left as they are."""
    if not Path(readme).is_file():
        return []
    payloads = lane_results(directory)
    text = Path(readme).read_text()
    written: list[str] = []

    def fill(match: re.Match) -> str:
        payload = payloads.get(match["lane"])
        if payload is None:
            return match[0]
        written.append(match["lane"])
        return match[1] + readme_block(payload) + match[4]

    def compare(match: re.Match) -> str:
        other = lane_results(Path(directory) / match["folder"])
        if not other:
            return match[0]
        written.append(f"vs:{match['folder']}")
        return match[1] + comparison_block(payloads, other, match["folder"]) + match[4]

    updated = COMPARE_BLOCK.sub(compare, README_BLOCK.sub(fill, text))
    if updated != text:
        from segadapt.checkpoint import atomic_write_text

        atomic_write_text(Path(readme), updated)
    return written


# ------------------------------------------------------------------------------------------------------------ CLI
def parse_seeds(text: str, flag: str) -> list[int]:
    """ "1-5", "1,2,7" or "1-3,7" -> sorted distinct ints; a ValueError naming the flag otherwise."""
    seeds: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ValueError(f"{flag} {text!r}: expected seeds such as 1-5 or 1,2,7 (non-negative, ranges low-high)")
        seeds.update(range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1))
    return sorted(seeds)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Which runs: --seeds, --data-seeds, --quick, --runs and --set, shared by `bench methods` and the tools that read
    its runs back (`bench valnoise`), so both name a run the same way."""
    parser.add_argument("--seeds", default="1-5", help="training seeds K (default 1-5)")
    parser.add_argument("--data-seeds", default="1,2", help="synthshift seeds D (default 1,2; 0 is the tuning seed)")
    parser.add_argument("--quick", action="store_true", help="2 steps a run, into runs/methods-quick (plumbing test)")
    parser.add_argument("--runs", default=None, help="run root (default runs/methods, runs/methods-quick with --quick)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every run, e.g. --set data.synthshift.count=40")  # fmt: skip


def parse_run_arguments(parser: argparse.ArgumentParser, args) -> tuple[list[int], list[int], Path]:
    """(training seeds, data seeds, run root) of `add_run_arguments`; a bad seed list is the parser's error."""
    try:
        seeds, data_seeds = parse_seeds(args.seeds, "--seeds"), parse_seeds(args.data_seeds, "--data-seeds")
    except ValueError as error:
        parser.error(str(error))
    return seeds, data_seeds, Path(args.runs or ("runs/methods-quick" if args.quick else "runs/methods"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--lane", action="append", default=[], help=f"lane(s), repeatable or comma list: "
                        f"{', '.join(LANES)} (default: all)")  # fmt: skip
    add_run_arguments(parser)
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each (default 1)")
    parser.add_argument("--launch", choices=("fork", "subprocess"), default="fork",
                        help="how a run starts: forked from a server that imported the engine once (fork, "
                        "default; ~3 s less a run, the same results) or as its own `python -m segadapt train` "
                        "process")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and which are done); run nothing")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/methods; with --quick "
                        "RUNS/results)")  # fmt: skip
    parser.add_argument("--probe", dest="probes", action="append", default=[], metavar="ARM:KEY=VALUE",
                        help="a tuning probe: an override for one arm only, e.g. --probe "
                        "u2pl:method.unsup_weight=0.25; that arm runs as ARM@TAG, the others' runs are reused; needs "
                        "--tag")  # fmt: skip
    parser.add_argument("--tag", default="", help="name of the probe: the probed arms' key suffix and the result "
                        "files' (<lane>-<device>[-tuning]-<tag>.json); probes never fill the README")  # fmt: skip
    parser.add_argument("--starts", choices=("shared", "per-pair"), default="shared",
                        help="a lane's pretrained start: trained once per data seed (shared, default, as issue 18 "
                        "asks) or once per pair at its training seed (per-pair: the start's own randomness is "
                        "sampled; runs and results as LANE-pp)")  # fmt: skip
    parser.add_argument("--ceilings", choices=("once", "per-pair"), default="once",
                        help="a table's ceiling (oracle, full labels): trained once per data seed at training seed 0 "
                        "(once, default: the reference row costs D runs, not K x D) or once per pair (per-pair, how "
                        "the results before it were made); the semi-curve lane's all-labels point is always per "
                        "pair")  # fmt: skip
    parser.add_argument("--table", dest="tables", action="append", default=[], metavar="ARM",
                        help="only the table(s) holding row ARM (repeatable), with their rows' stages, e.g. --table "
                        "u2pl; the result files get -only-ARM and never fill the README")  # fmt: skip
    return parser


def _lanes_of(parser, values: list[str]) -> list[Lane]:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()] or list(LANES)
    unknown = [name for name in names if name not in LANES]
    if unknown:
        parser.error(f"--lane {', '.join(unknown)}: unknown; lanes are {', '.join(LANES)}")
    return [LANES[name] for name in names]


def _device_slug() -> tuple[str, str]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine() or 'cpu'}-cpu"
    return device, re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def forecast(jobs: list[Job], states: list[str], measured: dict[str, Any] | None, parallel: int) -> str:
    """A dry run's cost forecast: the runs not done (`states`, one per job), priced at the mean seconds per arm of the
    lane's last measured result (`measured`, its JSON payload; a probed ARM@TAG priced as ARM), scaled by the run's
    stop_step over the one the result timed (a schedule changed since, or probed), divided over `parallel` cores.
    Those seconds depend on the CPU and on what else ran, so the line names both."""
    todo = [job for job, state in zip(jobs, states, strict=True) if state != "done"]
    if measured is None:
        return f"{len(todo)} of {len(jobs)} runs to run; no measured result of this lane in the results folder to price"
    timed = {key.split("@")[0]: arm for key, arm in measured["timing"]["per_arm"].items() if arm.get("mean_s")}

    def price(job: Job) -> float | None:
        arm = timed.get(job.arm.key.split("@")[0])
        if arm is None:
            return None
        steps = arm.get("steps")  # results written before timing recorded it: unscaled
        return arm["mean_s"] * (job.expected["schedule"]["stop_step"] / steps if steps else 1.0)

    prices = [price(job) for job in todo]
    core = sum(value for value in prices if value is not None)
    unpriced = sum(value is None for value in prices)
    return (
        f"{len(todo)} of {len(jobs)} runs to run: ~{core:.0f} core-s, ~{core / parallel / 60:.0f} min with --jobs "
        f"{parallel}, at the mean seconds per arm (per step where it differs) of the {measured.get('timestamp')} "
        f"result ({_cpu_short(measured)}, --jobs {measured.get('jobs')})"
        + (f"; {unpriced} runs of arms it did not time" if unpriced else "")
    )


def run_lane(lane: Lane, args, seeds: list[int], data_seeds: list[int], runs: Path, out: Path, argv: list[str]) -> int:
    """Plan, run what is missing, summarize and write the lane's JSON, markdown and plot; returns failed runs."""
    from segadapt.bench.common import env_stamp

    jobs = plan(lane, seeds, data_seeds, runs, args.quick, args.overrides)
    if args.dry_run:
        states = [run_state(job) for job in jobs]
        for job, state in zip(jobs, states, strict=True):
            print(f"# {lane.name}/{job.arm.key}/{job.pair}: {state}")
            print("OMP_NUM_THREADS=1 " + shlex.join(job.command()))
        results = lane_results(out)
        measured = results.get(lane.name) or results.get(lane.name.removesuffix(PER_PAIR_SUFFIX))
        print("# cost: " + forecast(jobs, states, measured, args.jobs))
        return 0
    started = time.perf_counter()
    data_s = ensure_data(jobs)
    status = execute(jobs, args.jobs, launch=args.launch)
    device, slug = _device_slug()
    clock = {**timing(lane, jobs), "wall_s": time.perf_counter() - started, "data_s": data_s}
    counts = {state: sum(v == state for v in status.values()) for state in sorted(set(status.values()))}
    payload = {
        "bench": "methods",
        "lane": lane.name,
        "description": lane.description,
        "quick": args.quick,
        "held_out": TUNING_DATA_SEED not in data_seeds,
        "seeds": seeds,
        "data_seeds": data_seeds,
        "jobs": args.jobs,
        "launch": args.launch,
        "runs": str(runs / lane.name),
        "command": shlex.join(["python", "-m", "segadapt.bench", "methods", *argv]),
        "overrides": args.overrides,
        **env_stamp(device),
        "tables": summarize(lane, jobs),
        "timing": clock,
        "status": counts,
        "probe": {"tag": args.tag, "sets": args.probes} if args.probes else None,
        "only": args.tables or None,
        "ceilings": ceilings_mode(lane),
    }
    stem = f"{lane.name}-{slug}" + ("-quick" if args.quick else "") + ("" if payload["held_out"] else "-tuning")
    stem += f"-{args.tag}" if args.probes else ""
    stem += f"-only-{'-'.join(args.tables)}" if args.tables else ""
    path = write_json(out / f"{stem}.json", payload)
    page, picture = render(path)
    print(page.read_text())
    print(f"[methods] wrote {path}, {page.name}, {picture.name}")
    return sum(v in ("failed", "blocked") for v in status.values())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    seeds, data_seeds, runs = parse_run_arguments(parser, args)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    lanes = _lanes_of(parser, args.lane)
    if bool(args.probes) != bool(args.tag) or not re.fullmatch(r"[A-Za-z0-9_.-]*", args.tag):
        parser.error("--probe and --tag go together; the tag is letters, digits, '_', '.', '-'")
    try:
        lanes = [select_tables(lane, args.tables) for lane in lanes] if args.tables else lanes
        lanes = [per_pair_starts(lane) for lane in lanes] if args.starts == "per-pair" else lanes
        lanes = [per_pair_ceilings(lane) for lane in lanes] if args.ceilings == "per-pair" else lanes
        lanes = [probe_lane(lane, args.probes, args.tag) for lane in lanes] if args.probes else lanes
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else (runs / "results" if args.quick else METHODS_RESULTS)
    failed = sum(run_lane(lane, args, seeds, data_seeds, runs, out, argv) for lane in lanes)
    if failed:
        print(
            f"[methods] {failed} run(s) failed or were blocked; rerun the same command to retry them", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
