"""The methods protocol (bench/methods.py): its statistics against hand-computed values and published t tables, the
plan's identical settings across a lane's arms, and one lane end to end with --quick (2 steps a run)."""

import dataclasses
import json
import math
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest

from segadapt import config
from segadapt.bench import methods

# Two-sided 95% (p = 0.975) and one 90% (p = 0.95) Student-t quantiles, as printed in every t table (e.g. NIST/SEMATECH
# e-Handbook of Statistical Methods, section 1.3.6.7.2, "Critical values of the Student's t distribution").
T_TABLE = [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 9, 2.262),
           (0.975, 29, 2.045), (0.975, 100, 1.984), (0.95, 5, 2.015), (0.95, 10, 1.812)]  # fmt: skip


@pytest.mark.parametrize(("probability", "df", "want"), T_TABLE, ids=[f"p{p}-df{d}" for p, d, _ in T_TABLE])
def test_t_quantile_matches_the_published_table(probability, df, want):
    assert methods.t_quantile(probability, df) == pytest.approx(want, abs=6e-4)
    assert methods.t_quantile(1 - probability, df) == pytest.approx(-want, abs=6e-4), "symmetry"
    assert methods.t_cdf(methods.t_quantile(probability, df), df) == pytest.approx(probability, abs=1e-12)


def test_t_cdf_closed_forms():
    """df = 1 is Cauchy: F(t) = 1/2 + atan(t)/pi; df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert methods.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert methods.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_interval_wins_and_gap_by_hand():
    """4 pairs: differences 5, 4, 2, 5 -> mean 4, sd sqrt(6/3) = 1.41421, se 0.70711, t_{.975,3} = 3.18245,
    half-width 2.25032 -> [1.74968, 6.25032]; ceiling - baseline 25, 24, 24, 24 -> gap closed 4 / 24.25 = 0.164948."""
    baseline = {"d1-s1": 15.0, "d1-s2": 18.0, "d2-s1": 17.0, "d2-s2": 20.0}
    method = {"d1-s1": 20.0, "d1-s2": 22.0, "d2-s1": 19.0, "d2-s2": 25.0, "d3-s1": 99.0}  # d3-s1: no baseline pair
    ceiling = {"d1-s1": 40.0, "d1-s2": 42.0, "d2-s1": 41.0, "d2-s2": 44.0}
    stats = methods.paired(method, baseline)
    assert stats["n"] == 4 and stats["wins"] == 4 and stats["win_rate"] == 1.0
    assert stats["mean"] == pytest.approx(4.0) and stats["std"] == pytest.approx(math.sqrt(2.0))
    assert stats["ci95"] == pytest.approx([1.749680, 6.250320], abs=1e-5)
    assert methods.gap_closed(method, baseline, ceiling) == pytest.approx(4.0 / 24.25)
    below = {pair: value - 30.0 for pair, value in ceiling.items()}  # ceiling under the baseline: no gap to close
    assert methods.gap_closed(method, baseline, below) is None
    losing = methods.paired({"a": 1.0, "b": 3.0, "c": 2.0}, {"a": 2.0, "b": 2.0, "c": 2.0})
    assert (losing["wins"], losing["mean"]) == (1, pytest.approx(0.0)), "a tie (c) is not a win"
    assert methods.paired({"a": 1.0}, {"a": 0.0})["ci95"] is None, "one pair has no interval"
    assert methods.describe([1.0, 2.0, 6.0]) == {"n": 3, "mean": 3.0, "std": pytest.approx(math.sqrt(7.0))}


def test_per_class_means_and_paired_differences_by_hand():
    """Two pairs, two classes. baseline road 80, 70 / car 10, 30; method road 84, 69 / car 5, 20 -> means 75 / 20 and
    76.5 / 12.5; differences road +4, -1 -> +1.5, 1 win; car -5, -10 -> -7.5, 0 wins. A row without per-class IoU
    (results from before it) gives no table."""

    def run(road, car):
        return {"last": (road + car) / 2, "per_class": {"road": road, "car": car}}

    table = {"baseline": "base", "rows": [
        {"key": "base", "label": "baseline", "runs": {"d1-s1": run(80.0, 10.0), "d1-s2": run(70.0, 30.0)}},
        {"key": "m", "label": "method", "runs": {"d1-s1": run(84.0, 5.0), "d1-s2": run(69.0, 20.0)}},
    ]}  # fmt: skip
    summary = methods.per_class_summary(table)
    assert summary["classes"] == ["road", "car"]
    base, method = summary["rows"]
    assert base["mean"] == {"road": 75.0, "car": 20.0} and "vs_baseline" not in base
    assert method["mean"] == {"road": 76.5, "car": 12.5}
    assert (method["vs_baseline"]["road"]["mean"], method["vs_baseline"]["road"]["wins"]) == (1.5, 1)
    assert (method["vs_baseline"]["car"]["mean"], method["vs_baseline"]["car"]["wins"]) == (-7.5, 0)
    lines = methods._per_class_markdown(table)
    assert lines[0] == "| per-class IoU, last, mean over pairs | road | car |"
    assert lines[2:] == ["| baseline | 75.0 | 20.0 |", "| method | 76.5 | 12.5 |",
                         "| method - baseline (wins) | +1.5 (1/2) | -7.5 (0/2) |"]  # fmt: skip
    for row in table["rows"]:
        for record in row["runs"].values():
            del record["per_class"]
    assert methods.per_class_summary(table) is None and methods._per_class_markdown(table) == []


def test_parse_seeds():
    assert methods.parse_seeds("1-3,7", "--seeds") == [1, 2, 3, 7]
    for bad in ("3-1", "a", "1,,2", "-2"):
        with pytest.raises(ValueError, match="--data-seeds"):
            methods.parse_seeds(bad, "--data-seeds")


@pytest.mark.parametrize(("recipe", "override", "baseline"), [
    ("demo", methods.SOURCE_ONLY, "sourceonly"),
    ("lsd_demo", methods.SOURCE_ONLY, "sourceonly"),
    ("semi_demo_advsemiseg", methods.LABELLED_SHARE, "supervised"),
    ("semi_demo_u2pl", methods.LABELLED_SHARE, "supervised"),
])  # fmt: skip
def test_baseline_is_the_one_compare_methods_trains(recipe, override, baseline):
    """The protocol's baseline section equals what `segadapt train RECIPE` trains as its baseline (engine/cli.py
    baseline_section), so the protocol's baseline is the README demo's baseline."""
    from segadapt.cli import baseline_section

    assert config.load(recipe, [override]).method == baseline_section(config.load(recipe), baseline)


def test_semi_curve_doubles_the_labelled_share_up_to_every_image(tmp_path):
    """The regime study: per network, supervised-only at 9, 19, 38, 75 and 150 of the 150 labelled train images
    (nearest rounding), the smallest share as the baseline, every image as the ceiling, each share paired with the
    one below it."""
    for table in methods.LANES["semi-curve"].tables:
        jobs = methods.plan(methods.Lane("one", "", (table,)), [1], [3], tmp_path)
        assert [job.expected["method"]["name"] for job in jobs] == ["supervised"] * 5
        assert {job.expected["method"]["stream"] for job in jobs} == {"labeled"}
        fractions = [job.expected["data"]["labeled"]["fraction"] for job in jobs]
        assert {job.expected["data"]["labeled"]["fraction_rounding"] for job in jobs} == {"nearest"}
        assert [round(fraction * 150) for fraction in fractions] == [9, 19, 38, 75, 150]  # datasets._fraction_count
        # ... of the 150 train images of a 200-scene synthshift (the pool it was measured on; the semi recipes now 600)
        assert {job.expected["data"]["synthshift"]["count"] for job in jobs} == {200}
        assert [arm.role for arm in table.arms] == ["baseline", "method", "method", "method", "ceiling"]
        assert [arm.versus for arm in table.arms[1:]] == [(arm.key,) for arm in table.arms[:-1]]


# Keys where a lane's arms may differ: the method, where the run goes, the start, the ceiling's labelled share, and the
# training seed (a once-per-data-seed arm trains at 0; the test checks it).
ALLOWED = ("method", "train.run_dir", "model.pretrained", "data.labeled.fraction", "train.seed")


def _flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}" if not prefix
                                                                    else f"{prefix}.{key}").items()}  # fmt: skip


@pytest.mark.parametrize("lane", ["uda-adaptseg", "uda-init", "uda-lsd", "semi", "semi-init", "mm", "semi-curve"])
def test_plan_trains_every_arm_of_a_table_with_identical_settings(lane, tmp_path):
    """Per pair, the table's arms differ only in ALLOWED keys; a once-per-data-seed arm (a shared start, a ceiling)
    runs at training seed 0 once per data seed, with the same settings as the pair's arms but for train.seed."""
    jobs = methods.plan(methods.LANES[lane], [1, 2], [3, 4], tmp_path)
    arms = methods.LANES[lane].arms()
    shared = sum(arm.once_per_data_seed for arm in arms)
    assert len(jobs) == 4 * (len(arms) - shared) + 2 * shared
    assert len({job.run_dir for job in jobs}) == len(jobs)
    by_dir = {str(job.run_dir): job for job in jobs}
    for table in methods.LANES[lane].tables:
        keys = {arm.key for arm in table.arms}
        for pair in ("d3-s1", "d4-s2"):
            once = [job for job in jobs if job.arm.key in keys and job.arm.once_per_data_seed]
            runs = [job for job in jobs if job.arm.key in keys and job.pair == pair]
            runs += [job for job in once if job.data_seed == int(pair[1])]
            assert {job.arm.key for job in runs} == keys
            flats = [_flat(job.expected) for job in runs]
            differ = {
                key for key in set().union(*flats) if len({json.dumps(f.get(key, "<absent>")) for f in flats}) > 1
            }
            other = sorted(k for k in differ if not any(k == a or k.startswith(f"{a}.") for a in ALLOWED))
            assert other == [], f"{lane}/{table.title}: arms differ in {other}"
            assert {f["data.synthshift.seed"] for f in flats} == {int(pair[1])}, pair
            for job, flat in zip(runs, flats, strict=True):
                assert flat["train.seed"] == (0 if job.arm.once_per_data_seed else int(pair[-1])), job.run_dir
            assert all(f["data.val.root"].startswith(f["data.synthshift.out"]) for f in flats)
    for job in jobs:
        if job.needs:  # a start is the stage's final checkpoint on the same data seed
            stage = by_dir[job.needs]
            assert job.expected["model"]["pretrained"] == str(methods.final_checkpoint(stage))
            assert stage.data_seed == job.data_seed and stage.seed in (0, job.seed)


