"""`segadapt` command line: train, evaluate, recipes, report, data synthshift|check, export, predict.

The recipe is the configuration; the only way to change it from the command line is `--set dotted.key=value`
(torchtitan's rule). `segadapt train --help` prints every config field with its documentation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from segadapt import config as config_module
from segadapt.config import ConfigError


def add_set_argument(parser: argparse.ArgumentParser, example: str = "train.seed=3") -> None:
    """The one way to change a config from the command line: repeatable `--set dotted.key=value`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable; value parsed as TOML)",
    )


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (stem of recipes/NAME.toml) or path to a TOML file")
    add_set_argument(parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=version_text(), help="segadapt and library versions")
    sub = parser.add_subparsers(dest="command", required=True)
    recipes = sub.add_parser("recipes", help="list the recipes with their descriptions, or print one to copy and edit")
    recipes_sub = recipes.add_subparsers(dest="recipes_command")
    show = recipes_sub.add_parser("show", help="print a recipe's TOML (segadapt recipes show demo > my.toml)")
    show.add_argument("name", help="recipe name")
    fields = "config fields (set with --set KEY=VALUE):\n\n" + config_module.describe_fields()
    train = sub.add_parser(
        "train", help="train a recipe", epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_recipe_args(train)
    train.add_argument(
        "--resume", nargs="?", const="auto", default=None, help="continue from the run's latest checkpoint or a path"
    )
    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate weights on a recipe's val stream",
        epilog=fields,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_recipe_args(evaluate)
    evaluate.add_argument("--checkpoint", required=True, help="segadapt checkpoint, best.pt or an official snapshot")
    evaluate.add_argument("--out", default=None, help="output directory (default: next to the checkpoint)")
    report = sub.add_parser("report", help="write plots and a markdown summary of a run directory")
    report.add_argument("run_dir")
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synthshift", help="generate the synthshift two-domain dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", default="256x128", help="WxH")
    synth.add_argument("--count", type=int, default=200)
    synth.add_argument("--formats", default="gta5,cityscapes", help="comma list of gta5,cityscapes,synthia,voc")
    check = data.add_parser("check", help="validate a dataset tree in its published layout")
    check.add_argument("root")
    check.add_argument("--dataset", required=True, choices=["gta5", "cityscapes", "synthia", "voc"])
    check.add_argument("--split", default="train")
    _add_optional_parsers(sub)
    return parser


def version_text() -> str:
    """`segadapt --version`: segadapt's version and what it found of torch, CUDA, triton and DALI."""
    from importlib import metadata

    from segadapt import __version__

    def dist_version(*names: str) -> str:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return "not installed"

    try:
        import torch

        torch_text = torch.__version__
        cuda_text = torch.version.cuda or "none (CPU build)"
        if torch.version.cuda and torch.cuda.is_available():
            cuda_text += f", {torch.cuda.get_device_name(0)}"
        elif torch.version.cuda:
            cuda_text += ", no device visible"
    except ImportError:
        torch_text, cuda_text = "not installed", "unknown"
    dali = dist_version("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130")
    return (
        f"segadapt {__version__} (torch {torch_text}, CUDA {cuda_text}, triton {dist_version('triton')}, DALI {dali})"
    )


def cmd_recipes(args) -> int:
    directory = config_module.recipes_dir()
    if args.recipes_command == "show":
        sys.stdout.write(config_module.resolve_recipe(args.name).read_text())
        return 0
    names = config_module.recipe_names()
    width = max(len(name) for name in names)
    print(f"recipes in {directory} (segadapt train NAME; segadapt recipes show NAME > my.toml to copy one):")
    for name in names:
        print(f"  {name:<{width}}  {config_module.recipe_description(directory / f'{name}.toml')}")
    return 0


def _add_optional_parsers(sub) -> None:
    """`export` and `predict`. The CLI imports these features (torch, onnx load here); they never import the CLI."""
    _add_export_parser(sub)
    _add_predict_parser(sub)


def _add_export_parser(sub) -> None:
    """`segadapt export CHECKPOINT --onnx OUT.onnx [--tensorrt OUT.plan --precision ...]`."""
    import dataclasses

    from segadapt import export

    docs = config_module.field_docs()
    fields = "\n".join(
        f"  export.{f.name}: {docs.get(f'Export.{f.name}', '')}" for f in dataclasses.fields(config_module.Export)
    )
    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (and a TensorRT engine), checking parity at each stage",
        description=export.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config fields (set with --set KEY=VALUE):\n{fields}\n  eval.input_size: export size (W, H)\n"
        "  eval.batch_size: batch of a static graph",
    )
    parser.add_argument("checkpoint", help="segadapt checkpoint (carries its config) or an official snapshot")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    parser.add_argument(
        "--recipe", default=None, help=f"architecture of an official snapshot (default {export.DEFAULT_RECIPE})"
    )
    add_set_argument(parser, "export.dynamic=true")
    parser.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="parity images (default: synthshift 'photo' images generated at the export size)",
    )
    parser.add_argument("--num-images", type=int, default=4, help="how many parity images (default 4)")
    parser.add_argument("--val", action="store_true", help="also report the mIoU difference on the data.val stream")
    parser.add_argument("--tensorrt", default=None, metavar="OUT.plan", help="also build a TensorRT engine")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16", help="engine precision")
    parser.add_argument("--calib", default=None, metavar="DIR", help="images for INT8 entropy calibration")
    parser.add_argument("--calib-cache", default=None, help="INT8 calibration cache (default OUT.plan.calib)")
    parser.add_argument("--timing-cache", default=None, help="TensorRT timing cache (default OUT.plan.timing)")
    parser.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    parser.add_argument("--max-batch", type=int, default=4, help="largest batch of a dynamic engine (default 4)")
    parser.set_defaults(run=export.run_export)


