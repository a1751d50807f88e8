"""Run report: plots and a markdown summary of a run directory, from the files training already writes.

Reads `run_dir/metrics.jsonl` (one JSON object a line: {"kind": "train", "step", "lr/...", <losses>...} on logging
steps and {"kind": "eval", "step", "miou", "per_class", ...} after each evaluation) and the newest
`run_dir/eval/step_*/` folder of prediction PNGs, and writes into `run_dir/report/`:

- `losses.png`: one panel per loss over steps;
- `diagnosis.png`: one panel per `diag/*` curve the method logs (discriminator accuracies, pseudo-label coverage and
  accuracy against the labels of data it never trains on, ...), when it logs any;
- `miou.png`: mIoU over steps with the best evaluation marked;
- `per_class_iou.png`: per-class IoU bars of the last and the best evaluation;
- `samples.png`: image / label / prediction for up to 4 images of the newest evaluation;
- `summary.md`: steps, best and last mIoU with their steps, per-class table, links to the plots.

The best snapshot selects on the validation set, which is what the papers report (AdaptSegNet, ADVENT: METHODS.md
"best snapshot versus last"); the summary always gives both. A run with no evaluation yet gets the loss plot and a
summary saying so. Every file is written atomically; matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot is imported
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from segadapt.checkpoint import atomic_write_bytes  # noqa: E402
from segadapt.checkpoint import atomic_write_text  # noqa: E402

MAX_SAMPLES = 4
_NOT_LOSSES = {"kind", "step", "lr", "elapsed_s", "images_per_step"}
_STEP_DIR = re.compile(r"^step_(\d+)$")
BEST_NOTE = (
    "Papers (AdaptSegNet, ADVENT) report the best snapshot on the validation set (best-on-val), which selects on the "
    "data it is scored on; the last snapshot is the unselected number. Both are given here."
)


# --------------------------------------------------------------------------------------------------------- reading
def read_metrics(path: str | Path) -> tuple[list[dict], list[dict], list[str]]:
    """Train and eval records of a metrics.jsonl, sorted by step, the last record kept where a step repeats.

    A resumed run appends to the same file, so a step can appear twice; the later line wins. A torn last line (a
    crash mid-write) is skipped with a note; any other line that is not a JSON object raises ValueError naming the
    file and line.

    Returns:
        (train records, eval records, notes).
    """
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not text (byte {error.start} is not UTF-8); expected one JSON object a line, "
            "as training writes it"
        ) from None
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    notes: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                notes.append(f"{path}: line {number} is incomplete (interrupted write) and was skipped")
                continue
            raise ValueError(f"{path}: line {number} is not JSON ({error})") from error
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}: line {number}: expected an object with an integer 'step', got {line[:80]!r}")
        if record.get("kind") in by_kind:
            by_kind[record["kind"]][record["step"]] = record
    train, evals = ([by_kind[k][s] for s in sorted(by_kind[k])] for k in ("train", "eval"))
    return train, evals, notes


def loss_names(train: list[dict]) -> list[str]:
    """Numeric keys of the train records that are losses (not the step, learning rates, timings or `diag/*`)."""
    names: list[str] = []
    for record in train:
        for key, value in record.items():
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            skip = key in _NOT_LOSSES or key.startswith(("lr/", "diag/"))
            if is_number and not skip and key not in names:
                names.append(key)
    return names


def diag_names(train: list[dict]) -> list[str]:
    """The `diag/*` keys of the train records (a method's diagnosis curves), in order of first appearance."""
    names: list[str] = []
    for record in train:
        names += [key for key in record if key.startswith("diag/") and key not in names]
    return names


def _miou(record: dict) -> float:
    value = record.get("miou")
    return float("nan") if value is None else float(value)


def best_and_last(evals: list[dict]) -> tuple[dict | None, dict | None]:
    """The eval record with the highest mIoU (the earliest on ties) and the last one; (None, None) without evals."""
    scored = [r for r in evals if not math.isnan(_miou(r))]
    if not evals:
        return None, None
    best = max(scored, key=_miou) if scored else None  # max keeps the first of equal values: the earliest step
    return best, evals[-1]


def newest_samples(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest eval/step_* folder holding prediction PNGs, and up to 4 sample stems with all three PNGs."""
    folders = []
    for folder in (run_dir / "eval").glob("step_*"):
        match = _STEP_DIR.match(folder.name)
        if match and folder.is_dir():
            folders.append((int(match.group(1)), folder))
    for _, folder in sorted(folders, reverse=True):
        stems = sorted(p.name[: -len("_pred.png")] for p in folder.glob("*_pred.png"))
        stems = [s for s in stems if (folder / f"{s}_image.png").is_file() and (folder / f"{s}_label.png").is_file()]
        if stems:
            return folder, stems[:MAX_SAMPLES]
    return None, []


# ---------------------------------------------------------------------------------------------------------- plots
def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, lambda handle: handle.write(buffer.getvalue()))


def plot_losses(train: list[dict], path: Path, names: list[str] | None = None) -> None:
    """One panel per loss (or per name in `names`) over steps, or a panel saying there is nothing logged yet."""
    names = loss_names(train) if names is None else names
    columns = min(3, max(len(names), 1))
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    if not names:
        axes[0, 0].text(0.5, 0.5, "no training losses logged yet", ha="center", va="center")
    for axis, name in zip(axes.flat, names, strict=False):
        points = [(r["step"], r[name]) for r in train if isinstance(r.get(name), (int, float))]
        axis.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_miou(evals: list[dict], best: dict | None, path: Path) -> None:
    """mIoU (and mIoU16 / mIoU13 where logged) over steps, the best evaluation marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in evals]
    axis.plot(steps, [_miou(r) for r in evals], marker="o", label="mIoU")
    for key in ("miou16", "miou13"):
        if any(key in r for r in evals):
            values = [float("nan") if r.get(key) is None else r[key] for r in evals]
            axis.plot(steps, values, marker=".", linestyle="--", label=key.replace("miou", "mIoU"))
    if best is not None:
        axis.plot([best["step"]], [best["miou"]], marker="*", markersize=16, color="tab:red", linestyle="none")
        axis.annotate(f"best {best['miou']:.2f} @ {best['step']}", (best["step"], best["miou"]),
                      textcoords="offset points", xytext=(6, 6))  # fmt: skip
    axis.set_xlabel("step")
    axis.set_ylabel("IoU (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_per_class(last: dict, best: dict | None, path: Path) -> None:
    """Per-class IoU bars of the last evaluation and, beside them, the best one."""
    names = list(last.get("per_class", {}))
    runs = [(f"last (step {last['step']})", last)]
    if best is not None and best is not last:
        runs.append((f"best (step {best['step']})", best))
    figure, axis = plt.subplots(figsize=(max(6, 0.55 * len(names) + 2), 4))
    width = 0.8 / len(runs)
    positions = np.arange(len(names))
    for index, (title, record) in enumerate(runs):
        values = [record.get("per_class", {}).get(n) for n in names]
        heights = [0.0 if v is None else v for v in values]
        axis.bar(positions + (index - (len(runs) - 1) / 2) * width, heights, width, label=title)
    axis.set_xticks(positions, names, rotation=60, ha="right")
    axis.set_ylabel("IoU (%)")
    axis.set_ylim(0, 100)
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    _save(figure, path)


def _unreadable(path: Path) -> str:
    """Why a PNG cannot be shown, or ""."""
    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, SyntaxError, ValueError) as error:
        return f"{path}: {error}"
    return ""


def readable_samples(folder: Path, stems: list[str]) -> tuple[list[str], list[str]]:
    """The stems whose three PNGs decode, and a note for each file that does not (the sample is left out)."""
    notes = [problem for stem in stems for kind in ("image", "label", "pred")
             if (problem := _unreadable(folder / f"{stem}_{kind}.png"))]  # fmt: skip
    good = [s for s in stems if not any(n.startswith(f"{folder / s}_") for n in notes)]
    return good, [f"sample left out, unreadable PNG {note}" for note in notes]


def plot_samples(folder: Path, stems: list[str], path: Path) -> None:
    """A grid with one row per image: input, label, prediction."""
    figure, axes = plt.subplots(len(stems), 3, figsize=(10, 2.6 * len(stems)), squeeze=False)
    for row, stem in enumerate(stems):
        for column, kind in enumerate(("image", "label", "pred")):
            with Image.open(folder / f"{stem}_{kind}.png") as picture:
                axes[row, column].imshow(np.asarray(picture.convert("RGB")))
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title({"image": "image", "label": "label", "pred": "prediction"}[kind])
        axes[row, 0].set_ylabel(stem, fontsize=8)
    figure.tight_layout()
    _save(figure, path)


# -------------------------------------------------------------------------------------------------------- summary
def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _run_title(run_dir: Path) -> str:
    config = run_dir / "config.json"
    try:
        tree = json.loads(config.read_text()) if config.is_file() else {}
    except (ValueError, OSError):  # not JSON, not text or unreadable: the title goes without recipe and method
        tree = {}
    method = tree.get("method", {}).get("name", "") if isinstance(tree.get("method"), dict) else ""
    recipe = tree.get("recipe", "")
    details = ", ".join(f"{k} `{v}`" for k, v in (("recipe", recipe), ("method", method)) if v)
    return f"{run_dir.name}" + (f" ({details})" if details else "")


def _eval_section(evals: list[dict], best: dict | None, last: dict) -> list[str]:
    lines = ["## Evaluation", "", f"{len(evals)} evaluations. {BEST_NOTE}", ""]
    lines += ["| | mIoU | step |", "|---|---:|---:|"]
    if best is not None:
        lines.append(f"| best | {_number(best.get('miou'))} | {best['step']} |")
    lines.append(f"| last | {_number(last.get('miou'))} | {last['step']} |")
    for key in ("miou16", "miou13"):
        if key in last:
            lines.append(f"| last {key.replace('miou', 'mIoU')} | {_number(last.get(key))} | {last['step']} |")
    columns = [("last", last)] + ([("best", best)] if best is not None else [])
    lines += ["", "### Per-class IoU (%)", "", "| class | " + " | ".join(c for c, _ in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for name in last.get("per_class", {}):
        lines.append(f"| {name} | " + " | ".join(_number(r.get("per_class", {}).get(name)) for _, r in columns) + " |")
    return lines + [""]


def summary_markdown(run_dir: Path, train: list[dict], evals: list[dict], samples: Path | None, notes) -> str:
    """The summary.md text."""
    best, last = best_and_last(evals)
    steps = max([r["step"] for r in train + evals], default=0)
    lines = [f"# Run report: {_run_title(run_dir)}", "", f"- run directory: `{run_dir}`", f"- steps: {steps}"]
    lines += [f"- note: {note}" for note in notes] + [""]
    finals = {n: train[-1][n] for n in loss_names(train[-1:])} if train else {}
    if finals:
        lines += [f"## Losses at step {train[-1]['step']}", "", "| loss | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in finals.items()] + [""]
    lines += ["![losses](losses.png)", ""]
    diagnosis = {n: train[-1][n] for n in diag_names(train[-1:])} if train else {}
    if diagnosis:
        lines += [f"## Diagnosis at step {train[-1]['step']}", "", "| curve | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in diagnosis.items()]
        lines += ["", "![diagnosis](diagnosis.png)", ""]
    if last is None:
        lines += ["## Evaluation", "", "No evaluation yet: metrics.jsonl holds no eval record.", ""]
        return "\n".join(lines)
    lines += _eval_section(evals, best, last)
    lines += ["![mIoU over steps](miou.png)", "", "![per-class IoU](per_class_iou.png)", ""]
    if samples is not None:
        lines += [f"## Samples (from `{samples.relative_to(run_dir)}`)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report/` (plots and summary.md) and return the path of summary.md.

    Args:
        run_dir: a training run directory holding metrics.jsonl (and eval/step_*/ PNG folders where evaluated).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ValueError(f"report: {run_dir / 'metrics.jsonl'} does not exist; expected a training run directory")
    train, evals, notes = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "report"
    plot_losses(train, out / "losses.png")
    if diag_names(train):
        plot_losses(train, out / "diagnosis.png", diag_names(train))
    best, last = best_and_last(evals)
    folder, stems = newest_samples(run_dir)
    if last is not None:
        plot_miou(evals, best, out / "miou.png")
        plot_per_class(last, best, out / "per_class_iou.png")
        if folder is not None:
            stems, unreadable = readable_samples(folder, stems)
            notes = notes + unreadable
            if stems:
                plot_samples(folder, stems, out / "samples.png")
            else:
                folder = None
    samples = folder if last is not None else None
    return atomic_write_text(out / "summary.md", summary_markdown(run_dir, train, evals, samples, notes))