def test_uda_init_start_trains_on_a_separate_draw_and_every_arm_starts_from_it(tmp_path):
    """Issue 18's standard start for UDA: one source-only model per data seed, trained on synthshift draw D + 1000
    (none of the pair's images, source or target), and every arm of the table, baseline and ceiling included, loads
    its final checkpoint; the arms themselves train and evaluate on draw D."""
    jobs = methods.plan(methods.LANES["uda-init"], [1, 2], [3], tmp_path)
    (stage,) = [job for job in jobs if job.arm.role == "stage"]
    assert stage.expected["data"]["synthshift"]["seed"] == 3 + methods.POOL_OFFSET
    assert stage.expected["method"]["name"] == "sourceonly" and stage.seed == 0
    pool = stage.expected["data"]["synthshift"]["out"]
    assert "synthshift-d1003-" in pool and stage.expected["data"]["source"]["root"].startswith(pool)
    arms = [job for job in jobs if job.arm.role != "stage"]
    assert sorted({job.arm.key for job in arms}) == ["adaptsegnet", "adaptsegnet-single", "oracle", "sourceonly"]
    for job in arms:
        assert job.expected["data"]["synthshift"]["seed"] == 3
        assert job.expected["model"]["pretrained"] == str(methods.final_checkpoint(stage))
        assert not job.expected["data"]["target"]["root"].startswith(pool)
    with pytest.raises(ValueError, match="--data-seeds 0,1000: lane uda-init"):  # D = 0's start would be D = 1000
        methods.plan(methods.LANES["uda-init"], [1], [0, 1000], tmp_path)


