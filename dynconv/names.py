"""One name, one study run: a study name that matches several study runs is an error, never a guess.

A study name (the spec's `study`) is reused by every fresh `dynconv tune` of that spec, so "the newest
run named X" may be another study than the one the user means. `--resume`, `evaluate NAME` and
`rerun NAME` therefore take a name only when it matches exactly one study run; otherwise the error
lists the candidates' run ids (and run names), which always work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dynconv.errors import DynconvError

MAX_LISTED = 10


def describe_run(run: Any) -> str:
    """`<run id> (<run name>, <status>, started <time>)` for an MLflow run."""
    info = run.info
    name = run.data.tags.get("dynconv.run_name") or info.run_name or "?"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((info.start_time or 0) / 1000))
    return f"{info.run_id} ({name}, {info.status}, started {started})"


def one_study_run(runs: Sequence[Any], name: str, how_to_choose: str) -> Any:
    """The single run in `runs` (study runs matching `name`), or a one-line error listing them all.

    `runs` must be non-empty; `how_to_choose` tells the user where a run id goes (e.g. "pass a run id
    to --resume"). Duplicates of one run id (found by two tags) count once.
    """
    unique = list({r.info.run_id: r for r in runs}.values())
    if not unique:
        raise ValueError("one_study_run() needs at least one run")
    if len(unique) == 1:
        return unique[0]
    listed = "; ".join(describe_run(r) for r in unique[:MAX_LISTED])
    more = f"; and {len(unique) - MAX_LISTED} more" if len(unique) > MAX_LISTED else ""
    raise DynconvError(f"{name!r} matches {len(unique)} study runs, {how_to_choose}: {listed}{more}")
