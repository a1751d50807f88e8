"""Training ladder harness on CPU at a toy size: JSON schema, warm-up exclusion, row a == row b losses, report."""

import json
import time

import pytest
import torch

import segadapt.bench.__main__ as bench_main
from segadapt.bench import train as bench_train
from segadapt.train import train_step

ENV_KEYS = {"device_name", "torch", "triton", "dali", "cuda", "git_sha", "timestamp"}
PHASE_KEYS = [f"{phase}_ms" for phase in bench_train.PHASES]


@pytest.fixture(scope="module")
def toy_overrides(tmp_path_factory):
    """demo recipe shrunk: width 8, 64x32 inputs, batch 2, an 8-scene synthshift set in a private folder."""
    data = tmp_path_factory.mktemp("synthshift")
    overrides = ["model.width=8", "data.num_workers=0", "data.synthshift.count=8", "data.synthshift.size=[64,32]"]
    overrides += [f"data.synthshift.out={data}", f"data.source.root={data / 'gta5'}"]
    overrides += [f"data.target.root={data / 'cityscapes'}", "train.device=cpu"]
    for stream in ("source", "target"):
        overrides += [f"data.{stream}.resize=[64,32]", f"data.{stream}.batch_size=2"]
    return overrides


def _argv(overrides, out, rows="a,b,e"):
    argv = ["demo", "--warmup", "1", "--steps", "2", "--profile-steps", "1", "--rows", rows, "--out", str(out)]
    return argv + [item for override in overrides for item in ("--set", override)]


def test_train_bench_json_schema(tmp_path, toy_overrides):
    payload = bench_train.main(_argv(toy_overrides, tmp_path))
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1] == files[0][:-5] + ".md", files
    name = files[0]
    assert name.startswith("train-demo-") and f"pt{torch.__version__.split('+')[0]}" in name and "triton" in name
    assert (payload["git_sha"] or "none")[:7] in name
    assert json.loads((tmp_path / name).read_text()) == json.loads(json.dumps(payload, default=str))
    assert ENV_KEYS <= set(payload), f"missing env keys {ENV_KEYS - set(payload)}"
    assert (payload["bench"], payload["recipe"], payload["warmup"], payload["steps"]) == ("train", "demo", 1, 2)
    assert payload["window"] == "warm-up 1 steps, timed 2 steps, profiled 1 steps"
    rows = {row["row"]: row for row in payload["results"]}
    assert list(rows) == ["a", "b", "e"]
    assert "TRITON_INTERPRET" in rows["e"]["skipped"] and rows["e"]["images_per_s"] is None
    for letter in ("a", "b"):
        row = rows[letter]
        assert row["skipped"] is None and row["images_per_step"] == 4 and row["peak_memory_gib"] is None
        assert row["images_per_s"] == pytest.approx(4 * 1000 / row["ms_per_step"])
        for key in ("forward_ms", "backward_ms", "discriminator_ms", "optimizer_ms", "data_ms"):
            assert row[key] > 0, f"[{letter}] {key} = {row[key]}: the phase was not attributed"
        assert row["other_ms"] >= 0
        assert set(row["last_losses"]) == {"loss/seg", "loss/adv", "loss/d"}  # diag/* curves are not losses
    assert rows["a"]["speedup"] == 1.0
    assert rows["b"]["speedup"] == pytest.approx(rows["b"]["images_per_s"] / rows["a"]["images_per_s"])
    assert rows["a"]["settings"]["host_roundtrips"] and not rows["b"]["settings"]["host_roundtrips"]
    assert "| a |" in (tmp_path / files[1]).read_text()


def test_time_steps_excludes_warmup():
    """The first 3 calls sleep 50 ms (compilation stand-in); with warmup=3 none of them may be timed."""
    calls, window = [], []

    def step(index):
        calls.append(index)
        if len(calls) <= 3:
            time.sleep(0.05)
        return index

    seconds, last = bench_train.time_steps(step, 3, 5, lambda: None, window_start=lambda: window.append(len(calls)))
    assert calls == list(range(8)) and last == 7, "warm-up then timed calls, indices continuing"
    assert window == [3], "the window must open after exactly the warm-up calls"
    assert seconds < 0.03, f"a warm-up sleep leaked into the timed window: {seconds * 1e3:.1f} ms"