def _add_predict_parser(sub) -> None:
    """`segadapt predict --model FILE IMAGES... --out DIR`."""
    from segadapt import predict

    parser = sub.add_parser(
        "predict",
        help="segment images with a checkpoint, an ONNX model or a TensorRT engine",
        description=predict.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="checkpoint / official snapshot, MODEL.onnx or MODEL.plan")
    parser.add_argument("images", nargs="+", help="image files and/or directories of images")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--recipe", default=None, help="architecture of an official snapshot (default adaptseg_gta2cs)")
    add_set_argument(parser, "eval.input_size=[1024,512]")
    parser.add_argument("--device", default="auto", help="checkpoint device: auto, cpu or cuda (default auto)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=predict.run_predict)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise ConfigError(f"--size {text!r}: expected WxH, e.g. 256x128") from error
    return width, height


def cmd_train(args) -> int:
    from segadapt import distributed
    from segadapt.evaluate import format_table
    from segadapt.train import run_dir_for
    from segadapt.train import train

    cfg = config_module.load(args.recipe, args.overrides)
    check_datasets(cfg)
    baselines = {
        name: config_module.replace(cfg, method=baseline_section(cfg, name)) for name in cfg.train.compare_methods
    }
    for name, baseline in baselines.items():
        if run_dir_for(baseline) == run_dir_for(cfg):
            raise ConfigError(
                f"train.run_dir = {cfg.train.run_dir!r} gives {cfg.method.name} and its baseline {name} the same "
                "directory; put {method} in it, e.g. runs/{recipe}/{method}"
            )
    if cfg.start.recipe:
        cfg = resolve_start(cfg, taken=(run_dir_for(cfg), *map(run_dir_for, baselines.values())))
        baselines = {name: config_module.replace(cfg, method=baseline.method) for name, baseline in baselines.items()}
    results = {cfg.method.name: train(cfg, resume=args.resume)}
    for name, baseline in baselines.items():
        # --resume continues every method from its own latest checkpoint (a path given names the main method's);
        # a baseline the interrupted job had not reached starts at step 0.
        resume = None if args.resume is None else "auto"
        results[name] = train(baseline, resume=resume, fresh_if_missing=True)
    world = distributed.env_world()
    distributed.shutdown()  # on success only: after a failure torchrun tears the job down
    if world.is_main:  # rank 0 prints the table
        finals = {name: r["last"] for name, r in results.items() if r.get("last")}
        if finals:
            print(format_table(finals, cfg.model.num_classes))
            for name, r in results.items():
                print(
                    f"{name}: last mIoU {r['last']['miou']:.2f} at step {r['steps']}, "
                    f"best {r['best']['miou']:.2f} at step {r['best']['step']}"
                )
    if world.distributed:
        distributed.exit_process(0)  # every file is closed; see distributed.shutdown for why not return
    return 0


def resolve_start(cfg, taken: tuple[Path, ...] = (), log=print):
    """`cfg` starting from its `start.recipe`'s final checkpoint (model.pretrained set, start cleared), training the
    start first unless its run directory already holds a finished run of exactly these settings (an interrupted one
    resumes). Raises ConfigError for a start that has a start of its own, and for a start run directory holding a
    run of other settings (it names the keys; nothing is deleted) or for one of the `taken` run directories."""
    from segadapt.train import final_checkpoint
    from segadapt.train import run_dir_for
    from segadapt.train import train

    if not cfg.start.recipe:
        return cfg
    start = config_module.load(cfg.start.recipe, list(cfg.start.set))
    if start.start.recipe:
        raise ConfigError(
            f"start.recipe = {cfg.start.recipe!r}: that run has start.recipe = {start.start.recipe!r} of its own; "
            "add 'start.recipe=\"\"' to start.set (one level of start)"
        )
    run_dir, final = run_dir_for(start), final_checkpoint(start)
    if run_dir.resolve() in {path.resolve() for path in taken}:
        raise ConfigError(
            f"start.recipe = {cfg.start.recipe!r} would train in {run_dir}, a directory this job's own methods use; "
            "give the start its own with start.set train.run_dir=..."
        )
    check_datasets(start)
    wanted = json.loads(json.dumps(config_module.to_dict(start)))
    try:
        held = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        held = None
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"start.recipe = {cfg.start.recipe!r}: cannot read {run_dir / 'config.json'}: {error}"
        ) from error
    if held is not None and held != wanted:
        old, new = config_module.flatten(held), config_module.flatten(wanted)
        keys = sorted(k for k in {*old, *new} if old.get(k, "<absent>") != new.get(k, "<absent>"))
        raise ConfigError(
            f"start.recipe = {cfg.start.recipe!r}: {run_dir} holds a run of other settings ("
            f"{', '.join(keys)}); remove that directory to train the start again, or give the start its own with "
            "start.set train.run_dir=..."
        )
    if held is not None and final.is_file() and (run_dir / "results.json").is_file():
        log(f"start: {cfg.start.recipe} as trained in {run_dir}, from {final}")
    else:
        log(f"start: training {cfg.start.recipe} ({start.method.name}) in {run_dir} first; every method starts from it")
        train(start, resume="auto", log=log, fresh_if_missing=True)
    return config_module.replace(cfg, **{"model.pretrained": str(final)}, start=config_module.Start())