def test_quick_lane_end_to_end_and_resumable(tmp_path):
    """One lane, K = 2 x D = 1, 2 steps a run: JSON, markdown and plot; the table's values are the final eval records
    of the runs' metrics.jsonl; the oracle trains once (d1-s0) and both pairs are paired with it; a second invocation
    runs nothing again."""
    runs, out = tmp_path / "runs", tmp_path / "results"
    argv = ["--quick", "--lane", "uda-lsd", "--seeds", "1,2", "--data-seeds", "1", "--jobs", "2", "--runs", str(runs),
            "--out", str(out), "--set", "data.synthshift.count=24"]  # fmt: skip
    assert methods.main(argv) == 0
    (path,) = out.glob("uda-lsd-*-quick.json")
    payload = json.loads(path.read_text())
    assert payload["held_out"] and payload["quick"] and payload["status"] == {"ran": 5}
    assert payload["ceilings"] == "once"
    (table,) = payload["tables"]
    assert [row["key"] for row in table["rows"]] == ["sourceonly", "lsdseg", "oracle"]
    for row in table["rows"]:
        assert sorted(row["runs"]) == (["d1-s0"] if row["key"] == "oracle" else ["d1-s1", "d1-s2"])
        for pair, run in row["runs"].items():
            lines = (runs / "uda-lsd" / row["key"] / pair / "metrics.jsonl").read_text().splitlines()
            final = [json.loads(line) for line in lines if json.loads(line)["kind"] == "eval"][-1]
            assert (run["last"], run["steps"], final["step"]) == (final["miou"], 2, 2)
            assert run["per_class"] == final["per_class"] and len(run["per_class"]) == 19
    lsd = table["rows"][1]
    want = methods.paired({p: r["last"] for p, r in lsd["runs"].items()},
                          {p: r["last"] for p, r in table["rows"][0]["runs"].items()})  # fmt: skip
    assert lsd["vs_baseline"] == want  # floats survive the JSON round trip exactly
    base, oracle = ({p: r["last"] for p, r in row["runs"].items()} for row in (table["rows"][0], table["rows"][2]))
    ceiling = {pair: oracle["d1-s0"] for pair in base}  # the data seed's one oracle, seen by each of its pairs
    assert oracle.keys() == {"d1-s0"} and table["rows"][2]["once_per_data_seed"] and table["rows"][2]["last"]["n"] == 1
    assert table["rows"][2]["vs_baseline"] == methods.paired(ceiling, base)
    if sum(ceiling.values()) > sum(base.values()):  # 2 steps: the oracle may not beat source-only (gap None then)
        mean_gain = sum(r["last"] for r in lsd["runs"].values()) - sum(base.values())
        gap = sum(ceiling.values()) - sum(base.values())
        assert lsd["gap_closed"] == pytest.approx(mean_gain / gap, rel=1e-12)
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| LSD-seg | method | 2 |" in path.with_suffix(".md").read_text()
    oracle_row = "| target oracle (all target labels) | ceiling (once per data seed) | 1 |"
    assert oracle_row in path.with_suffix(".md").read_text()
    cpu = f"`{payload['device_name']}` ({payload['cpu_model']}, {payload['cpu_capability']}"  # the page names the CPU
    assert payload["cpu_model"] and cpu in path.with_suffix(".md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("uda-lsd/*/*/results.json")}
    assert methods.main(argv) == 0
    assert json.loads(path.read_text())["status"] == {"done": 5}
    assert {p: p.stat().st_mtime_ns for p in runs.glob("uda-lsd/*/*/results.json")} == stamps
    whole = path.read_bytes()  # a cut lane (--table) writes its own files, never the whole lane's
    assert methods.main([*argv, "--table", "lsdseg"]) == 0
    cut = json.loads(path.with_name(path.stem + "-only-lsdseg.json").read_text())
    assert cut["only"] == ["lsdseg"] and cut["tables"] == payload["tables"] and path.read_bytes() == whole
    path.with_name(path.stem + "-only-lsdseg.json").unlink()
    (section,) = methods.report_sections(out)
    assert "](methods/" + path.with_suffix(".png").name + ")" in section

    # valnoise re-scores each final checkpoint image by image: the per-image confusions add up to the run's own final
    # evaluation, so its paired difference is the table's, pair by pair.
    from segadapt.bench import valnoise

    (noise,) = valnoise.measure("uda-lsd", [1, 2], [1], runs, 20, quick=True, extra=("data.synthshift.count=24",))
    lsd_runs, base_runs = lsd["runs"], table["rows"][0]["runs"]
    assert [row["pair"] for row in noise["pairs"]] == ["d1-s1", "d1-s2"]
    for row in noise["pairs"]:
        assert row["difference"] == pytest.approx(
            lsd_runs[row["pair"]]["last"] - base_runs[row["pair"]]["last"], abs=1e-9
        )
        assert row["images"] > 1 and row["ci_low"] <= row["ci_high"] and row["bootstrap_sd"] >= 0

    # The README's tables come from the JSON: its marked block for the lane is rewritten, others are left alone,
    # and a quick payload never lands in the README.
    readme = tmp_path / "README.md"
    blocks = "".join(f"<!-- methods:{lane} begin -->\nold text\n<!-- methods:{lane} end -->\n"
                     for lane in ("uda-lsd", "semi"))  # fmt: skip
    readme.write_text("# title\n" + blocks + "tail\n")
    assert methods.update_readme(readme, out) == []  # only the quick JSON exists
    measured = tmp_path / "measured"
    measured.mkdir()
    (measured / "uda-lsd-cpu.json").write_text(json.dumps({**payload, "quick": False}))
    assert methods.update_readme(readme, measured) == ["uda-lsd"]
    text = readme.read_text()
    lsd_block = text.split("<!-- methods:uda-lsd begin -->")[1].split("<!-- methods:uda-lsd end -->")[0]
    assert "old text" not in lsd_block and "| LSD-seg | method | 2 |" in lsd_block
    assert "do not edit by hand" in lsd_block
    assert "<!-- methods:semi begin -->\nold text\n<!-- methods:semi end -->" in text
    assert text.startswith("# title\n") and text.endswith("tail\n")
    # A lane with a held-out and a tuning result: the held-out one is written, whichever file sorts last.
    for name, held_out in (("uda-lsd-cpu.json", True), ("uda-lsd-cpu-tuning.json", False)):
        (measured / name).write_text(json.dumps({**payload, "quick": False, "held_out": held_out,
                                                 "git_sha": "tuning" if not held_out else "held"}))  # fmt: skip
    methods.update_readme(readme, measured)
    assert "git `held`" in readme.read_text() and "git `tuning`" not in readme.read_text()


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["--dry-run", "--lane", "mm", "--seeds", "1-2", "--data-seeds", "5", "--runs", str(runs), "--out", str(runs)]
    assert methods.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.startswith("OMP_NUM_THREADS=1 ")]
    assert len(commands) == 2 * 5 + 1 and all("segadapt train mm_demo_" in line for line in commands)  # ceiling once
    assert sum(line.endswith(": to run") for line in lines) == 11 and not runs.exists()
    assert lines[-1] == "# cost: 11 of 11 runs to run; no measured result of this lane in the results folder to price"
    with pytest.raises(SystemExit):
        methods.main(["--lane", "nope"])


