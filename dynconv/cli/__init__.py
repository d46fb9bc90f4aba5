"""The `dynconv` command line: thin argument parsing, one library call per subcommand.

Heavy imports (torch, ray, mlflow) happen inside each handler so `dynconv --help` stays instant.
Every argument is checked by argparse (`dynconv.cli.args`); every expected failure is a `DynconvError`;
both are printed as one line with exit code 2, never as a traceback. Anything unexpected is one line
too, plus the path of a log file holding the full traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dynconv.cli import args as arg
from dynconv.cli.crash_log import write_crash_log
from dynconv.cli.study_process import CHILD_FLAG, STUDY_COMMANDS, run_study_process
from dynconv.environment import set_library_environment
from dynconv.errors import DynconvError, one_line

EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by SIGINT"


def _cmd_flops(args: argparse.Namespace) -> None:
    from dynconv.flops import flops_table, format_flops_table

    rows = flops_table(image_size=args.image_size, num_classes=args.num_classes, per_subset=args.subsets)
    print(json.dumps(rows, indent=2) if args.json else format_flops_table(rows))


def _cmd_data_prepare(args: argparse.Namespace) -> None:
    from dynconv.data.cache import prepare
    from dynconv.spec import DataSpec  # the decode budget's default lives there

    prepare(
        Path(args.root),
        size=args.size,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        workers=args.workers,
        skip_bad=args.skip_bad,
        progress=True,
        strict=args.strict,
        max_pixels=args.max_pixels if args.max_pixels is not None else DataSpec().max_pixels,
    )


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from dynconv.data.synth import write_synthetic

    out = write_synthetic(
        Path(args.out), classes=args.classes, per_class=args.per_class, size=args.size, seed=args.seed
    )
    print(f"wrote synthetic dataset to {out}")


VERBOSE_HELP = (
    "every trial event on its own line, however many trials (without it, a study beyond a screenful shows "
    "its progress), and Ray/Tune's own logs and progress tables"
)


class _ClosedStdoutStops(io.TextIOBase):
    """stdout for a study: once its reader goes away (`dynconv tune SPEC | head`), writes go nowhere
    and the study is stopped the way Ctrl-C stops it (SIGINT: Tune saves its state, every run is closed
    KILLED, the resume hint goes to stderr), instead of crashing on BrokenPipeError mid-study."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._closed_reader = False

    def write(self, text: str) -> int:
        if not self._closed_reader:
            try:
                self._stream.write(text)
                return len(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self._closed_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def isatty(self) -> bool:  # the study's console draws its progress bar only on a terminal
        return not self._closed_reader and self._stream.isatty()

    def _reader_gone(self) -> None:
        self._closed_reader = True
        with contextlib.suppress(OSError):  # Python's exit would flush the dead pipe once more
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        signal.raise_signal(signal.SIGINT)


def _cmd_tune(args: argparse.Namespace) -> int:
    from dynconv.spec import load_spec
    from dynconv.tune.study import run_study

    spec = load_spec(Path(args.spec).expanduser(), overrides=args.set, num_samples=args.num_samples)
    stdout, sys.stdout = sys.stdout, _ClosedStdoutStops(sys.stdout)
    try:
        result = run_study(
            spec,
            address=args.address,
            resume=args.resume,
            warm_start=args.warm_start,
            warm_start_accept=args.warm_start_accept,
            verbose=args.verbose,
        )
    finally:
        sys.stdout = stdout
    return EXIT_INTERRUPTED if result.interrupted else 0


def _cmd_confirm(args: argparse.Namespace) -> int:
    from dynconv.tracking.store import readable_store
    from dynconv.tune.study import confirm_study

    uri = readable_store(args.tracking_uri)
    outcome = confirm_study(
        args.study, args.top_k, args.seeds, address=args.address, tracking_uri=uri, verbose=args.verbose
    )
    return EXIT_INTERRUPTED if outcome.interrupted else 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from dynconv.cli.ui import serve_ui

    return serve_ui(tracking_uri=args.tracking_uri, host=args.host, port=args.port, workers=args.workers)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from dynconv.tracking.store import readable_store
    from dynconv.tune.study_evaluation import evaluate_study_cli

    uri = readable_store(args.tracking_uri)  # an existing store: never create one here
    evaluate_study_cli(
        args.study,
        top_k=args.top_k,
        subsets=args.subsets,
        split=args.split,
        tracking_uri=uri,
        device=args.device,
    )


def _cmd_trials(args: argparse.Namespace) -> None:
    from dynconv.tracking.store import readable_store
    from dynconv.tune.parent_run import trial_table

    print(trial_table(readable_store(args.tracking_uri), args.study, args.top))


def _cmd_report(args: argparse.Namespace) -> None:
    from dynconv.report.render import write_report
    from dynconv.tracking.store import readable_store

    uri = readable_store(args.tracking_uri)
    write_report(experiments=args.experiment, out_dir=Path(args.out), tracking_uri=uri)


def _cmd_rerun(args: argparse.Namespace) -> None:
    from dynconv.rerun import rerun
    from dynconv.tracking.store import readable_store

    uri = readable_store(args.tracking_uri)
    rerun(args.run, epochs=args.epochs, device=args.device, tracking_uri=uri)


def _cmd_predict(args: argparse.Namespace) -> None:
    from dynconv.cli.predict import predict_files
    from dynconv.tracking.store import readable_store

    predict_files(
        readable_store(args.tracking_uri),
        args.model,
        args.paths,
        channels=args.channels,
        top_k=args.top_k,
        out=Path(args.out).expanduser(),
        batch_size=args.batch_size,
    )


def _masked(line: str) -> str:
    """`line` with the password of any URI in it hidden (MLflow's errors quote the store's URL)."""
    from dynconv.tracking.store import masked

    return masked(line)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `dynconv flops: error: argument --image-size: ... (see --help)`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _synth_classes(text: str) -> int:
    from dynconv.data.synth import MAX_CLASSES

    return arg.int_range(2, MAX_CLASSES)(text)


def _add_data_parsers(sub) -> None:
    data = sub.add_parser("data", help="dataset tools: prepare a decode-once cache, write the synthetic set")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = dsub.add_parser("prepare", help="decode every image once into a memory-mappable cache")
    p.add_argument(
        "root",
        type=arg.existing_dir,
        help="dataset root (ImageNet-mini txt lists, or train/val/test folders)",
    )
    p.add_argument(
        "--size", type=arg.int_range(8, 1024), default=84, help="images are resized to SIZE x SIZE (seed: 84)"
    )
    p.add_argument("--cache-dir", type=arg.dir_to_write, default=None, help="default: ROOT/.dynconv_cache")
    p.add_argument(
        "--workers", type=arg.int_range(1, 512), default=None, help="decoding processes (default: all cores)"
    )
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and count them")
    p.add_argument(
        "--strict", action="store_true", help="make images with identical pixels in two splits an error"
    )
    p.add_argument(
        "--max-pixels",
        type=arg.int_range(1, 10**12),
        default=None,
        help="decode budget: an image of more pixels (width x height) is refused before it is decoded, "
        "or skipped with --skip-bad (default: the spec's data.max_pixels default, 50000000)",
    )
    p.set_defaults(func=_cmd_data_prepare)
    p = dsub.add_parser("synth", help="write the embedded synthetic dataset in ImageNet-mini layout")
    p.add_argument("out", type=arg.dir_to_write)
    p.add_argument("--classes", type=_synth_classes, default=10)
    p.add_argument("--per-class", type=arg.int_range(3, 10_000), default=200)  # one image per split
    p.add_argument("--size", type=arg.int_range(16, 1024), default=84)
    p.add_argument("--seed", type=arg.int_range(0, 2**32 - 1), default=0)
    p.set_defaults(func=_cmd_data_synth)


def _add_tracking_parsers(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the study store (127.0.0.1 unless told otherwise)")
    p.add_argument("--port", type=arg.int_range(1, 65535), default=5000)
    p.add_argument("--host", type=arg.non_empty, default="127.0.0.1")
    p.add_argument(
        "--workers", type=arg.int_range(1, 64), default=1, help="uvicorn worker processes (default 1)"
    )
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("evaluate", help="evaluate a study's best trials over channel subsets")
    p.add_argument("study", type=arg.non_empty, help="study name, study (parent) run id, or a trial run id")
    p.add_argument(
        "--top-k",
        type=arg.int_range(1, 1000),
        default=None,
        help="the first N of the study's ranking, its search metric and mode (default: the best, "
        "or the Pareto set)",
    )
    p.add_argument("--subsets", type=arg.subset_list, default="RGB,RG,RB,GB,R,G,B")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("trials", help="a study's trials as it ranked them: the whole end-of-study table")
    p.add_argument("study", type=arg.non_empty, help="study name or study (parent) run id")
    p.add_argument("--top", type=arg.int_range(1, 1_000_000), default=None, help="the first N only")
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.set_defaults(func=_cmd_trials)

    p = sub.add_parser("report", help="seed-style tables, significance tests and plots from MLflow")
    p.add_argument(
        "--experiment",
        type=arg.non_empty,
        action="append",
        default=None,
        help="MLflow experiment (repeatable)",
    )
    p.add_argument("--out", type=arg.dir_to_write, default="reports")
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("rerun", help="rebuild a run's exact configuration from MLflow and train it locally")
    p.add_argument("run", type=arg.non_empty, help="an MLflow trial run id, or a study name (its best trial)")
    p.add_argument("--epochs", type=arg.int_range(1, 10_000), default=None)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.set_defaults(func=_cmd_rerun)

    p = sub.add_parser("predict", help="score image files and folders with a registered model into a CSV")
    p.add_argument("model", type=arg.non_empty, help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument(
        "--channels",
        type=arg.non_empty,
        default="RGB",
        help="what the model sees: RGB, RG, RB, GB, R, G, B, or slots such as 0,2",
    )
    p.add_argument("--top-k", type=arg.int_range(1, 1000), default=5, help="classes listed per image")
    p.add_argument("--out", default="predictions.csv", help="the CSV written (default predictions.csv)")
    p.add_argument("--batch-size", type=arg.int_range(1, 4096), default=64)
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.set_defaults(func=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; the single source of `dynconv --help`."""
    parser = _Parser(
        prog="dynconv", description="Distributed hyperparameter studies of channel-flexible CNNs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("flops", help="FLOPs (fvcore) and parameter counts of every registered model")
    p.add_argument(
        "--image-size",
        type=arg.int_range(8, 256),
        default=84,
        help="8..256 (the attention map grows as size^4)",
    )
    p.add_argument("--num-classes", type=arg.int_range(1, 100_000), default=50)
    p.add_argument("--subsets", action="store_true", help="also count each channel subset (dynamic models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_flops)
    _add_data_parsers(sub)

    p = sub.add_parser("tune", help="run a hyperparameter study (Ray Tune + Optuna over Ray Train trials)")
    p.add_argument("spec", type=arg.existing_file, help="a tune_jobs/*.yaml job spec")
    p.add_argument(
        "--address", type=arg.non_empty, default=None, help="Ray address ('auto': a running cluster)"
    )
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=arg.run_id,
        metavar="RUN_ID",
        help="continue an interrupted study of the same name (RUN_ID: which one, when there are several)",
    )
    p.add_argument(
        "--warm-start",
        type=arg.non_empty,
        default=None,
        metavar="STUDY",
        help="seed the search with the finished trials of an earlier study (name or study run id) in the "
        "same store; its search must rank on the same metric and search the same parameters",
    )
    p.add_argument(
        "--warm-start-accept",
        type=arg.non_empty,
        default=None,
        metavar="FIELDS",
        help="with --warm-start: seed the search although the earlier study trained another model, on "
        "other data, for other epochs or with another scheduler (comma-separated: model,data,epochs,"
        "scheduler); the new study run records the difference",
    )
    p.add_argument(
        "--num-samples", type=arg.int_range(1, 100_000), default=None, help="override search.num_samples"
    )
    p.add_argument(
        "--set",
        type=arg.key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field (dotted key)",
    )
    p.add_argument(CHILD_FLAG, dest="study_process", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser(
        "confirm", help="retrain a finished study's top configurations with new seeds; decide and register"
    )
    p.add_argument("study", type=arg.non_empty, help="study name or study (parent) run id")
    p.add_argument(
        "--top-k", type=arg.int_range(1, 100), default=None, help="default: the spec's confirm.top_k"
    )
    p.add_argument(
        "--seeds", type=arg.int_range(2, 100), default=None, help="default: the spec's confirm.seeds"
    )
    p.add_argument(
        "--address", type=arg.non_empty, default=None, help="Ray address ('auto': a running cluster)"
    )
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--tracking-uri", type=arg.tracking_uri, default=None)
    p.add_argument(CHILD_FLAG, dest="study_process", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_confirm)
    _add_tracking_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dynconv` console script: exit 0, 2 (bad input), 130 (interrupted) or 1 (bug)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    if argv is None and args.command in STUDY_COMMANDS and not args.study_process and sys.platform == "linux":
        return run_study_process(sys.argv[1:])  # the study driver in its own session (see there)
    set_library_environment(verbose=getattr(args, "verbose", False))
    try:
        code = args.func(args)
    except DynconvError as exc:
        print(f"dynconv: error: {_masked(one_line(exc, limit=None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynconv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        log = write_crash_log(exc, sys.argv[:1] + list(argv if argv is not None else sys.argv[1:]))
        what = _masked(one_line(exc)) if str(exc).strip() else "no message"
        print(
            f"dynconv: unexpected error: {type(exc).__name__}: {what} (full traceback: {log})",
            file=sys.stderr,
        )
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