def test_time_steps_counts_timed_calls():
    """Control for the test above: sleeps inside the timed window must show up."""
    seconds, _ = bench_train.time_steps(lambda index: time.sleep(0.02), 0, 3, lambda: None)
    assert seconds >= 0.06


def test_ladder_accumulates_only_rows_that_ran():
    plan = {row["row"]: row for row in bench_train.ladder(["a", "c", "e", "f"], torch.device("cpu"))}
    assert plan["a"]["settings"] == bench_train.BASE_SETTINGS
    assert plan["c"]["settings"]["precision"] == "bf16" and plan["c"]["settings"]["channels_last"] is False
    assert plan["e"]["skipped"] and plan["f"]["settings"]["kernels"] == "torch"
    skipped = bench_train.ladder(["a", "f"], torch.device("cpu"), skip={"d": "too slow here"})
    assert [(row["row"], row["skipped"]) for row in skipped][:2] == [("a", None), ("d", "too slow here")]
    assert skipped[2]["settings"]["compile"] == "off", "a skipped row's switch must not reach later rows"
    with pytest.raises(SystemExit):
        bench_train.parse_args(["demo", "--rows", "a,z"])


def _losses(cfg, plan, steps=2):
    """Losses of `steps` steps of a row, and the memory formats of the images the segmenter saw."""
    layouts = []
    with bench_train.kernel_mode(plan["settings"]["kernels"]):
        run = bench_train.build_row(bench_train.row_config(cfg, plan["settings"]))
        hook = run.method.net.register_forward_pre_hook(lambda module, args: layouts.append(args[0].is_contiguous()))
        losses = [train_step(run, index) for index in range(steps)]
        hook.remove()
        run.streams.close()
    return losses, layouts, run


def test_row_a_matches_row_b_losses(toy_overrides):
    """Equal work: the official-style loop (NCHW, per-step host reads) and row b give the same fp32 losses."""
    cfg = bench_train.bench_config("demo", toy_overrides)
    plan_a, plan_b = bench_train.ladder(["a", "b"], torch.device("cpu"))
    losses_a, layouts_a, run_a = _losses(cfg, plan_a)
    losses_b, layouts_b, run_b = _losses(cfg, plan_b)
    assert run_a.cfg.train.official_host_roundtrips and not run_b.cfg.train.official_host_roundtrips
    assert run_a.ctx.amp_dtype is None and run_b.ctx.amp_dtype is None, "both rows must run in fp32"
    assert all(layouts_a) and not any(layouts_b), "row a must feed NCHW images, row b channels-last"
    for step, (got, want) in enumerate(zip(losses_a, losses_b, strict=True)):
        assert set(got) == set(want)
        assert {k for k in got if k.startswith("loss/")} == {"loss/seg", "loss/adv", "loss/d"}
        for key in got:  # the losses and the diag/* curves (D accuracies, target accuracy) alike
            torch.testing.assert_close(
                got[key], want[key], rtol=1e-4, atol=1e-6, msg=lambda m, s=step, k=key: f"[{s}/{k}] {m}"
            )


def test_report_renders_page_and_chart(tmp_path):
    rows = [
        {"row": "a", "description": "official", "images_per_s": 10.0, "speedup": 1.0, "skipped": None},
        {"row": "b", "description": "+ cl", "images_per_s": 25.0, "speedup": 2.5, "skipped": None},
        {"row": "e", "description": "+ triton", "images_per_s": None, "speedup": None, "skipped": "no CUDA"},
    ]
    train = {
        "bench": "train",
        "recipe": "demo",
        "device_name": "toy",
        "torch": "2",
        "window": "warm-up 3",
        "results": rows,
    }
    loader = {"bench": "loader", "cases": "tiny", "results": [{"case": "c1", "backend": "torch", "p50_ms": 1.5}]}
    (tmp_path / "train-demo.json").write_text(json.dumps(train))
    (tmp_path / "loader-x.json").write_text(json.dumps(loader))
    page = bench_main.report(tmp_path).read_text()
    assert "| b | + cl | 25 | - | 2.5 |" in page, page
    assert "| c1 | torch | 1.5 |" in page and "Window: warm-up 3." in page
    assert "![training speedup over row a](train_speedup.png)" in page
    assert (tmp_path / "train_speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