def test_dry_run_prices_the_runs_to_run_at_the_lanes_measured_seconds_per_arm(tmp_path, capsys):
    """The forecast: every run not done, at the mean seconds of its arm in the lane's last result (a probed arm at its
    arm's), scaled by the run's stop_step over the timed one where the result recorded it, divided over --jobs; an arm
    the result did not time is counted, not priced."""
    from segadapt import config

    out = tmp_path / "results"
    out.mkdir()
    per_arm = {"scratch": 60.0, "colorization": 80.0, "mixmatch": 100.0, "full": 40.0, "colorize": 30.0}
    payload = _lane_payload("mm", 1.0, 5, 100.0, 100.0)
    payload["timing"]["per_arm"] = {key: {"runs": 10, "mean_s": value} for key, value in per_arm.items()}
    stop = config.load("mm_demo_finetune").schedule.stop_step
    payload["timing"]["per_arm"]["mixmatch"]["steps"] = stop // 2  # timed at half the recipe's schedule: costs 2x
    payload["timing"]["per_arm"]["full"]["steps"] = stop  # same schedule: unscaled
    payload["timestamp"] = "T"
    (out / "mm-cpu.json").write_text(json.dumps(payload))
    argv = ["--dry-run", "--lane", "mm", "--seeds", "1-2", "--data-seeds", "5", "--runs", str(tmp_path / "runs"),
            "--out", str(out), "--jobs", "2", "--probe", "mixmatch:optim.lr=0.01", "--tag", "lr"]  # fmt: skip
    assert methods.main(argv) == 0
    # two pairs (the ceiling once: one run); mixmatch@lr as mixmatch, at twice its steps
    core = 2 * (sum(per_arm.values()) - per_arm["full"] + per_arm["mixmatch"]) + per_arm["full"]
    assert stop % 2 == 0 and capsys.readouterr().out.splitlines()[-1] == (
        f"# cost: 11 of 11 runs to run: ~{core:.0f} core-s, ~{core / 2 / 60:.0f} min with --jobs 2, at the mean "
        "seconds per arm (per step where it differs) of the T result (AVX512+AMX, --jobs 2); 2 runs of arms it did "
        "not time"
    )


def test_timing_records_each_arms_stop_step_for_the_forecast(tmp_path):
    jobs = methods.plan(methods.LANES["uda-lsd"], [1], [1], tmp_path)
    (jobs[0].run_dir).mkdir(parents=True)
    (jobs[0].run_dir / "protocol.json").write_text(json.dumps({"elapsed_s": 12.5}))
    arms = methods.timing(methods.LANES["uda-lsd"], jobs)["per_arm"]
    assert arms[jobs[0].arm.key] == {"runs": 1, "mean_s": 12.5, "total_s": 12.5, "steps": 900}
    assert {arm["steps"] for arm in arms.values()} == {900} and arms[jobs[1].arm.key]["mean_s"] is None


def test_a_killed_protocol_stops_its_runs(tmp_path, monkeypatch):
    """SIGTERM to `bench methods` (how a nohup'd protocol is stopped: a background `&` ignores SIGINT) ends its
    running trainings too, instead of leaving them to outlive it, and the protocol exits with 143."""
    import os
    import signal
    import subprocess
    import threading

    started = []

    def fake_start(job, launch):
        started.append(subprocess.Popen(["sleep", "60"]))
        return started[-1]

    monkeypatch.setattr(methods, "_start", fake_start)
    jobs = [j for j in methods.plan(methods.LANES["uda-lsd"], [1], [1], tmp_path) if j.arm.key != "oracle"]
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(SystemExit) as stopped:
        methods.execute(jobs, parallel=2, log=lambda line: None)
    timer.join()
    assert stopped.value.code == 143 and len(started) == 2
    assert all(process.poll() == -signal.SIGTERM for process in started)  # terminated, not left running
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_a_forked_run_trains_on_one_thread_what_its_own_process_trains(tmp_path):
    """--launch fork (the default) runs `segadapt.cli.main` in a child of a server that imported the engine once,
    instead of a `python -m segadapt train` process (--launch subprocess). Same run, both ways: the weights, the
    optimizer state and the evaluation are bitwise equal, both trained on one thread (the run's own count in
    results.json, copied to protocol.json), and a run that fails returns its exit status and message either way."""
    import torch

    outcome = {}
    for launch in ("fork", "subprocess"):
        jobs = methods.plan(methods.LANES["uda-lsd"], [1], [1], tmp_path / launch, quick=True,
                            extra=["data.synthshift.count=24"])  # fmt: skip
        (job,) = [job for job in jobs if job.arm.key == "lsdseg"]
        methods.ensure_data([job])
        assert methods.execute([job], log=lambda line: None, launch=launch) == {str(job.run_dir): "ran"}
        protocol = json.loads((job.run_dir / "protocol.json").read_text())
        assert (protocol["launch"], protocol["threads"], protocol["returncode"]) == (launch, 1, 0)
        held = config.flatten(torch.load(job.run_dir / "checkpoints" / "step_0000002.pt", weights_only=True))
        weights = {key: value for key, value in held.items() if isinstance(value, torch.Tensor)}
        outcome[launch] = weights, json.loads((job.run_dir / "results.json").read_text())["last"]

        overrides = [*job.overrides, "model.width=0"]
        bad = dataclasses.replace(job, run_dir=job.run_dir.with_name("bad"), overrides=overrides)
        assert methods.execute([bad], log=lambda line: None, launch=launch) == {str(bad.run_dir): "failed"}
        assert json.loads((bad.run_dir / "protocol.json").read_text())["returncode"] == 2
        log = (bad.run_dir / "train.log").read_text()
        assert "segadapt: error:" in log and "key 'model.width': expected int >= 1, got 0" in log
    (fork_weights, fork_eval), (own_weights, own_eval) = outcome["fork"], outcome["subprocess"]
    assert fork_weights.keys() == own_weights.keys() and len(fork_weights) > 100
    assert [key for key in fork_weights if not torch.equal(fork_weights[key], own_weights[key])] == []
    assert (fork_eval["confusion"], fork_eval["miou"]) == (own_eval["confusion"], own_eval["miou"])


