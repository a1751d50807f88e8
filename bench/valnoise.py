"""`python -m segadapt.bench valnoise`: is the val split the noise floor of a methods lane's differences? (issue 18)

A lane's paired difference (method minus baseline, last snapshot) varies over (data seed, training seed) pairs for two
reasons: training randomness and the finite val split every pair is scored on. This re-scores the final checkpoints
of finished `bench methods` runs image by image (one confusion matrix per val image, the same evaluation as
training's), resamples the val images with replacement (the same draw for method and baseline, so the difference is
paired) and reports, per pair, the difference and its bootstrap standard deviation and 95% percentile interval. The
pairs of one data seed share that seed's val split, so its error is common to them (more training seeds do not average
it away; more data seeds do): per table the root-mean-square bootstrap sd, that divided by sqrt(data seeds) (the val
split's share of the uncertainty of the lane's mean difference) and the sd of the difference over the pairs. Results
go to bench/results/methods/<lane>-<device>[-tuning]-valnoise.{json,md}.

    python -m segadapt.bench valnoise --lane uda-init --seeds 1-5 --data-seeds 1,2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segadapt.bench.common import write_json
from segadapt.bench.methods import LANES
from segadapt.bench.methods import METHODS_RESULTS
from segadapt.bench.methods import TUNING_DATA_SEED
from segadapt.bench.methods import Job
from segadapt.bench.methods import _device_slug
from segadapt.bench.methods import add_run_arguments
from segadapt.bench.methods import final_checkpoint
from segadapt.bench.methods import parse_run_arguments
from segadapt.bench.methods import plan
from segadapt.bench.methods import run_state


def per_image_confusions(run_dir: Path, checkpoint: Path) -> np.ndarray:
    """(images, C, C) confusion matrices of `checkpoint` on the val stream of the run in `run_dir` (its config.json),
    one image at a time through `segadapt.evaluate.evaluate`, on the CPU. The network scored is the one the run's
    own evaluation scored: the method is rebuilt, loaded as a resume loads it, and asked for its `eval_model()` (U2PL's
    EMA teacher once its semi phase has run, else the segmenter)."""
    from segadapt import checkpoint as checkpoints
    from segadapt import config
    from segadapt.data.torch_loader import eval_samples
    from segadapt.evaluate import evaluate
    from segadapt.methods import build_method
    from segadapt.models import build_segmenter

    cfg = config.load_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    method = build_method(build_segmenter(config.replace(cfg.model, pretrained="", compile="off")), cfg)
    models = checkpoints.load(checkpoint)["models"]
    extra = {k: v for k, v in models["extra"].items() if not k.startswith("net.")}  # as engine.train.restore
    method.load_state_dict({**{f"model.{k}": v for k, v in models["model"].items()}, **extra})
    model = method.eval_model()
    eval_cfg = config.replace(cfg.eval, save_predictions=0, batch_size=1)
    confusions = [
        evaluate(model, [sample], cfg.data, eval_cfg, cfg.model.num_classes, "cpu")["confusion"]
        for sample in eval_samples(cfg.data.val, cfg.eval.input_size)
    ]
    return np.asarray(confusions, dtype=np.int64)


def miou(confusion: np.ndarray) -> np.ndarray:
    """Percent mIoU of (..., C, C) confusion matrices: nanmean over the classes with pixels (compute_iou.py)."""
    hits = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    union = confusion.sum(axis=-1) + confusion.sum(axis=-2) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.nanmean(np.where(union > 0, hits / union, np.nan), axis=-1)


def bootstrap_difference(method: np.ndarray, baseline: np.ndarray, resamples: int, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap over val images of mIoU(method) - mIoU(baseline): the same image draw scores both."""
    if method.shape != baseline.shape:
        raise ValueError(f"valnoise: method and baseline scored {len(method)} and {len(baseline)} val images")
    draws = np.random.default_rng(seed).integers(0, len(method), size=(resamples, len(method)))
    method_sums = np.stack([method[index].sum(axis=0) for index in draws])
    baseline_sums = np.stack([baseline[index].sum(axis=0) for index in draws])
    differences = miou(method_sums) - miou(baseline_sums)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {
        "difference": float(miou(method.sum(axis=0)) - miou(baseline.sum(axis=0))),
        "bootstrap_sd": float(differences.std(ddof=1)),
        "ci_low": float(low),
        "ci_high": float(high),
        "images": int(len(method)),
    }


