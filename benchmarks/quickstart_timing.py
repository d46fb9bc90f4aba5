"""Quickstart wall-clock benchmark (run by hand, not a timed test): README command 1, phase by phase.

Runs the quickstart study exactly as `make quickstart` does once the virtual environment exists
(`dynconv tune tune_jobs/quickstart.yaml`), as a subprocess in a fresh temporary working directory, so
the synthetic dataset, its cache, the MLflow store and the Ray results are all created from scratch, as
on a first run. With `--runs 2` (default) it then runs it again in the same directory: the second run
reuses the dataset and cache, as a user's second `make quickstart` would. Installing the virtual
environment (`make`'s first step, ~3 minutes, once) is not timed.

The phases come from the study's own timings, which `run_study` logs as metrics of the study's MLflow
parent run: data preparation (synthetic set written + decode-once cache), Ray start-up, the Tune phase
(trials) and the channel-subset evaluation. The rest of the wall-clock is interpreter start, imports,
MLflow set-up, the summary and shutdown. The Tune phase is split further from the trials' MLflow runs:
per trial, start-up = time from the creation of the trial's MLflow run (by the trial actor, once it
runs) to its first logged epoch, minus that epoch's duration (FLOP count, Ray Train controller and
worker group, torch import in the worker, data and model set-up), and the epochs themselves (training +
validation, `epoch_seconds`). Import cost alone is measured in a separate
process afterwards. Run it on a machine where no other Ray is running: like the README command, the study
then starts its own local Ray (with another one running, `ray.init()` would attach to it).

    .venv/bin/python benchmarks/quickstart_timing.py --write-docs     # 2 runs, ~5-6 min on 2 cores
    .venv/bin/python benchmarks/quickstart_timing.py --quick          # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, docs_section, machine_info, markdown_table, write_docs_section

SECTION = "Quickstart wall-clock"
GOAL_SECONDS = 300.0
QUICK_OVERRIDES = [
    "search.num_samples=2",
    "train.epochs=2",
    "scheduler.grace_period=1",
    "data.synthetic.per_class=20",
    "evaluate.subsets=[RGB,R]",
]
IMPORTS = (
    "import torch, ray, mlflow, optuna, fvcore, pydantic; from ray import tune, train; "
    "import ray.train.torch; import dynconv.cli, dynconv.tune.study, dynconv.evaluation.study"
)


def dynconv_command() -> list[str]:
    """The `dynconv` console script next to this interpreter (as `make quickstart` runs it), else -m."""
    script = Path(sys.executable).parent / "dynconv"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dynconv"]


def run_cli(spec: Path, workdir: Path, overrides: list[str], log: Path) -> float:
    """Run `dynconv tune SPEC` in `workdir`, tee its output to `log`; wall-clock seconds."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the quickstart's default store: ./mlflow.db in the workdir
    cmd = [*dynconv_command(), "tune", str(spec), *(a for o in overrides for a in ("--set", o))]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out.write(line)
            sys.stdout.write(line)
        code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"dynconv tune exited with {code}; log: {log}")
    return wall


def study_phases(tracking_uri: str) -> dict[str, Any]:
    """The newest study run's timings and its trials' start-up and epoch times, from MLflow."""
    from dynconv import tracking

    client = tracking.client(tracking_uri)
    exp = client.get_experiment_by_name("quickstart")
    if exp is None:
        raise SystemExit(f"no 'quickstart' experiment in {tracking_uri}")
    parent = tracking.find_runs(tracking_uri, exp.experiment_id, role="study")[0]
    out: dict[str, Any] = dict(parent.data.metrics)
    pid = parent.info.run_id
    trials = [
        r
        for r in tracking.find_runs(tracking_uri, exp.experiment_id, role="trial")
        if r.data.tags.get(tracking.TAG_PARENT) == pid
    ]
    startups, epochs, epoch_seconds = [], 0, 0.0
    for r in trials:
        history = sorted(client.get_metric_history(r.info.run_id, "epoch_seconds"), key=lambda m: m.timestamp)
        if not history:
            continue
        epochs += len(history)
        epoch_seconds += sum(m.value for m in history)
        startups.append((history[0].timestamp - r.info.start_time) / 1000 - history[0].value)
    out["trials"] = len(trials)
    out["trial_epochs"] = epochs
    out["epoch_seconds_sum"] = epoch_seconds
    out["startup_mean"] = statistics.mean(startups) if startups else float("nan")
    out["startup_sum"] = sum(startups)
    return out