def test_a_key_added_to_the_config_at_its_default_does_not_make_a_run_stale(tmp_path):
    """config.json from before a key existed (here train.matmul_precision) still counts as done when the protocol
    would run the key at its default: the run did what the default does; so does a change to a stream neither side
    reads. Any other difference is stale, named."""
    expected = json.loads(json.dumps(config.to_dict(config.load("demo", ['start.recipe=""', "start.set=[]"]))))
    held = json.loads(json.dumps(expected))
    del held["train"]["matmul_precision"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(held))
    (run_dir / "results.json").write_text("{}")
    arm = methods.Arm("sourceonly", "source-only", "baseline", "demo")
    job = methods.Job("uda-adaptseg", arm, 0, 1, run_dir, [], expected)
    assert methods.run_state(job) == "done"
    job.expected = {**expected, "train": {**expected["train"], "matmul_precision": "high"}}
    assert methods.run_state(job) == "stale (settings changed: train.matmul_precision)"
    job.expected = {**expected, "train": {**expected["train"], "seed": 7}}
    assert methods.run_state(job) == "stale (settings changed: train.seed)"
    # The other way round: a run whose code already wrote a key (at its default) the plan's code does not know yet
    # (start.recipe, which reached the engine while a lane ran) is done; at another value it is stale.
    (run_dir / "config.json").write_text(json.dumps(expected))
    job.expected = {key: value for key, value in expected.items() if key != "start"}
    assert methods.run_state(job) == "done"
    (run_dir / "config.json").write_text(json.dumps({**expected, "start": {"recipe": "demo", "set": []}}))
    assert methods.run_state(job) == "stale (settings changed: start.recipe)"

    # A stream neither side reads (demo has no labelled stream: dataset "") changes nothing the run did: a run from
    # a `--set data.labeled.resize=...` that reached every recipe of a lane is done; the same change to a stream it
    # reads is stale.
    def resized(stream: str) -> dict:
        data = {**expected["data"], stream: {**expected["data"][stream], "resize": [96, 48]}}
        return {**expected, "data": data}

    assert (expected["data"]["labeled"]["dataset"], expected["data"]["source"]["dataset"]) == ("", "gta5")
    job.expected = expected
    (run_dir / "config.json").write_text(json.dumps(resized("labeled")))
    assert methods.run_state(job) == "done"
    (run_dir / "config.json").write_text(json.dumps(resized("source")))
    assert methods.run_state(job) == "stale (settings changed: data.source.resize)"


def test_a_probe_overrides_one_arm_in_its_own_run_directories(tmp_path, capsys):
    """--probe ARM:KEY=VALUE --tag T: only that arm gets the override and runs as ARM@T; every other arm keeps its
    run directory (finished runs are reused, none is removed); an arm starting from a probed stage is probed too."""
    runs = tmp_path / "runs"
    argv = ["--dry-run", "--lane", "semi", "--seeds", "1", "--data-seeds", "0", "--runs", str(runs),
            "--probe", "u2pl:method.unsup_weight=0.25", "--tag", "w025"]  # fmt: skip
    assert methods.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    states = [line for line in lines if line.startswith("# ") and not line.startswith("# cost: ")]
    assert "# semi/u2pl@w025/d0-s1: to run" in states and "# semi/supervised-v3plus/d0-s1: to run" in states
    commands = [line for line in lines if line.startswith("OMP_NUM_THREADS=1 ")]
    probed = [line for line in commands if "method.unsup_weight=0.25" in line]
    assert len(probed) == 1 and "semi/u2pl@w025/d0-s1" in probed[0] and len(commands) == 6
    lane = methods.probe_lane(methods.LANES["semi-init"], ["init-v3plus:optim.lr=0.02"], "lr2")
    keys = {arm.key: arm for arm in lane.arms()}
    assert {"init-v3plus@lr2", "u2pl@lr2", "supervised-v3plus@lr2", "init-v2", "advsemiseg"} <= set(keys)
    assert keys["u2pl@lr2"].start_from == "init-v3plus@lr2" and keys["advsemiseg"].start_from == "init-v2"
    assert (
        keys["init-v3plus@lr2"].overrides[-1] == "optim.lr=0.02" and "optim.lr=0.02" not in keys["u2pl@lr2"].overrides
    )
    # M&M is also compared with colorization: probing colorization, that comparison follows it to colorization@t
    mm = {arm.key: arm for arm in methods.probe_lane(methods.LANES["mm"], ["colorization:optim.lr=0.02"], "t").arms()}
    assert mm["mixmatch"].versus == ("colorization@t",) and "colorization@t" in mm
    with pytest.raises(SystemExit):
        methods.main(["--dry-run", "--lane", "semi", "--probe", "nope:method.x=1", "--tag", "t"])
    with pytest.raises(SystemExit):
        methods.main(["--dry-run", "--lane", "semi", "--probe", "u2pl:method.unsup_weight=0.25"])  # no --tag


def test_table_cuts_a_lane_to_one_table_and_the_stages_its_rows_start_from(tmp_path, capsys):
    """--table ARM: only the tables holding row ARM, with their baseline and ceiling, and only the stages those rows
    start from, a stage's own start included (M&M's stage starts from colorization); the rest of the lane is not
    planned at all."""
    lane = methods.select_tables(methods.LANES["semi-init"], ["u2pl"])
    assert [arm.key for arm in lane.arms()] == ["init-v3plus", "supervised-v3plus", "u2pl", "full-v3plus"]
    mm = methods.select_tables(methods.LANES["mm"], ["mixmatch"])
    assert [stage.key for stage in mm.stages] == ["colorize", "mixmatch-stage"]
    assert [arm.key for arm in methods.select_tables(methods.LANES["semi"], ["full-v2"]).arms()] == [
        "supervised-v2", "advsemiseg", "full-v2"]  # fmt: skip
    assert methods.select_tables(methods.LANES["semi"], ["u2pl", "advsemiseg"]).tables == methods.LANES["semi"].tables
    with pytest.raises(ValueError, match="--table init-v2: no table of lane semi-init has that row"):
        methods.select_tables(methods.LANES["semi-init"], ["init-v2"])  # a stage is no table's row
    argv = ["--dry-run", "--lane", "semi-init", "--seeds", "1", "--data-seeds", "0", "--runs", str(tmp_path),
            "--table", "u2pl", "--probe", "u2pl:method.drop_percent=50.0", "--tag", "dp50"]  # fmt: skip
    assert methods.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    states = [line for line in lines if line.startswith("# ") and not line.startswith("# cost: ")]
    assert states == [f"# semi-init/{key}/d0-s{seed}: to run" for key, seed in
                      (("init-v3plus", 0), ("supervised-v3plus", 1), ("u2pl@dp50", 1), ("full-v3plus", 0))]  # fmt: skip
    with pytest.raises(SystemExit):
        methods.main(["--dry-run", "--lane", "semi-init", "--table", "nope"])


