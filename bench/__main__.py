"""`python -m segadapt.bench {kernels,loader,infer,train,aot,roofline,methods,valnoise} [...]` runs a benchmark;
`python -m segadapt.bench report` renders results.

`report` reads every JSON in bench/results/ and writes one markdown page, bench/results/REPORT.md (a section per
result file: device, versions, window and its table), plus bench/results/train_speedup.png, a bar chart of each
training ladder's images/s relative to its row a (matplotlib, Agg backend; no display needed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from segadapt.bench.common import RESULTS_DIR
from segadapt.bench.common import markdown_table

BENCHES = ("kernels", "loader", "infer", "train", "aot", "roofline", "methods", "valnoise")
USAGE = (
    "usage: python -m segadapt.bench {kernels,loader,infer,train,aot,roofline,methods,valnoise,report} [options]"
    "  (python -m segadapt.bench train --help)"
)
ENV_KEYS = ("device_name", "torch", "triton", "dali", "cuda", "git_sha", "timestamp")


def _columns(payload: dict[str, Any]) -> list[str]:
    """The train bench's own column order; otherwise every scalar key of the rows, in first-seen order."""
    if payload.get("bench") == "train":
        from segadapt.bench.train import COLUMNS

        return COLUMNS
    columns: list[str] = []
    for row in payload.get("results", []):
        for key, value in row.items():
            if key not in columns and not isinstance(value, (dict, list)):
                columns.append(key)
    return columns


def _section(path: Path, payload: dict[str, Any]) -> str:
    title = f"## {payload.get('bench', '?')}: {payload.get('recipe') or payload.get('cases') or path.stem}"
    stamp = ", ".join(f"{key} `{payload.get(key)}`" for key in ENV_KEYS)
    lines = [title, "", f"`{path.name}`: {stamp}", ""]
    if payload.get("window"):
        lines += [f"Window: {payload['window']}.", ""]
    if payload.get("note"):
        lines += [f"Note: {payload['note']}", ""]
    rows = payload.get("results", [])
    lines.append(markdown_table(rows, _columns(payload)) if rows else "(no rows)")
    return "\n".join(lines)


def speedup_chart(results: list[tuple[Path, dict[str, Any]]], path: Path) -> Path | None:
    """Bar chart of images/s relative to row a, one bar group per train result file; None when there is none."""
    ladders = [(p, payload) for p, payload in results if payload.get("bench") == "train"]
    if not ladders:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    letters = sorted({row["row"] for _, payload in ladders for row in payload["results"]})
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(letters) * len(ladders)), 4))
    width = 0.8 / len(ladders)
    for index, (_, payload) in enumerate(ladders):
        speedups = {row["row"]: row.get("speedup") or 0.0 for row in payload["results"]}
        positions = [position + index * width for position in range(len(letters))]
        label = f"{payload.get('recipe')} / {payload.get('device_name')} ({payload.get('device')})"
        axes.bar(positions, [speedups.get(letter, 0.0) for letter in letters], width, label=label)
    axes.set_xticks([position + width * (len(ladders) - 1) / 2 for position in range(len(letters))], letters)
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xlabel("ladder row (a official-style ... f + DALI); 0 = skipped or not run")
    axes.set_ylabel("images/s relative to row a")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report(results_dir: Path = RESULTS_DIR) -> Path:
    """Render every result JSON in `results_dir` into REPORT.md (and train_speedup.png); returns the page's path."""
    results = [(path, json.loads(path.read_text())) for path in sorted(results_dir.glob("*.json"))]
    index = [{"file": path.name, **{key: payload.get(key) for key in ("bench", "device_name", "torch")}}
             | {"rows": len(payload.get("results", []))} for path, payload in results]  # fmt: skip
    parts = ["# segadapt benchmark results", ""]
    parts.append(
        markdown_table(index, ["file", "bench", "device_name", "torch", "rows"]) if index else "no results yet"
    )
    chart = speedup_chart(results, results_dir / "train_speedup.png")
    if chart is not None:
        parts += ["", f"![training speedup over row a]({chart.name})"]
    parts += ["", *(_section(path, payload) + "\n" for path, payload in results)]
    from segadapt.bench.methods import report_sections  # the methods protocol's lanes, bench/results/methods/

    parts += ["", *report_sections(results_dir / "methods")]
    page = results_dir / "REPORT.md"
    page.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {page}" + (f" and {chart}" if chart else ""))
    from segadapt.bench.methods import update_readme

    readme = results_dir.parents[1] / "README.md"  # the checkout's README (absent in an installed package)
    lanes = update_readme(readme, results_dir / "methods")
    if lanes:
        print(f"rewrote the README's methods tables: {', '.join(lanes)}")
    return page


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*BENCHES, "report"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in BENCHES:
        import importlib

        status = importlib.import_module(f"segadapt.bench.{argv[0]}").main(argv[1:])
        return status if isinstance(status, int) else 0
    else:
        report(Path(argv[1]) if len(argv) > 1 else RESULTS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
