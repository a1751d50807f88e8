"""Tabulate the runs of bench/demo_methods.sh: mean and per-seed mIoU (last and best) of every method and baseline.

Usage: python bench/demo_methods_table.py [RUNS_DIR (default runs/measure)] [OUT_STEM (default
bench/results/methods/demo-x86-64-cpu)]. Writes OUT_STEM.json and OUT_STEM.md and prints the markdown.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

from segadapt.checkpoint import atomic_write_text

# (table, row label, path of results.json under runs/measure/s<SEED>/)
ROWS = [
    ("semi: DeepLab-v2 R18 w16 (AdvSemiSeg's network)", "supervised-only", "semi_demo_advsemiseg/supervised"),
    ("semi: DeepLab-v2 R18 w16 (AdvSemiSeg's network)", "AdvSemiSeg", "semi_demo_advsemiseg/advsemiseg"),
    ("semi: DeepLab-v3+ R18 w8 (U2PL's network)", "supervised-only", "semi_demo_u2pl/supervised"),
    ("semi: DeepLab-v3+ R18 w8 (U2PL's network)", "U2PL", "semi_demo_u2pl/u2pl"),
    ("semi, pretrained start: DeepLab-v2", "supervised-only", "init/semi_demo_advsemiseg/supervised"),
    ("semi, pretrained start: DeepLab-v2", "AdvSemiSeg", "init/semi_demo_advsemiseg/advsemiseg"),
    ("semi, pretrained start: DeepLab-v3+", "supervised-only", "init/semi_demo_u2pl/supervised"),
    ("semi, pretrained start: DeepLab-v3+", "U2PL", "init/semi_demo_u2pl/u2pl"),
    ("UDA: DeepLab-v2 R18 w16, game -> photo", "source-only", "lsd_demo/sourceonly"),
    ("UDA: DeepLab-v2 R18 w16, game -> photo", "LSD-seg", "lsd_demo/lsdseg"),
    ("M&M: hypercolumn VGG-16-BN w8, 19 labels", "random init -> fine-tune", "mm/finetune_from_scratch"),
    ("M&M: hypercolumn VGG-16-BN w8, 19 labels", "colorization -> fine-tune", "mm/finetune_from_colorization"),
    ("M&M: hypercolumn VGG-16-BN w8, 19 labels", "colorization -> M&M -> fine-tune", "mm/finetune_from_mixmatch"),
]


def collect(runs: Path) -> dict:
    seeds = sorted(int(p.name[1:]) for p in runs.glob("s*") if p.name[1:].isdigit())
    tables: dict[str, list[dict]] = {}
    for table, label, rel in ROWS:
        per_seed = {}
        for seed in seeds:
            path = runs / f"s{seed}" / rel / "results.json"
            if path.is_file():
                result = json.loads(path.read_text())
                per_seed[seed] = {"last": result["last"]["miou"], "best": result["best"]["miou"],
                                  "steps": result["steps"]}  # fmt: skip
        last = [v["last"] for v in per_seed.values()]
        tables.setdefault(table, []).append(
            {
                "method": label,
                "run": rel,
                "seeds": per_seed,
                "mean_last": statistics.fmean(last) if last else None,
                "std_last": statistics.stdev(last) if len(last) > 1 else None,
                "mean_best": statistics.fmean(v["best"] for v in per_seed.values()) if per_seed else None,
            }
        )
    return {"seeds": seeds, "tables": tables, "machine": platform.processor() or platform.machine()}


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = []
    for table, rows in summary["tables"].items():
        lines += [f"**{table}**", "", "| method | mean mIoU (last) | std | mean best | "
                  + " | ".join(f"seed {s} last" for s in seeds) + " |",
                  "|---|---|---|---|" + "---|" * len(seeds)]  # fmt: skip
        for row in rows:
            cells = [f"{row['seeds'][s]['last']:.2f}" if s in row["seeds"] else "-" for s in seeds]
            mean = f"{row['mean_last']:.2f}" if row["mean_last"] is not None else "-"
            std = f"{row['std_last']:.2f}" if row["std_last"] is not None else "-"
            best = f"{row['mean_best']:.2f}" if row["mean_best"] is not None else "-"
            lines.append(f"| {row['method']} | {mean} | {std} | {best} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/measure")
    stem = Path(sys.argv[2] if len(sys.argv) > 2 else "bench/results/methods/demo-x86-64-cpu")
    summary = collect(runs)
    text = markdown(summary)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