def test_per_pair_starts_train_each_pairs_own_start_in_a_lane_of_their_own(tmp_path):
    """--starts per-pair: every stage runs once per pair at the pair's training seed (d<D>-s<S>, not d<D>-s0), each
    run starts from its own pair's stage, and the lane is LANE-pp, so no shared-start run directory is reused or
    removed; uda-init's stage keeps its separate draw D + 1000. The ceiling, trained once per data seed at seed 0,
    gets a start of its own at seed 0 (no pair trains one)."""
    lane = methods.per_pair_starts(methods.select_tables(methods.LANES["semi-init"], ["advsemiseg"]))
    assert lane.name == "semi-init-pp" and not any(stage.once_per_data_seed for stage in lane.stages)
    jobs = methods.plan(lane, [1, 2], [1], tmp_path)
    stages = {job.seed: job for job in jobs if job.arm.role == "stage"}
    assert sorted(stages) == [0, 1, 2] and all(job.run_dir.parent.parent.name == "semi-init-pp" for job in jobs)
    assert {job.seed for job in jobs if job.arm.role == "ceiling"} == {0}
    for job in jobs:
        if job.arm.role != "stage":
            want = str(methods.final_checkpoint(stages[job.seed]))
            assert job.needs == str(stages[job.seed].run_dir) and job.expected["model"]["pretrained"] == want
    assert stages[1].expected["train"]["seed"] == 1 and stages[2].expected["train"]["seed"] == 2
    (pool,) = methods.per_pair_starts(methods.LANES["uda-init"]).stages
    starts = [j for j in methods.plan(methods.per_pair_starts(methods.LANES["uda-init"]), [3], [1], tmp_path)
              if j.arm.key == pool.key]  # fmt: skip
    assert [(job.seed, job.expected["data"]["synthshift"]["seed"]) for job in starts] == [
        (3, 1 + methods.POOL_OFFSET), (0, 1 + methods.POOL_OFFSET)]  # the pair's start, the oracle's  # fmt: skip
    with pytest.raises(ValueError, match="--starts per-pair: lane semi has no pretrained start"):
        methods.per_pair_starts(methods.LANES["semi"])


def test_probe_results_never_fill_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- methods:semi begin -->\nold\n<!-- methods:semi end -->\n")
    payload = {"bench": "methods", "lane": "semi", "quick": False, "held_out": True, "probe": {"tag": "w025"}}
    (tmp_path / "semi-cpu-w025.json").write_text(json.dumps(payload))
    assert methods.update_readme(readme, tmp_path) == [] and "old" in readme.read_text()
    (tmp_path / "semi-cpu-w025.json").write_text(json.dumps({**payload, "probe": None, "only": ["u2pl"]}))
    assert methods.update_readme(readme, tmp_path) == [] and "old" in readme.read_text()  # a cut lane neither
    whole = {**payload, "probe": None, "tables": [], "seeds": [1], "data_seeds": [1], "command": "python -m ..."}
    (tmp_path / "semi-cpu-w025.json").write_text(json.dumps(whole))  # the same lane, whole: it does fill the block
    assert methods.update_readme(readme, tmp_path) == ["semi"] and "old" not in readme.read_text()


def _lane_payload(lane, diff, wins, wall, train, versus=None, status=None, held_out=True):
    stats = {"n": 10, "mean": diff, "ci95": [diff - 1.0, diff + 1.0], "wins": wins}
    rows = [{"key": "base", "role": "baseline", "vs_baseline": None},
            {"key": "m", "role": "method", "vs_baseline": stats, "versus": versus or {}},
            {"key": "stage", "role": "stage"}]  # fmt: skip
    return {"bench": "methods", "lane": lane, "quick": False, "held_out": held_out, "probe": None, "only": None,
            "seeds": [1, 2, 3, 4, 5], "data_seeds": [1, 2], "jobs": 2, "command": f"python -m ... --lane {lane}",
            "git_sha": "abc", "cpu_capability": "AVX512", "cpu_amx": True, "status": status or {"ran": 40},
            "tables": [{"baseline": "base", "rows": rows}],
            "timing": {"wall_s": wall, "train_s_total": train}}  # fmt: skip