def measure(lane_name: str, seeds: list[int], data_seeds: list[int], runs: Path, resamples: int, quick: bool = False,
            extra: tuple[str, ...] = ()) -> list[dict]:  # fmt: skip
    """Per table of the lane, per method row, the bootstrap of every pair whose method and baseline runs are done
    (`quick` and `extra` as the `bench methods` invocation that trained them had them)."""
    lane = LANES[lane_name]
    jobs = {(job.arm.key, job.pair): job for job in plan(lane, seeds, data_seeds, runs, quick, list(extra))}
    cache: dict[Path, np.ndarray] = {}

    def confusions(job: Job) -> np.ndarray:
        if job.run_dir not in cache:
            cache[job.run_dir] = per_image_confusions(job.run_dir, final_checkpoint(job))
        return cache[job.run_dir]

    tables = []
    for table in lane.tables:
        baseline = table.arm("baseline")
        for arm in (arm for arm in table.arms if arm.role == "method"):
            rows = []
            for (key, pair), job in jobs.items():
                base = jobs.get((baseline.key, pair))
                if key != arm.key or base is None or run_state(job) != "done" or run_state(base) != "done":
                    continue
                row = bootstrap_difference(confusions(job), confusions(base), resamples)
                rows.append({"pair": pair, **row})
                print(f"[valnoise] {lane.name} {arm.key} - {baseline.key} {pair}: {row['difference']:+.2f}, "
                      f"bootstrap sd {row['bootstrap_sd']:.2f}", flush=True)  # fmt: skip
            differences = np.array([row["difference"] for row in rows])
            rms = float(np.sqrt(np.mean([row["bootstrap_sd"] ** 2 for row in rows]))) if rows else None
            splits = len({row["pair"].split("-")[0] for row in rows})
            tables.append({
                "title": table.title, "method": arm.label, "baseline": baseline.label, "pairs": rows,
                "mean_difference": float(differences.mean()) if rows else None,
                "pair_sd": float(differences.std(ddof=1)) if len(rows) > 1 else None,
                "rms_bootstrap_sd": rms, "val_splits": splits,
                "val_sd_of_mean": rms / splits**0.5 if rows else None,
            })  # fmt: skip
    return tables


def markdown(payload: dict[str, Any]) -> str:
    held = "held-out data seeds" if payload["held_out"] else "INCLUDES the tuning data seed 0"
    lines = [f"# valnoise: {payload['lane']}", "",
             f"training seeds {payload['seeds']} x data seeds {payload['data_seeds']} ({held}), {payload['resamples']} "
             f"paired resamples of the val images, `{payload['command']}`", ""]  # fmt: skip
    for table in (table for table in payload["tables"] if table["pairs"]):
        spread = "-" if table["pair_sd"] is None else f"{table['pair_sd']:.2f}"
        lines += [f"**{table['title']}: {table['method']} - {table['baseline']}**", "",
                  f"mean difference {table['mean_difference']:+.2f} mIoU over {len(table['pairs'])} pairs (sd over the "
                  f"pairs {spread}); the val split's own sd of a pair's difference, root-mean-square over the pairs: "
                  f"{table['rms_bootstrap_sd']:.2f}; of the mean over {table['val_splits']} val split(s): "
                  f"{table['val_sd_of_mean']:.2f}", "",
                  "| pair | val images | difference | bootstrap sd | 95% interval (val images) |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {row['pair']} | {row['images']} | {row['difference']:+.2f} | {row['bootstrap_sd']:.2f} | "
                  f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] |" for row in table["pairs"]]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m segadapt.bench valnoise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--lane", required=True, choices=sorted(LANES), help="a lane of `bench methods`")
    add_run_arguments(parser)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--out", default=str(METHODS_RESULTS), help="results folder")
    args = parser.parse_args(argv)
    seeds, data_seeds, runs = parse_run_arguments(parser, args)
    if args.resamples < 2:
        parser.error(f"--resamples must be >= 2, got {args.resamples}")
    from segadapt.bench.common import env_stamp
    from segadapt.checkpoint import atomic_write_text

    tables = measure(args.lane, seeds, data_seeds, runs, args.resamples, args.quick, tuple(args.overrides))
    if not any(table["pairs"] for table in tables):
        print(f"valnoise: no finished method/baseline pair of lane {args.lane} under {runs}", file=sys.stderr)
        return 1
    _, slug = _device_slug()
    held_out = TUNING_DATA_SEED not in data_seeds
    payload = {
        "bench": "valnoise", "lane": args.lane, "seeds": seeds, "data_seeds": data_seeds, "held_out": held_out,
        "resamples": args.resamples, "command": shlex.join(["python", "-m", "segadapt.bench", "valnoise", *argv]),
        **env_stamp("cpu"), "tables": tables,
    }  # fmt: skip
    stem = f"{args.lane}-{slug}" + ("" if held_out else "-tuning") + "-valnoise"
    path = write_json(Path(args.out) / f"{stem}.json", payload)
    page = path.with_suffix(".md")
    atomic_write_text(page, markdown(payload))
    print(page.read_text())
    print(f"[valnoise] wrote {path} and {page.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
