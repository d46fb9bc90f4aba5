"""HPO efficiency benchmark (run by hand, not a timed test): TPE + ASHA against random search without early
stopping, at equal budgets of trial-epochs, over several seeds, on the embedded synthetic dataset.

Both arms are real `dynconv tune` studies (`dynconv.tune.study.run_study`) of a spec derived from
`tune_jobs/quickstart.yaml` (`--spec`), differing only in:

    A  search.algorithm=tpe     scheduler.name=asha   (Optuna TPE, ASHA stops weak trials early)
    B  search.algorithm=random  scheduler.name=none   (every trial trains all epochs)

B's budget is its trial count x epochs. A gets enough trials that ASHA's expected consumption
(grace period, reduction factor, epochs) matches that budget; what each run really consumed is counted,
not assumed: every trained epoch logs one `val_acc` point to the trial's MLflow run, so the run's
`val_acc` histories, merged and ordered by their timestamps, give "best validation accuracy so far"
against "trial-epochs consumed so far". Seeds set `search.seed` and `train.seed`; evaluation is off.
Every run has its own MLflow store and Ray storage; one local Ray serves all runs.

Outputs: per-seed and per-arm tables (final best, budget used, the fraction of B's budget after which A
first reaches B's final best - the goal is <= 40 %), the best hyperparameters of each run, and a plot of
best-so-far against budget (mean over seeds, thin line per seed), `docs/img/hpo_efficiency.png`.

    .venv/bin/python benchmarks/hpo_efficiency.py --write-docs       # 3 seeds, ~10-15 min on 2 cores
    .venv/bin/python benchmarks/hpo_efficiency.py --quick            # smoke run (~1-2 min)
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    REPO,
    docs_section,
    machine_info,
    markdown_table,
    start_ray,
    usable_cores,
    write_docs_section,
)

SECTION = "HPO efficiency: TPE + ASHA against random search"
PLOT = REPO / "docs" / "img" / "hpo_efficiency.png"
ARMS: dict[str, dict[str, Any]] = {
    "tpe_asha": {
        "label": "TPE + ASHA",
        "overrides": ["search.algorithm=tpe", "scheduler.name=asha"],
        "color": "tab:blue",
    },
    "random": {
        "label": "random, no early stopping",
        "overrides": ["search.algorithm=random", "scheduler.name=none"],
        "color": "tab:orange",
    },
}
GOAL_FRACTION = 0.40


@dataclass
class Run:
    """One study: its epoch events (timestamp ms, trial run id, epoch, val_acc) in the order they happened."""

    arm: str
    seed: int
    samples: int
    wall_seconds: float
    events: list[tuple[int, str, int, float]] = field(default_factory=list)
    best_params: dict[str, Any] = field(default_factory=dict)
    trials_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def budget(self) -> int:
        return len(self.events)

    def curve(self) -> list[float]:
        """Best val acc after each consumed trial-epoch (index k: after k + 1 trial-epochs)."""
        out, best = [], -math.inf
        for _, _, _, acc in self.events:
            best = max(best, acc)
            out.append(best)
        return out

    def best_at(self, budget: int) -> float | None:
        """Best val acc within the first `budget` trial-epochs (the run's final best if it used fewer)."""
        c = self.curve()
        if not c or budget < 1:
            return None
        return c[min(budget, len(c)) - 1]

    def budget_to_reach(self, target: float) -> int | None:
        """Trial-epochs consumed when the best-so-far first reached `target` (None: never)."""
        for k, value in enumerate(self.curve(), start=1):
            if value >= target - 1e-12:
                return k
        return None


def asha_expected_epochs(epochs: int, grace: int, reduction: float) -> float:
    """Expected epochs of one ASHA trial when each rung promotes 1/reduction of the trials reaching it."""
    expected, prob, prev, milestone = 0.0, 1.0, 0, grace
    while milestone < epochs:
        expected += prob * (milestone - prev)
        prev, prob, milestone = milestone, prob / reduction, milestone * reduction
    return expected + prob * (epochs - prev)


def epoch_events(tracking_uri: str, trials: list) -> list[tuple[int, str, int, float]]:
    """Every trained epoch of every trial, from the trials' MLflow `val_acc` histories, by time logged."""
    from dynconv.tracking.store import client

    c = client(tracking_uri)
    events = []
    for trial in trials:
        if trial.run_id is None:
            print(f"warning: trial {trial.trial_id} has no MLflow run; its epochs are not counted")
            continue
        for m in c.get_metric_history(trial.run_id, "val_acc"):
            events.append((int(m.timestamp), trial.run_id, int(m.step), float(m.value)))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return events


def run_one(spec_path: Path, arm: str, seed: int, samples: int, overrides: list[str], workdir: Path) -> Run:
    """One study of `arm` with `seed`, in its own MLflow store and Ray storage under `workdir`."""
    from dynconv.spec import load_spec
    from dynconv.tune.study import run_study

    d = workdir / f"{arm}-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    spec = load_spec(
        spec_path,
        overrides=[
            *overrides,
            *ARMS[arm]["overrides"],
            f"study=hpo-{arm}-seed{seed}",
            f"search.num_samples={samples}",
            f"search.seed={seed}",
            f"train.seed={seed}",
            "evaluate.enabled=false",
            f"mlflow.tracking_uri=sqlite:///{d / 'mlflow.db'}",
            f"storage_path={d / 'ray_results'}",
        ],
    ).resolved()
    print(
        f"\n=== {ARMS[arm]['label']}, seed {seed}: {samples} trials x up to {spec.train.epochs} epochs",
        flush=True,
    )
    t0 = time.perf_counter()
    result = run_study(spec, address="local", evaluate=False)
    wall = time.perf_counter() - t0
    run = Run(arm, seed, samples, wall, epoch_events(result.tracking_uri, result.trials))
    best = result.best
    if best is not None:
        run.best_params = {**best.params, "val_acc": best.value}  # the last val_acc (ranked metric)
    for t in result.trials:
        run.trials_by_status[t.status] = run.trials_by_status.get(t.status, 0) + 1
    counted = sum(t.epochs for t in result.trials)
    if counted != run.budget:
        print(f"note: Tune reported {counted} trial-epochs, MLflow holds {run.budget} (retries count twice)")
    return run