def test_comparison_block_pairs_each_lanes_methods_and_costs_across_two_result_folders(tmp_path):
    """A README `methods-vs:FOLDER` block: per method row the paired difference of both folders' held-out results,
    per lane the training core-seconds a pair in both, the other run's wall and its whole lane's training seconds
    over --jobs, each summed over the lanes (hours), and the commit of each lane's result."""
    other = tmp_path / "bf16"
    other.mkdir()
    versus = {"base2": {"n": 10, "mean": -0.5, "ci95": [-1.0, 0.0], "wins": 3}}
    (tmp_path / "mm-cpu.json").write_text(json.dumps(_lane_payload("mm", 4.5, 10, 4000.0, 4000.0, versus)))
    (tmp_path / "uda-lsd-cpu.json").write_text(json.dumps(_lane_payload("uda-lsd", 5.4, 10, 3000.0, 3480.0)))
    (other / "mm-cpu.json").write_text(json.dumps(_lane_payload("mm", 3.0, 9, 900.0, 1800.0, versus)))
    (other / "uda-lsd-cpu.json").write_text(
        json.dumps(_lane_payload("uda-lsd", 2.0, 7, 2700.0, 1700.0, status={"done": 3, "ran": 27}))
    )
    (other / "semi-cpu-tuning.json").write_text(json.dumps(_lane_payload("semi", 9.0, 3, 1.0, 1.0, held_out=False)))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- methods-vs:bf16 begin -->\nold\n<!-- methods-vs:bf16 end -->\nb\n")
    assert methods.update_readme(readme, tmp_path) == ["vs:bf16"]
    text = readme.read_text()
    assert text.startswith("a\n<!-- methods-vs:bf16 begin -->\n") and text.endswith("<!-- methods-vs:bf16 end -->\nb\n")
    rows = [line for line in text.splitlines() if line.startswith("| uda-lsd |") or line.startswith("| mm |")]
    assert rows == [  # LANES order (uda-lsd before mm); the tuning-only semi lane has no row
        "| uda-lsd | m - base | +5.40 [+4.40, +6.40], 10/10 | +2.00 [+1.00, +3.00], 7/10 |",
        "| mm | m - base | +4.50 [+3.50, +5.50], 10/10 | +3.00 [+2.00, +4.00], 9/10 |",
        "| mm | m - base2 | -0.50 [-1.00, +0.00], 3/10 | -0.50 [-1.00, +0.00], 3/10 |",
        "| uda-lsd | 10 | 348 (AVX512+AMX) | 170 (AVX512+AMX) | 45.0 min, 2 (resumed: 3 runs done before) | 14.2 min "
        "| `abc` |",
        "| mm | 10 | 400 (AVX512+AMX) | 180 (AVX512+AMX) | 15.0 min, 2 | 15.0 min | `abc` |",
    ]
    # Sum of the calls' walls, and of each whole lane's training seconds over its jobs (a resumed lane in one call)
    assert "| all 2 | | | | **1.00 h** | **0.49 h** | |" in text
    # The lanes' commands differ only in --lane: said once (the first line of the block)
    assert text.splitlines()[2].startswith("`bench/results/methods/bf16/` (`python -m ... --lane LANE`, LANE each lane")
    payloads = {"a": {"command": "bench --lane a --jobs 2"}, "b": {"command": "bench --lane=x,b --jobs 2"},
                "c": {"command": "bench --lane c --jobs 1"}}  # fmt: skip
    assert methods.lane_commands(payloads, ["a", "b"]) == "`bench --lane LANE --jobs 2`, LANE each lane below"
    assert methods.lane_commands(payloads, ["a", "c"]) == "a: `bench --lane a --jobs 2`; c: `bench --lane c --jobs 1`"
    assert methods._cpu_short({"cpu_capability": None}) == "CPU not recorded"  # a result from before env_stamp did
    (other / "mm-cpu.json").unlink()
    (other / "uda-lsd-cpu.json").unlink()
    assert methods.update_readme(readme, tmp_path) == ["vs:bf16"]  # the semi tuning result alone: said, not a table
    assert "no held-out lane in both" in readme.read_text()


def test_valnoise_miou_is_the_evaluations_and_a_paired_bootstrap_of_equal_models_is_zero():
    import torch

    from segadapt.bench import valnoise
    from segadapt.evaluate import summarize

    rng = np.random.default_rng(0)
    confusions = rng.integers(0, 50, size=(6, 5, 5))
    confusions[:, 3, :] = confusions[:, :, 3] = 0  # a class absent from labels and predictions: NaN, left out
    for confusion in (*confusions, confusions.sum(axis=0)):
        assert valnoise.miou(confusion) == pytest.approx(summarize(torch.from_numpy(confusion), 5)["miou"], abs=1e-12)
    same = valnoise.bootstrap_difference(confusions, confusions.copy(), resamples=50)
    assert (same["difference"], same["bootstrap_sd"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0, 0.0)
    better = confusions.copy()
    better[:, 0, 0] += 40  # more hits of class 0 on every image: better on every resample
    shifted = valnoise.bootstrap_difference(better, confusions, resamples=50)
    assert shifted["difference"] > 0 and shifted["ci_low"] > 0 and shifted["bootstrap_sd"] > 0
    with pytest.raises(ValueError, match="scored 6 and 5 val images"):
        valnoise.bootstrap_difference(confusions, confusions[:5], resamples=5)


def test_valnoise_scores_u2pls_ema_teacher_as_the_runs_own_evaluation_did(tmp_path):
    """After its supervised start U2PL's run evaluates the EMA teacher (U2PL's eval_model()), not the student whose
    weights the checkpoint's "model" entry holds: valnoise must rebuild the method and score the teacher, so that its
    per-image confusions add up to the run's final mIoU. The student is scored too, to show the two differ here (else
    this test could not tell them apart)."""
    from segadapt import checkpoint as checkpoints
    from segadapt import cli
    from segadapt.bench import valnoise
    from segadapt.data.torch_loader import eval_samples
    from segadapt.evaluate import evaluate
    from segadapt.models import build_segmenter

    synth, run_dir = tmp_path / "synth", tmp_path / "u2pl"
    sets = {
        "model.width": "8",
        "data.synthshift.out": f'"{synth}"',
        "data.synthshift.count": "16",
        "data.synthshift.size": "[64, 32]",
        **{f"data.{s}.root": f'"{synth / "cityscapes"}"' for s in ("labeled", "unlabeled", "val")},
        **{f"data.{s}.resize": "[64, 32]" for s in ("labeled", "unlabeled")},
        **{f"data.{s}.fraction": "0.5" for s in ("labeled", "unlabeled")},
        "data.num_workers": "0",
        "eval.input_size": "[64, 32]",
        "method.sup_only_steps": "1",  # steps 2-3 train the student on the teacher's labels, the teacher by EMA
        "method.teacher_copy_steps": "1",
        "method.steps_per_epoch": "2",
        "schedule.total_steps": "3",
        "schedule.stop_step": "3",
        "train.eval_every": "0",
        "train.checkpoint_every": "0",
        "train.progress": "false",
        "train.tensorboard": "false",
        "train.compare_methods": "[]",
        "train.run_dir": f'"{run_dir}"',
        "start.recipe": '""',
    }
    assert cli.main(["train", "semi_demo_u2pl", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]) == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in lines if row["kind"] == "eval"][-1]
    checkpoint = run_dir / "checkpoints" / "step_0000003.pt"
    assert final["step"] == 3 and checkpoint.is_file()

    teacher = valnoise.per_image_confusions(run_dir, checkpoint)
    assert teacher.shape[0] == final["images"] > 1
    assert valnoise.miou(teacher.sum(axis=0)) == pytest.approx(final["miou"], abs=1e-9)

    cfg = config.load_dict(json.loads((run_dir / "config.json").read_text()), "config.json")
    student = build_segmenter(config.replace(cfg.model, pretrained="", compile="off"))
    student.load_state_dict(checkpoints.load(checkpoint)["models"]["model"])
    eval_cfg = config.replace(cfg.eval, save_predictions=0)
    scored = evaluate(student.eval(), list(eval_samples(cfg.data.val, cfg.eval.input_size)), cfg.data, eval_cfg,
                      cfg.model.num_classes, "cpu")  # fmt: skip
    assert not np.array_equal(np.asarray(scored["confusion"]), teacher.sum(axis=0))


