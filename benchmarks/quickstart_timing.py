"""Quickstart wall-clock and trial start-up benchmark (run by hand, not a timed test): README command 1.

Runs the quickstart study as `make quickstart` does once the virtual environment exists (`dynconv tune
tune_jobs/quickstart.yaml`), as a subprocess in a fresh temporary working directory, so the synthetic
dataset, its cache, the MLflow store and the Ray results are all created from scratch, as on a first run;
`--repeats N` (default 3) does that N times and reports the median and range of every figure. Installing
the virtual environment (`make`'s first step, ~3 minutes, once) is not timed.

The subprocess is this script in `--cli` mode: it calls `dynconv.cli.main` (what the `dynconv` console
script runs) after hooking two private methods of Ray Tune's `TuneController` (Ray 2.60) to note, per
trial, when Tune schedules the trial's actor ("Tune starts the trial") and when that actor is up. The
hooks only append a line to a file; the CLI runs unchanged.

The wall-clock is split in four parts from the driver's own clock (the `--cli` hooks also note when
`dynconv.tune.study` starts and ends the search and the evaluation): start-up (command start to the
search's start), search (the Tune phase), evaluation, and summary (everything after: results, the table,
the study run's description, Ray's shutdown, exit). Finer phases come from the study's own timings, which
`run_study` logs as metrics of the study's MLflow parent run: data preparation (synthetic set written +
decode-once cache), Ray start-up, the Tune phase (trials) and the channel-subset evaluation. The rest is
interpreter start, imports, MLflow set-up, the summary and shutdown. Trial start-up = from Tune starting
the trial to its first training step, where the first step's time is the first epoch's MLflow timestamp
minus that epoch's duration (`epoch_seconds`, measured by the loop from its first step); it splits into:
the trial actor starting (process, unpickling the trainable: imports), the trial function until its
MLflow run exists (MLflow import and run creation), and the rest until the first step (Ray Train
controller, worker group and worker imports when the trial uses a `TorchTrainer`; model, optimizer and
data set-up in any case).
Run it on a machine where no other Ray is running: like the README command, the study then starts its
own local Ray (with another one running, `ray.init()` would attach to it).

    .venv/bin/python benchmarks/quickstart_timing.py --write-docs     # 3 fresh runs, ~3-6 min on 2 cores
    .venv/bin/python benchmarks/quickstart_timing.py --quick          # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import REPO, docs_section, machine_info, markdown_table, write_docs_section

SECTION = "Quickstart wall-clock"
GOAL_SECONDS = 60.0
GOAL_STARTUP_SECONDS = 5.0
TRIAL_CLOCK_FILE = "trial_clock.jsonl"
DRIVER = SimpleNamespace(trial_id="driver")  # the clock's entries of the study driver's own steps
QUICK_OVERRIDES = [
    "search.num_samples=2",
    "train.epochs=2",
    "scheduler.grace_period=1",
    "data.synthetic.per_class=20",
    "evaluate.subsets=[RGB,R]",
]
IMPORTS = (
    "import torch, ray, mlflow, optuna, fvcore, pydantic; from ray import tune, train; "
    "import ray.train.torch; import dynconv.cli, dynconv.tune.study, dynconv.tune.study_evaluation"
)


def cli_with_trial_clock(argv: list[str]) -> int:
    """`dynconv ARGV`, noting when Tune schedules each trial's actor and when the actor is up."""
    from ray.tune.execution.tune_controller import TuneController

    clock = Path(TRIAL_CLOCK_FILE).resolve()
    schedule, started = TuneController._schedule_trial_actor, TuneController._actor_started

    def note(event: str, trial: Any) -> None:  # trial: a Tune trial, or DRIVER
        with clock.open("a") as f:
            f.write(json.dumps({"event": event, "trial_id": trial.trial_id, "t": time.time()}) + "\n")

    def on_schedule(self: Any, trial: Any) -> Any:
        note("scheduled", trial)
        return schedule(self, trial)

    def on_started(self: Any, tracked_actor: Any, *args: Any, **kwargs: Any) -> Any:
        trial = self._actor_to_trial.get(tracked_actor)
        if trial is not None:
            note("actor_started", trial)
        return started(self, tracked_actor, *args, **kwargs)

    TuneController._schedule_trial_actor = on_schedule
    TuneController._actor_started = on_started
    import dynconv.tune.study as study

    def noting(name: str, step: str) -> None:  # the driver's steps: when the search and evaluation ran
        original = getattr(study, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            note(f"{step}_start", DRIVER)
            try:
                return original(*args, **kwargs)
            finally:
                note(f"{step}_end", DRIVER)

        setattr(study, name, wrapper)

    noting("_fit_tuner", "search")
    noting("_evaluate", "evaluate")
    from dynconv.cli import main

    return main(argv)


def run_cli(spec: Path, workdir: Path, overrides: list[str], log: Path) -> tuple[float, float]:
    """Run `dynconv tune SPEC` (through `--cli`) in `workdir`, tee its output to `log`; its wall-clock
    seconds and its start (epoch seconds, the trial clock's time)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the quickstart's default store: ./mlflow.db in the workdir
    args = ["tune", str(spec), *(a for o in overrides for a in ("--set", o))]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cli", *args]
    print("$ dynconv " + " ".join(args), flush=True)
    started = time.time()
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
    return wall, started


def trial_clock(workdir: Path) -> dict[str, dict[str, float]]:
    """trial id → {event: first time} from the `--cli` hooks."""
    out: dict[str, dict[str, float]] = {}
    for line in (workdir / TRIAL_CLOCK_FILE).read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["trial_id"], {}).setdefault(row["event"], row["t"])
    return out


def study_phases(tracking_uri: str, clock: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The newest study run's timings and its trials' start-up phases and epoch times, from MLflow."""
    from dynconv.tracking.layout import TAG_PARENT, TAG_TRIAL_ID, find_runs
    from dynconv.tracking.store import client

    c = client(tracking_uri)
    exp = c.get_experiment_by_name("quickstart")
    if exp is None:
        raise SystemExit(f"no 'quickstart' experiment in {tracking_uri}")
    parent = find_runs(tracking_uri, exp.experiment_id, role="study")[0]
    out: dict[str, Any] = dict(parent.data.metrics)
    pid = parent.info.run_id
    trials = [
        r
        for r in find_runs(tracking_uri, exp.experiment_id, role="trial")
        if r.data.tags.get(TAG_PARENT) == pid
    ]
    starts: list[dict[str, float]] = []
    epochs, epoch_seconds = 0, 0.0
    for r in trials:
        history = sorted(c.get_metric_history(r.info.run_id, "epoch_seconds"), key=lambda m: m.timestamp)
        times = clock.get(r.data.tags.get(TAG_TRIAL_ID, ""), {})
        if not history or "scheduled" not in times:
            continue
        epochs += len(history)
        epoch_seconds += sum(m.value for m in history)
        first_step = history[0].timestamp / 1000 - history[0].value
        run_created = r.info.start_time / 1000
        actor_up = times.get("actor_started", times["scheduled"])
        starts.append(
            {
                "scheduled": times["scheduled"],
                "startup": first_step - times["scheduled"],
                "actor": actor_up - times["scheduled"],
                "to_run": run_created - actor_up,
                "to_step": first_step - run_created,
            }
        )
    out["trials"] = len(trials)
    out["trial_epochs"] = epochs
    out["epoch_seconds_sum"] = epoch_seconds
    out["trial_starts"] = sorted(starts, key=lambda s: s["scheduled"])
    for key in ("startup", "actor", "to_run", "to_step"):
        values = [s[key] for s in starts]
        out[f"{key}_median"] = statistics.median(values) if values else float("nan")
    out["startup_sum"] = sum(s["startup"] for s in starts)
    return out


def driver_split(steps: dict[str, float], started: float, wall: float) -> dict[str, float]:
    """The command's wall-clock in four: start-up (command start to the search's start: interpreter,
    imports, data, MLflow, Ray), search (the Tune phase), evaluation, and summary (the rest after the
    search: results, table, description, MLflow writes, Ray's shutdown, exit)."""
    search = steps["search_end"] - steps["search_start"]
    evaluate = steps.get("evaluate_end", 0.0) - steps.get("evaluate_start", 0.0)
    startup = steps["search_start"] - started
    return {
        "split_startup": startup,
        "split_search": search,
        "split_evaluation": evaluate,
        "split_summary": wall - startup - search - evaluate,
    }


def import_seconds() -> float:
    """Wall-clock of a fresh interpreter importing what the study driver imports (warm file cache)."""
    code = f"import time; t = time.perf_counter(); {IMPORTS}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def median_range(values: list[float]) -> str:
    """`median [min–max]` (just the value for one repeat)."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.1f}"
    return f"{med:,.1f} [{min(values):,.1f}–{max(values):,.1f}]"


def rest_seconds(r: dict[str, Any]) -> float:
    known = ("data_seconds", "ray_start_seconds", "tune_seconds", "evaluate_seconds")
    return r["wall"] - sum(r.get(k, 0.0) for k in known)


def tables(results: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
    """(phase table, per-trial start-up table, facts) over the repeats."""

    def row(name: str, fn) -> list[str]:
        return [name, median_range([fn(r) for r in results])]

    phases = [
        row("data preparation (synthetic set + cache)", lambda r: r.get("data_seconds", float("nan"))),
        row("Ray start-up", lambda r: r.get("ray_start_seconds", float("nan"))),
        row("training: Tune phase (all trials)", lambda r: r.get("tune_seconds", float("nan"))),
        row("… trial start-up, summed over trials", lambda r: r["startup_sum"]),
        row("… epochs (train + val), summed over trials", lambda r: r["epoch_seconds_sum"]),
        row("evaluation (best trial × channel subsets)", lambda r: r.get("evaluate_seconds", float("nan"))),
        row("rest: interpreter, imports, MLflow set-up, summary, shutdown", rest_seconds),
        ["**total wall-clock**", f"**{median_range([r['wall'] for r in results])}**"],
    ]
    n = len(results)
    phase_table = markdown_table(["phase", f"seconds, median [range] of {n} run(s)"], phases)
    parts = [
        row(
            "start-up: command start → search starts (imports, data, MLflow, Ray)",
            lambda r: r["split_startup"],
        ),
        row("search: the Tune phase (4 trials)", lambda r: r["split_search"]),
        row("evaluation: best trial × channel subsets, recorded", lambda r: r["split_evaluation"]),
        row("summary: table, study description, MLflow, Ray shutdown, exit", lambda r: r["split_summary"]),
        ["**total wall-clock**", f"**{median_range([r['wall'] for r in results])}**"],
    ]
    phase_table = (
        markdown_table(["part of the command", f"seconds, median [range] of {n} run(s)"], parts)
        + "\n\n"
        + phase_table
    )
    every = [s for r in results for s in r["trial_starts"]]
    split = [
        ("Tune schedules the trial → trial actor up", "actor"),
        ("actor up → trial's MLflow run created", "to_run"),
        ("MLflow run created → first training step", "to_step"),
        ("**Tune starts the trial → first training step**", "startup"),
    ]
    start_rows = [
        [name, median_range([s[key] for s in every]), median_range([r[f"{key}_median"] for r in results])]
        for name, key in split
    ]
    start_table = markdown_table(
        ["trial start-up phase", f"s, median [range] over all {len(every)} trials",
         f"s, median of each run's median [range] ({n} runs)"],
        start_rows,
    )  # fmt: skip
    order = " · ".join("/".join(f"{s['startup']:.1f}" for s in r["trial_starts"]) for r in results)
    facts = [
        f"trials per run: {results[0]['trials']}, trial-epochs trained: "
        + ", ".join(str(r["trial_epochs"]) for r in results),
        f"start-up of each trial in scheduling order, per run (s): {order}",
        "imports alone (torch, ray, mlflow, optuna, fvcore, dynconv), fresh process, warm cache: "
        f"{import_seconds():.1f} s",
        "the trial rows are summed over trials that run two at a time, so they add up to more than the "
        "Tune phase's wall-clock",
        "installing the virtual environment (first `make quickstart`, ~3 min) is one-off and not timed",
    ]
    return phase_table, start_table, facts


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    wall = statistics.median(r["wall"] for r in results)
    every = [s["startup"] for r in results for s in r["trial_starts"]]
    startup = statistics.median(every) if every else float("nan")
    return [
        f"goal: trial start-up ≤ {GOAL_STARTUP_SECONDS:.0f} s median: {startup:.1f} s, "
        + ("met" if startup <= GOAL_STARTUP_SECONDS else "not met"),
        f"goal: quickstart ≤ {GOAL_SECONDS:.0f} s wall-clock: median {wall:.1f} s, "
        + ("met" if wall <= GOAL_SECONDS else "not met"),
    ]


def main() -> None:
    if sys.argv[1:2] == ["--cli"]:
        sys.exit(cli_with_trial_clock(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO / "tune_jobs" / "quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs (median and range reported)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: tmp)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 tiny trials, 2 epochs, 1 run")
    parser.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick and args.write_docs:
        parser.error("--quick is a smoke run; it does not write to the docs")
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.set]
    repeats = 1 if args.quick else args.repeats
    spec = args.spec.resolve()
    print(f"machine: {machine_info()}", flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="dynconv_quickstart_") as tmp:
        base = (args.workdir or Path(tmp)).resolve()
        for i in range(repeats):
            workdir = base / f"run{i + 1}"
            workdir.mkdir(parents=True, exist_ok=True)
            wall, started = run_cli(spec, workdir, overrides, workdir / "run.log")
            clock = trial_clock(workdir)
            phases = study_phases(f"sqlite:///{workdir / 'mlflow.db'}", clock)
            phases["wall"] = wall
            phases.update(driver_split(clock.get(DRIVER.trial_id, {}), started, wall))
            results.append(phases)
            print(f"run {i + 1}: wall-clock {wall:.1f} s, trial start-ups (s): "
                  + ", ".join(f"{s['startup']:.1f}" for s in phases["trial_starts"]), flush=True)  # fmt: skip

    phase_table, start_table, facts = tables(results)
    goals = verdicts(results)
    print("\n" + phase_table + "\n\n" + start_table)
    for f in [*facts, *goals]:
        print("- " + f)
    if args.write_docs:
        intro = (
            "`benchmarks/quickstart_timing.py` times README command 1 (`make quickstart`, i.e. "
            "`dynconv tune tune_jobs/quickstart.yaml` once the virtual environment exists) end to end as a "
            "subprocess, each repeat in a fresh directory (synthetic set, cache, MLflow store, Ray results "
            "created from scratch). The phases are the study's own timings (logged to its MLflow parent "
            "run); trial start-up runs from Tune scheduling the trial's actor (noted by a hook in the "
            "driver) to the trial's first training step (its first epoch's MLflow timestamp minus the "
            "epoch's duration)."
        )
        body = phase_table + "\n\n" + start_table + "\n\n" + "\n".join("- " + f for f in [*facts, *goals])
        write_docs_section(docs_section(SECTION, intro, body))


if __name__ == "__main__":
    main()
