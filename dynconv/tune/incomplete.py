"""The study summary's "incomplete runs" line: trials whose MLflow run lacks epochs Tune saw them train.

Epoch metrics can miss MLflow when its server was down (they wait in the spool,
`dynconv.tracking.spool`) or when a driver died before closing runs. Before the summary the driver
replays every spool once more, then compares each trial's MLflow `epoch` history with the epochs Tune
recorded for it.
"""

from __future__ import annotations

from typing import Any

from dynconv import tracking
from dynconv.tracking import spool


def incomplete_runs(tracking_uri: str, storage: str, trials: list[Any]) -> list[str]:
    """One line per trial whose MLflow run is missing epochs (or still has some spooled); [] when complete.

    `trials` are the summary rows (`TrialSummary`: trial_id, epochs, status, run_id).
    """
    root = spool.spool_root(storage)
    spool.replay_all(tracking_uri, root, [t.run_id for t in trials if t.run_id])
    c = tracking.client(tracking_uri)
    lines = []
    for t in trials:
        if t.run_id is None:
            if t.epochs:
                lines.append(f"trial {t.trial_id}: no MLflow run")
            continue
        try:
            steps = {int(m.step) for m in c.get_metric_history(t.run_id, "epoch")}
        except Exception as err:  # the store is still unreachable
            reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
            lines.append(f"{t.run_id} (trial {t.trial_id}): cannot be read ({reason})")
            continue
        problems = []
        missing = sorted(set(range(1, t.epochs + 1)) - steps)
        if missing:
            problems.append(f"epochs {', '.join(map(str, missing))} missing")
        waiting = spool.pending(root, t.run_id)
        if waiting:
            problems.append(f"{waiting} epochs still spooled under {root}")
        if problems:
            lines.append(f"{t.run_id} (trial {t.trial_id}): {'; '.join(problems)}")
    return lines


def format_incomplete(lines: list[str], total: int) -> str:
    """The summary line: `MLflow runs incomplete: none`, or how many and which."""
    if not lines:
        return "MLflow runs incomplete: none"
    return f"MLflow runs incomplete: {len(lines)} of {total}\n" + "\n".join(f"  {line}" for line in lines)


def close_orphaned_runs(tracking_uri: str, experiment_id: str, parent: str, trial_ids: set[str]) -> list[str]:
    """Close as KILLED the trial runs of `parent` still RUNNING that belong to no trial Tune knows.

    A driver killed with SIGKILL saves nothing on its way out: Tune's experiment state is the last
    periodic save (`TUNE_GLOBAL_CHECKPOINT_S`), so a trial created after it is unknown to `--resume`,
    which suggests it again under a new id. Its first run stays behind RUNNING; it is tagged
    `dynconv.outcome=orphaned` so it is not mistaken for a trial of the study. Returns their run ids.
    """
    closed = []
    for run in tracking.find_runs(tracking_uri, experiment_id, role="trial"):
        tags = run.data.tags
        if tags.get(tracking.TAG_PARENT) != parent or run.info.status != "RUNNING":
            continue
        if tags.get(tracking.TAG_TRIAL_ID) in trial_ids:
            continue
        tracking.set_tags(tracking_uri, run.info.run_id, {"dynconv.outcome": "orphaned"})
        tracking.end_run(tracking_uri, run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def check_mlflow_runs(
    tracking_uri: str, storage: str, experiment_id: str, parent: str, trials: list[Any], resume: bool
) -> list[str]:
    """After the Tuner: replay spools, close orphans of a killed driver (on --resume), print the line."""
    orphans = (
        close_orphaned_runs(tracking_uri, experiment_id, parent, {t.trial_id for t in trials})
        if resume
        else []
    )
    lines = incomplete_runs(tracking_uri, storage, trials)
    lines += [
        f"{r}: a trial lost by a killed driver (Tune re-ran it under a new id), closed as KILLED"
        for r in orphans
    ]
    print(format_incomplete(lines, len(trials) + len(orphans)))
    return lines


def logged_epochs(tracking_uri: str, run_id: str | None) -> int:
    """The highest epoch a trial's run holds in MLflow (0 when none or unreadable)."""
    if run_id is None:
        return 0
    try:
        return max(
            (int(m.step) for m in tracking.client(tracking_uri).get_metric_history(run_id, "epoch")),
            default=0,
        )
    except Exception:
        return 0
