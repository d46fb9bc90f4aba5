"""The champion of a confirmed study, decided on evidence: configurations x seeds -> means, intervals and a
verdict.

After the search, the study's top-k configurations are trained again with new seeds
(`dynconv.tune.confirm`). The search's own trial is left out of the means: it was chosen *because* it
scored well, so its value is biased upwards (the winner's curse); the new seeds are not.

The rule, fixed here once:

1. Each configuration's score is the mean over its seeds of the ranked metric's last value (the value
   the search ranks on, `dynconv.spec.ranking`), with a 95 % Student-t interval (`stats.mean_interval`).
2. The best mean (in the study's mode) is compared with the runner-up's by Welch's t-test on the
   per-seed values (unequal variances; effect size Hedges' g, positive when the best is better).
3. p < alpha: the best mean is the champion, registered as `@champion`.
4. Otherwise the configurations the best does not significantly beat are tied, and the tie rule picks
   among them: fewer FLOPs, then the better mean worst-subset validation accuracy (`val_acc_worst`, the
   robustness this project is about), then the better mean. Validation, not test: the test split
   measures the champion, it never chooses it. The choice is registered as `@candidate`, and the
   verdict names the criterion that decided it.

Pure: numbers in, numbers and words out (no Ray, no MLflow).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dynconv.data.channels import SUBSET_NAMES
from dynconv.errors import DynconvError
from dynconv.stats import MeanInterval, Welch, mean_interval, welch

TIE_RULE = "fewer FLOPs, then better mean worst-subset validation accuracy, then better mean"


@dataclass
class SeedRun:
    """One confirmation run: a configuration trained with one new seed."""

    run_id: str
    seed: int
    value: float | None  # the last value of the ranked metric
    test_acc: dict[str, float] = field(default_factory=dict)  # subset -> accuracy on the evaluated split
    val_worst: float | None = None  # the last `val_acc_worst`: validation accuracy of its worst subset


@dataclass
class Configuration:
    """One of the search's top-k configurations and its confirmation runs."""

    source_run_id: str  # the search trial's run
    source_name: str
    rank: int  # its rank in the search
    params: dict[str, Any]
    flops: float | None
    runs: list[SeedRun]
    bounds: tuple[float, float] | None = None  # the ranked metric's range (`spec.metrics.metric_bounds`)
    registered_run: str | None = None  # the seed run whose model the registry already holds, if any

    def values(self) -> list[float]:
        return [r.value for r in self.runs if r.value is not None and math.isfinite(r.value)]

    def score(self) -> MeanInterval:
        return mean_interval(self.values(), bounds=self.bounds)

    def test(self, subset: str) -> MeanInterval:
        accs = [r.test_acc[subset] for r in self.runs if subset in r.test_acc]
        return mean_interval(accs, bounds=(0.0, 1.0))

    def subsets(self) -> list[str]:
        return sorted({s for r in self.runs for s in r.test_acc}, key=_subset_order)

    def val_worst(self) -> MeanInterval:
        """The worst-subset validation accuracy over the seeds (what the tie rule compares)."""
        return mean_interval([r.val_worst for r in self.runs if r.val_worst is not None], bounds=(0.0, 1.0))

    def representative(self) -> SeedRun:
        """The model registered for the configuration: the seed run registered before (`registered_run`,
        when it scored: one registry version per configuration, so more seeds change its score, not
        its model), else the seed run whose value is closest to the mean (neither its luckiest nor its
        unluckiest seed)."""
        mean = self.score().mean
        scored = [r for r in self.runs if r.value is not None and math.isfinite(r.value)]
        held = [r for r in scored if r.run_id == self.registered_run]
        if held:
            return held[0]
        return min(scored, key=lambda r: (abs(r.value - mean), r.seed))  # type: ignore[operator]

    def to_json(self) -> dict[str, Any]:
        """The configuration, its seeds and intervals, JSON-ready (NaN where unknown)."""
        s = self.score()
        data = asdict(self)
        return {
            **{k: v for k, v in data.items() if k not in ("runs", "bounds", "registered_run")},
            "seeds": data["runs"],
            "mean": s.mean,
            "low": s.low,
            "high": s.high,
            "n": s.n,
            "test": {sub: self.test(sub)._asdict() for sub in self.subsets()},
        }

    def describe(self) -> str:
        shown = ", ".join(f"{k}={_g(v)}" for k, v in self.params.items())
        return f"{self.source_name} (search rank {self.rank}; {shown})"