def _mean_sd(values: list[float | None], fmt: str = ".3f") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{statistics.mean(vals):{fmt}} ± {statistics.stdev(vals):{fmt}}"


def _fmt(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def summarise(runs: list[Run], seeds: list[int]) -> tuple[str, list[str]]:
    """(markdown tables, goal lines)."""
    by = {(r.arm, r.seed): r for r in runs}
    per_seed, fractions = [], []
    for seed in seeds:
        a, b = by.get(("tpe_asha", seed)), by.get(("random", seed))
        if a is None or b is None or not b.budget:
            continue
        target = b.best_at(b.budget)
        reach = a.budget_to_reach(target)
        frac = reach / b.budget if reach is not None else None
        fractions.append(frac)
        per_seed.append(
            [
                str(seed),
                f"{b.samples} / {b.budget}",
                _fmt(target),
                f"{a.samples} / {a.budget}",
                _fmt(a.best_at(b.budget)),
                "not reached" if reach is None else f"{reach} trial-epochs",
                "-" if frac is None else f"**{frac:.0%}**",
            ]
        )
    seed_table = markdown_table(
        [
            "seed",
            "random: trials / trial-epochs",
            "random: final best",
            "TPE+ASHA: trials / trial-epochs",
            "TPE+ASHA: best within random's budget",
            "TPE+ASHA reaches random's final best after",
            "fraction of random's budget",
        ],
        per_seed,
    )

    arm_rows = []
    budgets_b = [by[("random", s)].budget for s in seeds if ("random", s) in by]
    ref_budget = round(statistics.mean(budgets_b)) if budgets_b else None
    for arm, info in ARMS.items():
        rs = [by[(arm, s)] for s in seeds if (arm, s) in by]
        if not rs:
            continue
        statuses: dict[str, int] = {}
        for r in rs:
            for k, v in r.trials_by_status.items():
                statuses[k] = statuses.get(k, 0) + v
        at40 = [r.best_at(math.floor(GOAL_FRACTION * ref_budget)) for r in rs] if ref_budget else []
        arm_rows.append(
            [
                info["label"],
                str(rs[0].samples),
                _mean_sd([float(r.budget) for r in rs], ".1f"),
                _mean_sd([r.best_at(ref_budget or r.budget) for r in rs]),
                _mean_sd(at40),
                ", ".join(f"{v} {k.lower()}" for k, v in sorted(statuses.items())),
                _mean_sd([r.wall_seconds for r in rs], ".0f"),
            ]
        )
    arm_table = markdown_table(
        [
            "arm",
            "trials per seed",
            "trial-epochs used",
            f"best val acc within {ref_budget} trial-epochs",
            f"best val acc within {GOAL_FRACTION:.0%} of it",
            "trial outcomes (all seeds)",
            "wall-clock s per study",
        ],
        arm_rows,
        align="lrrrrlr",
    )

    params_rows = []
    for r in sorted(runs, key=lambda r: (r.arm, r.seed)):
        p = r.best_params
        params_rows.append(
            [ARMS[r.arm]["label"], str(r.seed)]
            + [
                _fmt(p.get(k), ".4g") if isinstance(p.get(k), float) else str(p.get(k, "-"))
                for k in _keys(runs)
            ]
            + [_fmt(p.get("val_acc"))]
        )
    params_table = markdown_table(
        ["arm", "seed", *_keys(runs), "last val acc"], params_rows, align="ll" + "r" * (len(_keys(runs)) + 1)
    )

    goals = []
    reached = [f for f in fractions if f is not None]
    if fractions:
        ok = sum(1 for f in reached if f <= GOAL_FRACTION)
        median = statistics.median([f if f is not None else math.inf for f in fractions])
        goals.append(
            f"TPE + ASHA reached random search's final best within ≤ {GOAL_FRACTION:.0%} of its budget in "
            f"{ok} of {len(fractions)} seeds (median fraction: "
            f"{'not reached' if math.isinf(median) else f'{median:.0%}'}); goal "
            f"{'met' if ok == len(fractions) else 'not met'}."
        )
    tables = (
        "Per arm (mean ± sd over seeds):\n\n"
        + arm_table
        + "\n\nPer seed:\n\n"
        + seed_table
        + "\n\nBest trial of each study (use these to set the shipped specs' defaults and ranges):\n\n"
        + params_table
    )
    return tables, goals


def _keys(runs: list[Run]) -> list[str]:
    keys: list[str] = []
    for r in runs:
        for k in r.best_params:
            if k != "val_acc" and k not in keys:
                keys.append(k)
    return keys


def plot(runs: list[Run], seeds: list[int], out: Path) -> None:
    """Best-so-far against trial-epochs: thin line per seed, thick mean over seeds, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    b_budgets = [r.budget for r in runs if r.arm == "random" and r.budget]
    for arm, info in ARMS.items():
        rs = [r for r in runs if r.arm == arm and r.budget]
        if not rs:
            continue
        for r in rs:
            c = r.curve()
            ax.step(range(1, len(c) + 1), c, where="post", color=info["color"], alpha=0.3, lw=0.8)
        horizon = max(r.budget for r in rs)
        xs = list(range(1, horizon + 1))
        mean = [statistics.mean(r.best_at(x) for r in rs) for x in xs]
        ax.step(
            xs, mean, where="post", color=info["color"], lw=2.2, label=f"{info['label']} (mean of {len(rs)})"
        )
    if b_budgets:
        budget = statistics.mean(b_budgets)
        finals = [r.best_at(r.budget) for r in runs if r.arm == "random" and r.budget]
        ax.axhline(
            statistics.mean(finals), color="tab:orange", ls="--", lw=1, label="random: mean final best"
        )
        ax.axvline(
            GOAL_FRACTION * budget,
            color="grey",
            ls=":",
            lw=1,
            label=f"{GOAL_FRACTION:.0%} of random's budget",
        )
        ax.axvline(budget, color="grey", ls="-", lw=0.6)
    ax.set_xlabel("trial-epochs consumed")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"TPE + ASHA vs random search, {len(seeds)} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")


def _link(path: Path) -> str:
    """`path` as a link from docs/benchmarks.md (relative when it lies under docs/)."""
    try:
        return str(path.resolve().relative_to(REPO / "docs"))
    except ValueError:
        return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=REPO / "tune_jobs" / "quickstart.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--random-samples", type=int, default=8, help="trials of arm B (random)")
    parser.add_argument(
        "--tpe-samples", type=int, default=None, help="trials of arm A (default: matches B's budget)"
    )
    parser.add_argument("--epochs", type=int, default=6, help="train.epochs of every trial")
    parser.add_argument("--per-class", type=int, default=120, help="synthetic images per class")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more spec overrides")
    parser.add_argument("--tpe-startup", type=int, default=None, help="sets search.tpe_startup_trials")
    parser.add_argument("--ray-cpus", type=int, default=None, help="ray.init(num_cpus=...) (default: cores)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep stores and data here (default: tmp)")
    parser.add_argument(
        "--plot", type=Path, default=None, help=f"PNG path (default: {PLOT.relative_to(REPO)})"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 + 2 tiny trials, 2 epochs")
    parser.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick and args.write_docs:
        parser.error("--quick is a smoke run; it does not write to the docs")

    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = [f"train.epochs={args.epochs}", f"data.synthetic.per_class={args.per_class}"]
    if args.quick:
        seeds = seeds[:1]
        args.random_samples, args.tpe_samples = 2, 2
        overrides = ["train.epochs=2", "scheduler.grace_period=1", "data.synthetic.per_class=20"]
    overrides += args.set
    if args.tpe_startup is not None:
        overrides.append(f"search.tpe_startup_trials={args.tpe_startup}")

    from dynconv.spec import load_spec

    base = load_spec(args.spec, overrides=overrides)
    s = base.scheduler
    expected = asha_expected_epochs(base.train.epochs, s.grace_period, s.reduction_factor)
    budget = args.random_samples * base.train.epochs
    tpe_samples = args.tpe_samples or math.ceil(budget / expected)
    print(f"machine: {machine_info()}")
    print(
        f"budget: random {args.random_samples} x {base.train.epochs} = {budget} trial-epochs; "
        f"ASHA (grace {s.grace_period}, factor {s.reduction_factor:g}) expects {expected:.2f} epochs per "
        f"trial -> TPE + ASHA gets {tpe_samples} trials",
        flush=True,
    )

    start_ray(args.ray_cpus or usable_cores())
    import ray

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="dynconv_hpo_") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        data_overrides = [f"data.synthetic.dir={workdir / 'synthetic'}"]
        try:
            for seed in seeds:
                for arm, samples in (("random", args.random_samples), ("tpe_asha", tpe_samples)):
                    runs.append(run_one(args.spec, arm, seed, samples, overrides + data_overrides, workdir))
        finally:
            ray.shutdown()
    out = args.plot or (Path(tempfile.gettempdir()) / "dynconv_hpo_quick.png" if args.quick else PLOT)
    plot(runs, seeds, out)

    tables, goals = summarise(runs, seeds)
    print("\n" + tables)
    for g in goals:
        print("- " + g)
    if args.write_docs:
        intro = (
            "`benchmarks/hpo_efficiency.py` runs real `dynconv tune` studies of `tune_jobs/quickstart.yaml` "
            f"({base.model.name} {base.model.args}, {base.data.image_size} px, {base.train.epochs} epochs, "
            f"synthetic set {base.data.synthetic.classes} classes × {args.per_class} images) in two arms: "
            "TPE + ASHA (as shipped) and random search with every trial trained to the end, at equal "
            f"budgets of trial-epochs ({args.random_samples} random trials × {base.train.epochs} epochs; "
            f"{tpe_samples} TPE trials, ASHA's expected {expected:.2f} epochs each), seeds "
            f"{', '.join(map(str, seeds))} (`search.seed` = `train.seed`). The budget a study consumed is "
            "counted from MLflow: each trained epoch logs one `val_acc` point; merged in time order they "
            "give the best validation accuracy so far against trial-epochs consumed."
            + f" TPE start-up trials: {base.search.tpe_startup_trials}."
        )
        body = (
            tables
            + "\n\n"
            + "\n".join("- " + g for g in goals)
            + f"\n\n![best val acc so far against trial-epochs]({_link(out)})\n"
        )
        write_docs_section(docs_section(SECTION, intro, body))


if __name__ == "__main__":
    main()
