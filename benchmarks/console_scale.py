"""Console and study-driver cost against a study's size (run by hand, not a timed test): issue 31 item 5.

For each size N of `--trials` (default 4, 48, 500, 2000) it runs `dynconv tune` on a study of N tiny
trials, each in a fresh temporary directory, with stdout and stderr to a pipe (what a log file or CI
sees). A tiny trial: `resnet18_dynamic` (small stem, width 4) at 16 px on 3 synthetic classes x 40
images, 1 epoch (so ASHA stops nothing), TPE, no evaluation, 1 worker of 0.5 CPU + 0.1 for its driver:
3 trials at once on 2 cores. What it reports per N:

* console lines (stdout + stderr), how many are trial lines, progress lines, and the longest silence
  between two lines while the trials ran (the progress view promises a line at least every 30 s);
* wall-clock of the command and of its Tune phase (the study run's `tune_seconds`), that phase per trial;
* the study driver's CPU seconds per trial (the driver is the one process every trial goes through), and
  where they go, from hooks in the driver: Tune's experiment-state saves (with the searcher's state),
  the searcher's suggestions and results, the MLflow recorder's and the console's callbacks, and the
  MLflow writes the recorder queues (its writer thread);
* the driver's peak memory (VmHWM) and its growth per trial (the slope of its RSS against trials ended
  over the second half of the study).

The subprocess is this script in `--cli` mode: `dynconv.cli.main` in the driver's own process (so the
hooks see it), hooking a few methods of Ray Tune 2.60 and dynconv's callbacks to add up their time; the
CLI runs unchanged. `--env NAME=VALUE` sets a variable for the study (e.g. `TUNE_GLOBAL_CHECKPOINT_S`).

    .venv/bin/python benchmarks/console_scale.py --write-docs          # 4, 48, 500, 2000: ~40 min, 2 cores
    .venv/bin/python benchmarks/console_scale.py --trials 48,500       # ~8 min
    .venv/bin/python benchmarks/console_scale.py --quick               # 12 trials (~1 min)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SECTION = "Console and driver cost against study size"
HOOKS_FILE = "driver_hooks.json"
PROGRESS = " trials ended ("
TRIAL_LINE = "] trial "
SAVES = "experiment state saves (all)"
SEARCHER_STATE = "… of which the searcher's state"
SUGGEST = "searcher: suggestions"
SEARCHER_RESULTS = "searcher: results"
RECORDER = "MLflow recorder callback"
WRITES = "MLflow writes (the recorder's writer thread)"
CONSOLE = "console callback"
HOOKS = (SAVES, SEARCHER_STATE, SUGGEST, SEARCHER_RESULTS, RECORDER, WRITES, CONSOLE)  # the table's rows
SLOPE_FROM = 200  # trials: below, the second half of a study is still warming up (RSS per trial: "-")


# ------------------------------------------------------------------------ the study driver (--cli mode)


def _rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cli_with_hooks(argv: list[str]) -> int:
    """`dynconv ARGV` in this process, adding up the driver's time in Tune's state saves, the searcher
    and the callbacks, counting ended trials and sampling the RSS; written to HOOKS_FILE at the end."""
    import atexit

    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.search_generator import SearchGenerator

    from dynconv.tracking.retry import QueuedWriter
    from dynconv.tune.callbacks import ConsoleReporter
    from dynconv.tune.recorder import TrialRecorder

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    ended = [0]
    samples: list[tuple[float, int, int]] = []

    def timed(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()  # the CPU of the calling thread (the writer's is its own)
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + time.thread_time() - t0
                calls[key] = calls.get(key, 0) + 1

        setattr(owner, name, wrapper)

    timed(TuneController, "save_to_dir", SAVES)
    timed(SearchGenerator, "save_to_dir", SEARCHER_STATE)
    timed(SearchGenerator, "create_trial_if_possible", SUGGEST)
    timed(SearchGenerator, "on_trial_result", SEARCHER_RESULTS)
    timed(SearchGenerator, "on_trial_complete", SEARCHER_RESULTS)
    timed(QueuedWriter, "_write", WRITES)
    events = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error", "on_step_end")
    for cls, key in ((TrialRecorder, RECORDER), (ConsoleReporter, CONSOLE)):
        for name in events:
            if name in vars(cls) or hasattr(cls, name):
                timed(cls, name, key)
    for name in ("on_trial_complete", "on_trial_error"):
        original = getattr(ConsoleReporter, name)

        def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            ended[0] += 1
            return _original(*args, **kwargs)

        setattr(ConsoleReporter, name, counting)

    t0 = time.monotonic()

    def sample() -> None:
        while True:
            samples.append((time.monotonic() - t0, ended[0], _rss_kb()))
            time.sleep(1.0)

    threading.Thread(target=sample, daemon=True).start()

    def dump() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        Path(HOOKS_FILE).write_text(
            json.dumps(
                {
                    "spent": spent,
                    "calls": calls,
                    "ended": ended[0],
                    "samples": samples,
                    "peak_rss_kb": _rss_kb("VmHWM"),
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                }
            )
        )

    atexit.register(dump)
    from dynconv.cli import main

    return main(argv)


# ------------------------------------------------------------------------------------ the benchmark


def tiny_spec(workdir: Path, dataset: Path, trials: int) -> dict[str, Any]:
    """The tests' tiny study (tests/conftest.py) with 1 epoch, N trials and no evaluation."""
    return {
        "study": "scale",
        "model": {"name": "resnet18_dynamic", "args": {"stem": "small", "width": 4}},
        "data": {"root": str(dataset), "image_size": 16, "cache_dir": str(workdir / "cache")},
        "train": {"epochs": 1, "batch_size": 16, "channel_drop": 0.3},
        "search": {
            "space": {
                "lr": {"type": "loguniform", "low": 0.01, "high": 0.2},
                "augment_strength": {"type": "uniform", "low": 0.0, "high": 0.5},
            },
            "num_samples": trials,
            "seed": 0,
        },
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.1},
        "evaluate": {"enabled": False},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir}/mlflow.db"},
        "storage_path": str(workdir / "ray_results"),
    }


