"""A trial's epoch metrics survive an MLflow server that goes away mid-study: spooled, then replayed.

Rank 0 logs each epoch's metrics as it reports. If the tracking server cannot be reached, waiting for it
would stall every DDP rank (they meet at the next report), and MLflow's own HTTP retries wait up to ~4
minutes before failing the trial. Instead the worker tries briefly (one quick retry), then appends the
epoch to an append-only JSONL file per run, `<storage>/mlflow_spool/<run_id>.jsonl`, and trains on.
The spool is replayed before the next epoch is logged, and once more by the study driver before its
summary. Replaying is idempotent: every metric keeps the timestamp it got when first logged, and MLflow's
store ignores a metric whose (key, value, timestamp, step) it already holds, so a replay interrupted
half-way (or run twice by the worker and the driver) lands nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynconv.tracking import retry as tracking_retry

log = logging.getLogger(__name__)

SPOOL_DIR = "mlflow_spool"
QUICK_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's HTTP settings while logging an epoch: one immediate retry, 10 s timeout (defaults: 7 retries
with backoff 2, 120 s timeout, i.e. minutes of a stalled trial)."""


def spool_root(storage: str | None) -> Path | None:
    """Where a study's spools live: under the (local or shared) Ray storage path; None for cloud URIs."""
    if not storage or "://" in storage:
        return None
    return Path(storage) / SPOOL_DIR


def _path(root: Path, run_id: str) -> Path:
    return root / f"{run_id}.jsonl"


def _unreachable(err: BaseException) -> bool:
    """The store did not answer (connection refused, timeout, 5xx after retries, sqlite busy)."""
    text = str(err)
    return (
        ("API request to" in text and "failed with" in text)
        or tracking_retry.is_transient(err)
        or ("stayed busy" in text)
    )


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in QUICK_HTTP}
    os.environ.update(QUICK_HTTP)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _send(tracking_uri: str, run_id: str, records: list[dict[str, Any]]) -> None:
    from mlflow.entities import Metric

    from dynconv import tracking

    batch = [Metric(k, v, r["timestamp"], r["step"]) for r in records for k, v in r["metrics"].items()]
    c = tracking.client(tracking_uri)
    for i in range(0, len(batch), 1000):
        tracking_retry.call(c.log_batch, run_id, metrics=batch[i : i + 1000])


def log_epoch(tracking_uri: str, run_id: str, metrics: dict[str, Any], step: int, root: Path | None) -> bool:
    """Log one epoch's numeric metrics; spool them when the store is unreachable. True when they landed."""
    record = {
        "step": int(step),
        "timestamp": int(time.time() * 1000),
        "metrics": {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
    }
    if root is None:
        _send(tracking_uri, run_id, [record])
        return True
    try:
        with _quick_http():
            replay(tracking_uri, run_id, root)
            _send(tracking_uri, run_id, [record])
        return True
    except Exception as err:
        if not _unreachable(err):
            raise
        root.mkdir(parents=True, exist_ok=True)
        with open(_path(root, run_id), "a") as f:
            f.write(json.dumps(record) + "\n")
        log.warning("MLflow unreachable: epoch %d of run %s spooled to %s", step, run_id, root)
        return False


def replay(tracking_uri: str, run_id: str, root: Path) -> int:
    """Send the run's spooled epochs (and any left by a replay that died); returns how many landed.

    The spool file is first renamed to a claim of this process, so epochs appended meanwhile go to a fresh
    file; on failure the claimed records are appended back and the error is raised.
    """
    if not root.is_dir():
        return 0
    claims = sorted(root.glob(f"{run_id}.claim-*"))
    spool = _path(root, run_id)
    if spool.exists():
        claim = root / f"{run_id}.claim-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):  # another process claimed it first
            spool.rename(claim)
            claims.append(claim)
    sent = 0
    for claim in claims:
        try:
            lines = claim.read_text().splitlines()
        except FileNotFoundError:
            continue
        records = [json.loads(line) for line in lines if line.strip()]
        try:
            _send(tracking_uri, run_id, records)
        except Exception:
            with open(spool, "a") as f:
                f.writelines(line + "\n" for line in lines if line.strip())
            claim.unlink(missing_ok=True)
            raise
        claim.unlink(missing_ok=True)
        sent += len(records)
    return sent


def pending(root: Path | None, run_id: str) -> int:
    """Epochs of `run_id` still waiting in the spool."""
    if root is None or not root.is_dir():
        return 0
    files = [_path(root, run_id), *root.glob(f"{run_id}.claim-*")]
    return sum(len(p.read_text().splitlines()) for p in files if p.exists())


def replay_all(tracking_uri: str, root: Path | None, run_ids: list[str]) -> dict[str, int]:
    """Driver side, before the study's summary: replay every trial's spool; failures are logged, not
    raised (the summary then lists the run as incomplete). Returns epochs replayed per run."""
    done: dict[str, int] = {}
    if root is None:
        return done
    for run_id in run_ids:
        try:
            n = replay(tracking_uri, run_id, root)
        except Exception as err:
            log.warning("could not replay the MLflow spool of run %s: %s", run_id, err)
            continue
        if n:
            done[run_id] = n
    return done