@dataclass
class Verdict:
    """Which configuration is the champion, and how sure we are."""

    metric: str
    mode: str
    alpha: float
    champion: Configuration
    best_mean: Configuration
    runner_up: Configuration | None
    test: Welch | None  # best mean vs runner-up
    significant: bool
    rule: str  # what decided: "best mean (significant)", or the tie rule's deciding criterion
    tied: list[str] = field(default_factory=list)  # source run ids tied with the best (not significant)

    @property
    def alias(self) -> str:
        """The registry alias the champion gets: `champion` only on a significant verdict."""
        return "champion" if self.significant else "candidate"

    def oriented_score(self) -> float:
        """The champion's mean, signed so that higher is better (for comparing registered versions)."""
        mean = self.champion.score().mean
        return mean if self.mode == "max" else -mean

    def lines(self) -> list[str]:
        """The verdict in a few lines (console, study description, report)."""
        c, s = self.champion, self.champion.score()
        head = f"champion: {c.describe()}: {self.metric} {_interval(s)} over {s.n} seeds"
        if self.runner_up is None:
            return [
                head,
                "only one configuration was confirmed: nothing to compare it with; registered @candidate",
            ]
        r = self.runner_up
        t = self.test
        if t is None or not math.isfinite(t.p_value):
            test = "Welch's t-test not possible (fewer than 2 scored seeds, or no spread)"
        else:
            test = f"Welch's t-test p={t.p_value:.3g}, Hedges' g={_signed_g(t.hedges_g, self.mode):+.2f}"
        versus = f"runner-up by mean: {r.describe()}: {self.metric} {_interval(r.score())}"
        if self.significant:
            return [head, versus, f"{test}: significant at alpha={self.alpha:g}; registered @champion"]
        best = f"best mean: {self.best_mean.describe()}: {self.metric} {_interval(self.best_mean.score())}"
        return [
            best,
            versus,
            f"{test}: NOT significant at alpha={self.alpha:g} (within the noise of {s.n} seeds)",
            f"{len(self.tied)} configurations tied; the tie rule ({TIE_RULE}) decided by {self.rule}",
            f"{head}; registered @candidate",
        ]

    def one_line(self) -> str:
        """The verdict as one line (the study run's tag)."""
        return " | ".join(self.lines())

    def to_json(self) -> dict[str, Any]:
        """Everything the report needs, JSON-ready (the study run's confirmation artifact)."""

        return {
            "metric": self.metric,
            "mode": self.mode,
            "alpha": self.alpha,
            "champion": self.champion.source_run_id,
            "champion_seed_run": self.champion.representative().run_id,
            "alias": self.alias,
            "significant": self.significant,
            "rule": self.rule,
            "test": None if self.test is None else self.test._asdict(),
            "lines": self.lines(),
        }


def decide(configs: list[Configuration], metric: str, mode: str, alpha: float = 0.05) -> Verdict:
    """The verdict over the confirmed configurations (the rule of the module doc)."""
    scored = [c for c in configs if c.values()]
    if not scored:
        raise DynconvError(f"no confirmation run reported a finite {metric}: nothing to decide")
    sign = 1.0 if mode == "max" else -1.0
    order = sorted(scored, key=lambda c: (-sign * c.score().mean, c.rank))
    best = order[0]
    runner = order[1] if len(order) > 1 else None
    test = welch(best.values(), runner.values()) if runner is not None else None
    significant = test is not None and _beats(test, alpha)
    if significant or runner is None:
        rule = "best mean (significant)" if significant else "best mean (nothing to compare)"
        return Verdict(metric, mode, alpha, best, best, runner, test, significant, rule, [best.source_run_id])
    tied = [c for c in order if c is best or not _beats(welch(best.values(), c.values()), alpha)]
    champion, rule = _tie_break(tied, sign)
    ids = [c.source_run_id for c in tied]
    return Verdict(metric, mode, alpha, champion, best, runner, test, False, rule, ids)


def _beats(test: Welch, alpha: float) -> bool:
    """Whether the best mean's lead is significant (its mean is the better one by construction)."""
    return math.isfinite(test.p_value) and test.p_value < alpha


def _tie_break(tied: list[Configuration], sign: float) -> tuple[Configuration, str]:
    """The tie rule over statistically tied configurations: (the choice, the criterion that decided)."""

    def flops(c: Configuration) -> float:
        return c.flops if c.flops is not None and math.isfinite(c.flops) else math.inf

    def worst(c: Configuration) -> float:
        w = c.val_worst().mean
        return -w if math.isfinite(w) else math.inf

    criteria = [("fewer FLOPs", flops), ("better mean worst-subset validation accuracy", worst)]
    pool = tied
    for name, key in criteria:
        best = min(key(c) for c in pool)
        if any(key(c) != best for c in pool) and math.isfinite(best):
            pool = [c for c in pool if key(c) == best]
            if len(pool) == 1:
                return pool[0], name
    return min(
        pool, key=lambda c: (-sign * c.score().mean, c.rank)
    ), "better mean (every other criterion equal)"


def _interval(s: MeanInterval) -> str:
    if not math.isfinite(s.low):
        return f"{s.mean:.4f} (one seed: no interval)"
    return f"{s.mean:.4f} [{s.low:.4f}, {s.high:.4f}] (95% CI)"


def _signed_g(g: float, mode: str) -> float:
    """Hedges' g with the sign that says 'the best is better' as positive, in either mode."""
    return g if mode == "max" else -g


def _g(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _subset_order(subset: str) -> tuple[int, str]:
    """RGB, RG, RB, GB, R, G, B (the seed's order), then anything else by name."""
    known = list(SUBSET_NAMES)
    return (known.index(subset), "") if subset in known else (len(known), subset)
