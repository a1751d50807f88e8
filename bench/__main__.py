"""`python -m bench kernels [...]` runs the kernel benchmark; `python -m bench report` lists stored results."""

from __future__ import annotations

import json
import sys

from bench.common import RESULTS_DIR
from bench.common import markdown_table

USAGE = "usage: python -m bench {kernels,loader,infer,report} [options]  (python -m bench kernels --help for options)"


def report() -> None:
    """One line per stored result file: bench, device, versions and row count."""
    rows = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        payload = json.loads(path.read_text())
        rows.append({"file": path.name, **{key: payload.get(key) for key in ("bench", "device_name", "torch")}})
        rows[-1]["rows"] = len(payload.get("results", []))
    print(markdown_table(rows, ["file", "bench", "device_name", "torch", "rows"]) if rows else "no results yet")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("kernels", "loader", "infer", "report"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("kernels", "loader", "infer"):
        import importlib

        importlib.import_module(f"bench.{argv[0]}").main(argv[1:])
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