def run_one(trials: int, dataset: Path, workdir: Path, env_extra: dict[str, str]) -> dict[str, Any]:
    """One study of `trials` tiny trials through the CLI; its console and the driver's figures."""
    import yaml

    spec = workdir / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(workdir, dataset, trials)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cli", "tune", str(spec)]
    t0 = time.monotonic()
    stamps: list[float] = []
    lines: list[str] = []  # as `wc -l` counts them (a carriage return does not end a line)
    with (workdir / "console.txt").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            stamps.append(time.monotonic() - t0)
            lines.append(raw.decode(errors="replace"))
            log.write(lines[-1])
        code = proc.wait()
    wall = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"dynconv tune exited with {code}; console: {workdir / 'console.txt'}")
    hooks = json.loads((workdir / HOOKS_FILE).read_text())
    trial_lines = [i for i, ln in enumerate(lines) if TRIAL_LINE in ln or PROGRESS in ln]
    first, last = (trial_lines[0], trial_lines[-1]) if trial_lines else (0, len(lines) - 1)
    gaps = [b - a for a, b in itertools.pairwise(stamps[first : last + 1])]
    return {
        "trials": trials,
        "wall": wall,
        "lines": len(lines),
        "trial_lines": sum(TRIAL_LINE in ln for ln in lines),
        "progress_lines": sum(PROGRESS in ln for ln in lines),
        "longest_silence": max(gaps, default=0.0),
        "named": {
            "failed": sum("FAILED" in ln for ln in lines),
            "diverged": sum("DIVERGED" in ln for ln in lines),
        },
        "tune_seconds": study_metric(workdir, "tune_seconds"),
        **hooks,
    }


def study_metric(workdir: Path, name: str) -> float:
    """A metric of the study run (its timings) from the study's MLflow store."""
    from dynconv.tracking.layout import find_runs
    from dynconv.tracking.store import client

    uri = f"sqlite:///{workdir}/mlflow.db"
    exp = client(uri).get_experiment_by_name("scale")
    [study] = find_runs(uri, exp.experiment_id, role="study")
    return float(study.data.metrics.get(name, float("nan")))