def test_the_demos_start_is_the_uda_init_lanes_stage_so_the_lane_measures_the_demo(tmp_path):
    """Issue 18 goal 5 is measured by `--lane uda-init`: at data seed 0 the lane's init-pool stage must train what
    `./recipes/run.sh demo`'s [start] trains (source-only, seed 0, draw 1000), and the lane's arms what the demo trains
    from it; only paths and logging differ. Without its own [start] (the protocol's runs clear it) the demo is the
    from-scratch uda-adaptseg lane."""
    demo = config.load("demo")
    assert demo.start.recipe == "demo" and demo.model.pretrained == ""
    start = config.to_dict(config.load(demo.start.recipe, list(demo.start.set)))
    jobs = methods.plan(methods.LANES["uda-init"], [1], [0], tmp_path)
    (stage,) = [job for job in jobs if job.arm.role == "stage"]
    (multi,) = [job for job in jobs if job.arm.key == "adaptsegnet"]
    logging_and_paths = {"train.run_dir", "train.progress", "train.tensorboard", "data.synthshift.out",
                         "data.source.root", "data.target.root", "data.val.root", "model.pretrained"}  # fmt: skip
    start_flat, stage_flat = config.flatten(start), config.flatten(stage.expected)
    differ = {k for k in {*start_flat, *stage_flat} if start_flat.get(k) != stage_flat.get(k)}
    assert differ <= logging_and_paths, differ
    assert start_flat["data.synthshift.seed"] == 1000 and start_flat["train.seed"] == 0
    demo_flat = config.flatten(config.to_dict(config.replace(demo, **{"train.seed": 1}, start=config.Start())))
    multi_flat = config.flatten(multi.expected)
    differ = {k for k in {*demo_flat, *multi_flat} if demo_flat.get(k) != multi_flat.get(k)}
    assert differ <= logging_and_paths | {"train.compare_methods"}, differ
    assert multi_flat["model.pretrained"] == str(methods.final_checkpoint(stage))
    scratch = [job for job in methods.plan(methods.LANES["uda-adaptseg"], [1], [0], tmp_path)]
    assert all(
        job.expected["start"] == {"recipe": "", "set": []} and not job.expected["model"]["pretrained"]
        for job in scratch
    )


def test_ceilings_per_pair_is_the_protocol_the_earlier_results_were_made_with(tmp_path, capsys):
    """--ceilings per-pair trains each ceiling at every pair's training seed again (as the committed results before
    the once-per-data-seed ceiling were made), nothing else changes; the semi-curve's all-labels point, paired with
    the share below it, is per pair in both."""
    once = methods.plan(methods.LANES["semi"], [1, 2], [3], tmp_path)
    lane = methods.per_pair_ceilings(methods.LANES["semi"])
    each = methods.plan(lane, [1, 2], [3], tmp_path)
    assert (methods.ceilings_mode(methods.LANES["semi"]), methods.ceilings_mode(lane)) == ("once", "per-pair")
    assert sorted(job.pair for job in once if job.arm.role == "ceiling") == ["d3-s0", "d3-s0"]
    assert sorted(job.pair for job in each if job.arm.role == "ceiling") == ["d3-s1", "d3-s1", "d3-s2", "d3-s2"]
    assert [job.run_dir for job in once if job.arm.role != "ceiling"] == [
        job.run_dir for job in each if job.arm.role != "ceiling"
    ]
    assert methods.ceilings_mode(methods.LANES["semi-curve"]) == "per-pair"
    argv = ["--dry-run", "--lane", "mm", "--seeds", "1-2", "--data-seeds", "5", "--runs", str(tmp_path / "r"),
            "--ceilings", "per-pair"]  # fmt: skip
    assert methods.main(argv) == 0
    states = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# mm/full/")]
    assert states == ["# mm/full/d5-s1: to run", "# mm/full/d5-s2: to run"]


def test_a_once_per_data_seed_ceiling_is_paired_with_every_pair_of_its_data_seed():
    """By hand: two data seeds, two pairs each; the ceiling ran once per data seed (d<D>-s0). Its own row counts its
    two runs; its difference to the baseline and the method's share of the gap read each pair against its data
    seed's ceiling: gap = mean(c_D - b) over the four pairs."""

    def run(value):
        return {"last": value, "best": value + 1.0}

    lane = methods.Lane("t", "", (methods.Table("t", (
        methods.Arm("base", "b", "baseline", "demo"), methods.Arm("m", "m", "method", "demo"),
        methods.Arm("top", "c", "ceiling", "demo", once_per_data_seed=True))),))  # fmt: skip
    base = {"d1-s1": 10.0, "d1-s2": 12.0, "d2-s1": 20.0, "d2-s2": 22.0}
    method = {"d1-s1": 13.0, "d1-s2": 13.0, "d2-s1": 21.0, "d2-s2": 25.0}
    runs = {"base": {p: run(v) for p, v in base.items()}, "m": {p: run(v) for p, v in method.items()},
            "top": {"d1-s0": run(30.0), "d2-s0": run(40.0)}}  # fmt: skip
    jobs = [SimpleNamespace(arm=arm, pair=pair) for arm in lane.arms() for pair in runs[arm.key]]
    with patch.object(methods, "read_run", lambda job: runs[job.arm.key][job.pair]):
        (table,) = methods.summarize(lane, jobs)
    _, row_m, row_c = table["rows"]
    assert row_c["last"]["n"] == 2 and row_c["last"]["mean"] == 35.0 and row_c["once_per_data_seed"]
    differences = [30 - 10, 30 - 12, 40 - 20, 40 - 22]
    assert row_c["vs_baseline"]["n"] == 4 and row_c["vs_baseline"]["mean"] == sum(differences) / 4
    assert row_c["vs_baseline_best"]["mean"] == sum(differences) / 4  # best = last + 1 for every run
    assert row_m["gap_closed"] == pytest.approx((3 + 1 + 1 + 3) / sum(differences))
    assert "once_per_data_seed" not in row_m
