"""The `dynconv` command line: thin argument parsing, one library call per subcommand.

Heavy imports (torch, ray, mlflow) happen inside each handler so `dynconv --help` stays instant.
Every expected failure is a `DynconvError` and is printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynconv.errors import DynconvError

EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by SIGINT"


def _cmd_flops(args: argparse.Namespace) -> None:
    from dynconv.flops import flops_table, format_flops_table

    rows = flops_table(image_size=args.image_size, num_classes=args.num_classes, per_subset=args.subsets)
    print(json.dumps(rows, indent=2) if args.json else format_flops_table(rows))


def _cmd_data_prepare(args: argparse.Namespace) -> None:
    from dynconv.data.cache import prepare

    prepare(
        Path(args.root),
        size=args.size,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        workers=args.workers,
        skip_bad=args.skip_bad,
        progress=True,
    )


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from dynconv.data.synth import write_synthetic

    out = write_synthetic(
        Path(args.out), classes=args.classes, per_class=args.per_class, size=args.size, seed=args.seed
    )
    print(f"wrote synthetic dataset to {out}")


def _cmd_tune(args: argparse.Namespace) -> int:
    from dynconv.spec import load_spec
    from dynconv.tune.study import run_study

    spec = load_spec(Path(args.spec), overrides=args.set, num_samples=args.num_samples)
    result = run_study(spec, address=args.address, resume=args.resume, verbose=args.verbose)
    return EXIT_INTERRUPTED if result.interrupted else 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from dynconv.tracking import serve_ui

    return serve_ui(tracking_uri=args.tracking_uri, host=args.host, port=args.port, workers=args.workers)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from dynconv.evaluate import evaluate_study_cli

    evaluate_study_cli(
        args.study,
        top_k=args.top_k,
        subsets=args.subsets,
        split=args.split,
        tracking_uri=args.tracking_uri,
        device=args.device,
    )


def _cmd_report(args: argparse.Namespace) -> None:
    from dynconv.report import write_report

    write_report(experiments=args.experiment, out_dir=Path(args.out), tracking_uri=args.tracking_uri)


def _cmd_rerun(args: argparse.Namespace) -> None:
    from dynconv.rerun import rerun

    rerun(args.run, epochs=args.epochs, device=args.device, tracking_uri=args.tracking_uri)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; the single source of `dynconv --help`."""
    parser = argparse.ArgumentParser(
        prog="dynconv", description="Distributed hyperparameter studies of channel-flexible CNNs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("flops", help="FLOPs (fvcore) and parameter counts of every registered model")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--num-classes", type=int, default=50)
    p.add_argument("--subsets", action="store_true", help="also count each channel subset (dynamic models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_flops)

    data = sub.add_parser("data", help="dataset tools: prepare a decode-once cache, write the synthetic set")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = dsub.add_parser("prepare", help="decode every image once into a memory-mappable cache")
    p.add_argument("root", help="dataset root (ImageNet-mini txt lists, or train/val/test class folders)")
    p.add_argument("--size", type=int, default=84, help="images are resized to SIZE x SIZE (seed: 84)")
    p.add_argument("--cache-dir", default=None, help="where the cache lives (default: ROOT/.dynconv_cache)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and count them")
    p.set_defaults(func=_cmd_data_prepare)
    p = dsub.add_parser("synth", help="write the embedded synthetic dataset in ImageNet-mini layout")
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_data_synth)

    p = sub.add_parser("tune", help="run a hyperparameter study (Ray Tune + Optuna over Ray Train trials)")
    p.add_argument("spec", help="a tune_jobs/*.yaml job spec")
    p.add_argument(
        "--address", default=None, help="Ray address ('auto' for a running cluster); default: local"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    p.add_argument("--verbose", action="store_true", help="also show Ray/Tune's own logs and progress tables")
    p.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field (dotted key)"
    )
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("ui", help="start the MLflow UI on the study store (127.0.0.1 unless told otherwise)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("evaluate", help="evaluate a study's best trials over channel subsets")
    p.add_argument("study", help="study name, study (parent) run id, or a trial run id")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--subsets", default="RGB,RG,RB,GB,R,G,B")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="seed-style tables, significance tests and plots from MLflow")
    p.add_argument("--experiment", action="append", default=None, help="MLflow experiment (repeatable)")
    p.add_argument("--out", default="reports")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("rerun", help="rebuild a run's exact configuration from MLflow and train it locally")
    p.add_argument("run", help="an MLflow trial run id, or a study name (reruns its best trial)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=_cmd_rerun)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dynconv` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except DynconvError as exc:
        print(f"dynconv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynconv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