def import_seconds() -> float:
    """Wall-clock of a fresh interpreter importing what the study driver imports (warm file cache)."""
    code = f"import time; t = time.perf_counter(); {IMPORTS}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO / "tune_jobs" / "quickstart.yaml")
    parser.add_argument("--runs", type=int, default=2, help="1: first run only; 2: also a second (warm) run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--workdir", type=Path, default=None, help="run here and keep it (default: tmp)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 tiny trials, 2 epochs, 1 run")
    parser.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick and args.write_docs:
        parser.error("--quick is a smoke run; it does not write to the docs")
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.set]
    runs = 1 if args.quick else args.runs
    spec = args.spec.resolve()
    print(f"machine: {machine_info()}", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="dynconv_quickstart_") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        for i in range(runs):
            wall = run_cli(spec, workdir, overrides, workdir / f"run{i + 1}.log")
            phases = study_phases(f"sqlite:///{workdir / 'mlflow.db'}")
            phases["wall"] = wall
            results.append(phases)
    imports = import_seconds()

    labels = ["first run (fresh data)", "second run (data reused)"][: len(results)]
    rows = []

    def row(name: str, key: str | None, fn=None, share: bool = True) -> None:
        cells = []
        for r in results:
            v = fn(r) if fn else r.get(key, float("nan"))
            cells.append(f"{v:,.1f} ({v / r['wall']:.0%})" if share and r["wall"] else f"{v:,.1f}")
        rows.append([name, *cells])

    def rest(r: dict) -> float:
        known = sum(
            r.get(k, 0.0) for k in ("data_seconds", "ray_start_seconds", "tune_seconds", "evaluate_seconds")
        )
        return r["wall"] - known

    row("data preparation (synthetic set + cache)", "data_seconds")
    row("Ray start-up", "ray_start_seconds")
    row("training: Tune phase (all trials)", "tune_seconds")
    row("… trial start-up, summed over trials", "startup_sum", share=False)
    row("… epochs (train + val), summed over trials", "epoch_seconds_sum", share=False)
    row("evaluation (best trial × channel subsets)", "evaluate_seconds")
    row("rest: interpreter, imports, MLflow set-up, summary, shutdown", None, rest)
    rows.append(["**total wall-clock**", *(f"**{r['wall']:,.1f}**" for r in results)])
    table = markdown_table(["phase", *(f"{lbl}, s (share)" for lbl in labels)], rows)
    facts = [
        f"trials: {results[0]['trials']}, trial-epochs trained: {results[0]['trial_epochs']}, "
        f"mean trial start-up {results[0]['startup_mean']:.1f} s (first run)",
        "imports alone (torch, ray, mlflow, optuna, fvcore, dynconv), fresh process, warm cache: "
        f"{imports:.1f} s",
        "the trial rows are summed over trials that run two at a time, so they add up to more than the "
        "Tune phase's wall-clock",
        "installing the virtual environment (first `make quickstart`, ~3 min) is one-off and not timed",
    ]
    first = results[0]["wall"]
    verdict = "met" if first <= GOAL_SECONDS else "not met"
    goal = f"goal ≤ {GOAL_SECONDS / 60:.0f} min: first run {first / 60:.1f} min, {verdict}"
    print("\n" + table)
    for f in [*facts, goal]:
        print("- " + f)
    if args.write_docs:
        intro = (
            "`benchmarks/quickstart_timing.py` times README command 1 (`make quickstart`, i.e. "
            "`dynconv tune tune_jobs/quickstart.yaml` once the virtual environment exists) end to end as a "
            "subprocess in a fresh directory, then a second time in the same directory (dataset and cache "
            "reused). The phases are the study's own timings (logged to its MLflow parent run); the trial "
            "rows come from the trials' MLflow runs."
        )
        body = table + "\n\n" + "\n".join("- " + f for f in [*facts, goal])
        write_docs_section(docs_section(SECTION, intro, body))


if __name__ == "__main__":
    main()
