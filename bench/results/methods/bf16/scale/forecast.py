"""What the six lanes would cost at 144x72 with forked runs, from measured seconds only (run from the repo root).

Each arm's seconds a run at 192x96 come from the held-out lane JSONs (192x96/<lane>-x86-64-cpu.json, copies of
bench/results/methods/bf16/'s from before the recipes moved to 144x72; uda-lsd's is still there; the AMD EPYC alone,
subprocess runs); the factor 144x72 / 192x96 comes from the same arm run both ways on the tuning
pairs on one day (144x72/ and 192x96/ here), each side without the per-run start-up that `--launch fork` removes
(FORK_S, measured on that day: the quick uda-lsd lane, 5 runs, 3 rounds alternating, 2.36 s a run). The uda-adaptseg
and semi lanes take the factors of uda-init and semi-init (the same recipes and arms from a start; the semi lane's
144x72 runs shared the cores with the test suite for a while), uda-lsd is not rescaled (lsd_demo trains at 96x48).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORK_S = 2.4
FACTOR_LANE = {"uda-adaptseg": "uda-init", "uda-init": "uda-init", "semi": "semi-init", "semi-init": "semi-init",
               "mm": "mm"}  # fmt: skip


def per_arm(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text())["timing"]["per_arm"].items() if v["mean_s"]}


def factors(lane: str) -> dict[str, float]:
    small = per_arm(HERE / "144x72" / f"{lane}-x86-64-cpu-tuning.json")
    large = per_arm(HERE / "192x96" / f"{lane}-x86-64-cpu-tuning.json")  # 192x96 runs were forked already
    return {key: (small[key]["mean_s"] - FORK_S) / large[key]["mean_s"] for key in large if key in small}


def main() -> None:
    total = {"192x96": 0.0, "144x72": 0.0}
    print("| lane | 192x96 core-s (min at --jobs 2) | 144x72 + fork core-s (min) | factor per arm |")
    print("|---|---:|---:|---|")
    for lane in ("uda-adaptseg", "uda-init", "uda-lsd", "semi", "semi-init", "mm"):
        held = HERE / "192x96" / f"{lane}-x86-64-cpu.json"  # copied here when the recipes moved to 144x72
        arms = per_arm(held if held.is_file() else HERE.parent / f"{lane}-x86-64-cpu.json")  # uda-lsd: unchanged
        factor = factors(FACTOR_LANE[lane]) if lane in FACTOR_LANE else {key: 1.0 for key in arms}
        now = sum(arm["runs"] * arm["mean_s"] for arm in arms.values())
        then = sum(arm["runs"] * (arm["mean_s"] - FORK_S) * factor[key] for key, arm in arms.items())
        total["192x96"] += now
        total["144x72"] += then
        shown = ", ".join(f"{key} {value:.2f}" for key, value in factor.items()) if lane in FACTOR_LANE else "1 (96x48)"
        print(f"| {lane} | {now:.0f} ({now / 120:.1f}) | {then:.0f} ({then / 120:.1f}) | {shown} |")
    print(f"| all six | {total['192x96']:.0f} ({total['192x96'] / 7200:.2f} h) | {total['144x72']:.0f} "
          f"({total['144x72'] / 7200:.2f} h) | |")  # fmt: skip


if __name__ == "__main__":
    main()