def baseline_section(cfg, name: str):
    """The method section of a `train.compare_methods` baseline: its defaults, except that "supervised" trains on
    the labelled stream the main method uses ("labeled" in semi-supervised recipes, else "source" or "target")."""
    if name not in config_module.METHOD_SECTIONS:
        known = sorted(config_module.METHOD_SECTIONS)
        raise ConfigError(f"train.compare_methods names {name!r}; known methods: {known}")
    section = config_module.METHOD_SECTIONS[name]()
    if name == "supervised":
        from segadapt.methods import build_method  # noqa: F401 - the registry, for the main method's streams
        from segadapt.models import build_segmenter

        streams = build_method(build_segmenter(config_module.replace(cfg.model, pretrained="")), cfg).streams
        stream = next((s for s in ("labeled", "source", "target") if s in streams), "target")
        section = config_module.replace(section, stream=stream)
    return section


def check_datasets(cfg) -> None:
    """Stop before building anything when a stream's tree is missing (showing the layout expected) or holds bad
    files: every stream's split is validated (`datasets.validate_tree`: pairs, header sizes and formats, label ids of
    a sample). Bad files stop the run, one line each, unless data.skip_bad, which leaves them out of the streams;
    either way they and any label ids outside the protocol are listed in RUN_DIR/data_check.txt."""
    from segadapt import distributed
    from segadapt.checkpoint import atomic_write_text
    from segadapt.data import datasets
    from segadapt.methods import METHODS  # noqa: F401 - validates method names early via config
    from segadapt.train import run_dir_for

    if cfg.data.synthshift.generate:
        return  # generated by segadapt itself, inside train
    is_main = distributed.env_world().is_main
    report: list[str] = []
    stops: list[str] = []
    checked: dict[tuple[str, str, str], datasets.TreeCheck] = {}
    for name in ("source", "target", "labeled", "unlabeled", "labeled_real", "val"):
        stream = getattr(cfg.data, name)
        if not stream.dataset:
            continue
        if not Path(stream.root).is_dir():
            raise ConfigError(
                f"data.{name}.root = {stream.root!r} does not exist. {stream.dataset} is expected in this layout:\n"
                f"{datasets.layout_help(stream.dataset)}\n"
                f"Point the recipe at it with --set data.{name}.root=/path/to/{stream.dataset}"
            )
        key = (str(Path(stream.root).resolve()), stream.dataset, stream.split)
        if key in checked:
            continue
        check = checked[key] = datasets.validate_tree(
            stream.root, stream.dataset, stream.split, all_ids=cfg.data.check_all_label_ids
        )
        if is_main:
            print(
                f"data check: data.{name} {stream.dataset} at {stream.root} ({stream.split}): {check.pairs} pairs, "
                f"{len(check.problems)} bad, ids of {check.ids_checked} labels read, {check.seconds:.1f} s"
                + (" (unchanged since the last check)" if check.cached else "")
            )
        if check.problems or check.unknown_ids:
            report += [f"# data.{name}: {stream.dataset} at {stream.root} ({stream.split})", *check.problems]
            report += [f"warning: {line}" for line in check.unknown_ids]
        if check.problems and not cfg.data.skip_bad:
            stops.append(f"data.{name}: {len(check.problems)} bad file(s) under {stream.root}:")
            stops += [f"  {line}" for line in check.problems[:10]]
            stops += [f"  ... and {len(check.problems) - 10} more"] if len(check.problems) > 10 else []
        elif check.problems:
            datasets.skip_samples(stream.root, stream.dataset, stream.split, set(check.bad))
            if is_main:
                print(f"data check: data.{name}: training without {len(check.problems)} bad file(s) (data.skip_bad)")
        for line in check.unknown_ids[:3] if is_main else ():
            print(f"data check: warning: {line}")
    listing = run_dir_for(cfg) / "data_check.txt"
    if report and is_main:
        atomic_write_text(listing, "\n".join(report) + "\n")
    if stops:
        where = f"; every problem is listed in {listing}" if is_main else ""
        raise ConfigError(
            "\n".join(stops) + f"\nfix or remove these files, or set data.skip_bad = true to train on the rest{where}"
        )