def rss_slope_kb(samples: list[list[float]]) -> float:
    """KB of driver RSS per trial ended: least squares over the second half of the trials (start-up and
    imports are done by then)."""
    ended = max((s[1] for s in samples), default=0)
    pts = [(s[1], s[2]) for s in samples if s[1] >= ended / 2]
    if len(pts) < 3 or len({x for x, _ in pts}) < 2:
        return float("nan")
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def tables(results: list[dict[str, Any]]) -> tuple[str, str]:
    from common import markdown_table

    rows = []
    for r in results:
        n = r["trials"]
        rows.append(
            [
                f"{n:,}",
                f"{r['lines']:,}",
                f"{r['trial_lines']:,} / {r['progress_lines']}",
                f"{r['longest_silence']:.0f}",
                f"{r['wall']:,.0f}",
                f"{r['tune_seconds']:,.0f}",
                f"{r['tune_seconds'] / n:.2f}",
                f"{r['cpu_seconds'] / n:.2f}",
                f"{r['peak_rss_kb'] / 1024:,.0f}",
                f"{rss_slope_kb(r['samples']):.0f}" if n >= SLOPE_FROM else "-",
            ]
        )
    head = [
        "trials",
        "console lines",
        "trial / progress lines",
        "longest silence, s",
        "wall, s",
        "Tune phase, s",
        "Tune phase per trial, s",
        "driver CPU per trial, s",
        "driver peak RSS, MB",
        "driver RSS per trial, KB",
    ]
    main = markdown_table(head, rows)
    keys = [k for k in HOOKS if any(k in r["spent"] for r in results)]
    split = markdown_table(
        ["driver CPU, ms per trial", *(f"{r['trials']:,} trials" for r in results)],
        [[k, *(f"{1000 * r['spent'].get(k, 0.0) / r['trials']:.1f}" for r in results)] for k in keys]
        + [["(state saves)", *(str(r["calls"].get(SAVES, 0)) for r in results)]],
    )
    return main, split


def main() -> None:
    if sys.argv[1:2] == ["--cli"]:
        sys.exit(cli_with_hooks(sys.argv[2:]))
    from common import docs_section, machine_info, write_docs_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", default="4,48,500,2000", help="study sizes, comma-separated")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the study")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs' folders here")
    parser.add_argument("--quick", action="store_true", help="smoke run: one study of 12 trials")
    parser.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick and args.write_docs:
        parser.error("--quick is a smoke run; it does not write to the docs")
    sizes = [12] if args.quick else [int(n) for n in args.trials.split(",")]
    env_extra = dict(e.split("=", 1) for e in args.env)
    print(f"machine: {machine_info()}", flush=True)
    from dynconv.data.synth import write_synthetic

    results = []
    with tempfile.TemporaryDirectory(prefix="dynconv_scale_") as tmp:
        base = (args.keep or Path(tmp)).resolve()
        dataset = write_synthetic(base / "data", classes=3, per_class=40, size=16, seed=0)
        for n in sizes:
            workdir = base / f"n{n}"
            workdir.mkdir(parents=True, exist_ok=True)
            load = os.getloadavg()[0]
            r = run_one(n, dataset, workdir, env_extra)
            r["load_before"] = load
            results.append(r)
            tune_s, slope = r["tune_seconds"], rss_slope_kb(r["samples"])
            print(
                f"{n} trials: {r['lines']} lines, wall {r['wall']:.0f} s, Tune phase {tune_s:.0f} s "
                f"({tune_s / n:.2f} s/trial), driver CPU {r['cpu_seconds'] / n:.2f} s/trial, peak RSS "
                f"{r['peak_rss_kb'] / 1024:.0f} MB, RSS slope {slope:.1f} KB/trial, longest silence "
                f"{r['longest_silence']:.0f} s, load before {load:.2f}",
                flush=True,
            )
            (workdir / "result.json").write_text(json.dumps(r))
    main_table, split = tables(results)
    print("\n" + main_table + "\n\n" + split)
    if args.write_docs:
        intro = __doc__.split("\n\n")[1]
        write_docs_section(docs_section(SECTION, intro, main_table + "\n\n" + split))


if __name__ == "__main__":
    main()