def cmd_evaluate(args) -> int:
    import torch

    from segadapt.data.torch_loader import eval_samples
    from segadapt.evaluate import evaluate
    from segadapt.evaluate import format_table
    from segadapt.models import build_segmenter
    from segadapt.models.weights import load_pretrained
    from segadapt.train import resolve_device
    from segadapt.train import resolve_precision

    cfg = config_module.load(args.recipe, args.overrides)
    device = resolve_device(cfg.train.device)
    model = build_segmenter(config_module.replace(cfg.model, pretrained="")).to(device)
    load_pretrained(model, args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "evaluate"
    amp = resolve_precision(cfg.train.precision, device)
    result = evaluate(
        model,
        eval_samples(cfg.data.val, cfg.eval.input_size),
        cfg.data,
        cfg.eval,
        cfg.model.num_classes,
        device,
        out_dir=out,
        autocast=(lambda: torch.autocast(device.type, dtype=amp)) if amp else None,
    )
    print(format_table({Path(args.checkpoint).name: result}, cfg.model.num_classes))
    print(f"results written to {out}")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "synthshift":
        from segadapt.data.synthshift import generate

        info = generate(
            args.out,
            seed=args.seed,
            size=_parse_size(args.size),
            count=args.count,
            formats=tuple(f for f in args.formats.split(",") if f),
        )
        print(f"synthshift written to {args.out}: {info}")
        return 0
    from segadapt.data.datasets import check_tree
    from segadapt.data.datasets import format_report

    report = check_tree(args.root, args.dataset, args.split)
    print(format_report(report))
    return 0 if report.ok else 1


def os_error_line(error: OSError) -> str:
    """`FILE: reason` of an OSError (its own message when it names no file)."""
    if error.filename is None or not error.strerror:
        return str(error)
    files = f"{error.filename} -> {error.filename2}" if error.filename2 else f"{error.filename}"
    return f"{files}: {error.strerror}"


def main(argv: list[str] | None = None) -> int:
    from segadapt.train import NonFiniteLoss

    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "recipes":
            return cmd_recipes(args)
        if args.command == "report":
            from segadapt.report import write_report

            print(f"report written to {write_report(args.run_dir)}")
            return 0
        if args.command == "data":
            return cmd_data(args)
        return args.run(args)
    except (ConfigError, ValueError) as error:
        print(f"segadapt: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full or read-only disk, an impossible path: the file and the reason, one line
        print(f"segadapt: error: {os_error_line(error)}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"segadapt: stopped: {error}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # `segadapt recipes | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stream for the interpreter's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
