"""Tracking-store load benchmark (run by hand): how fast N concurrent trials can log to sqlite and a server.

Every simulated trial is a forked process calling dynconv's own tracking functions exactly as a trial does
(`ensure_child_run`, `log_metrics` once per epoch with 8 metrics, `end_run`), back to back with no
training in between, so the store is the bottleneck and the aggregate rate is its ceiling. A real trial
logs one batch per epoch: the store keeps up while trials / epoch_seconds stays below the calls/s here.
Arms: the embedded sqlite store with dynconv's retry (as shipped), sqlite without it (one try, to count
the "database is locked" errors the retry absorbs), and a local `mlflow server` (1 worker, sqlite behind).

    PYTHONPATH=. .venv/bin/python benchmarks/tracking_load.py                 # ~2 min on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/tracking_load.py --trials 4,16 --epochs 10   # quicker
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dynconv.tracking import retry as tracking_retry
from tests.mlflow_server import MlflowServer
from tests.test_tracking_load import METRICS, run_load


def _row(arm: str, trials: int, epochs: int, load: dict) -> list[str]:
    failed = sum(code != 0 for code in load["exit_codes"])
    locked = sum("database is locked" in e.lower() for e in load["stderr"])
    calls = trials * epochs  # the log_metrics calls; create/find/end add 3 per trial
    s = load["seconds"]
    return [arm, str(trials), f"{s:.1f}", f"{calls / s:.0f}", f"{calls * len(METRICS) / s:.0f}",
            f"{failed}/{trials}", str(locked)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", default="4,16,32")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    rows = []
    for trials in [int(t) for t in args.trials.split(",")]:
        for arm in ("sqlite + retry", "sqlite, no retry", "mlflow server"):
            with tempfile.TemporaryDirectory(prefix="dynconv_load_") as tmp:
                work = Path(tmp)
                tracking_retry.ATTEMPTS = 1 if arm == "sqlite, no retry" else 8
                if arm == "mlflow server":
                    server = MlflowServer(work / "server")
                    server.start()
                    try:
                        load = run_load(server.url, work, trials, args.epochs)
                    finally:
                        server.stop()
                else:
                    load = run_load(f"sqlite:///{work}/mlflow.db", work, trials, args.epochs)
                rows.append(_row(arm, trials, args.epochs, load))
                print(" | ".join(rows[-1]), flush=True)
    head = ["store", "trials", "seconds", "epoch logs/s", "metrics/s", "trials failed", "lock errors seen"]
    print(f"\n{time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}, {args.epochs} epochs × "
          f"{len(METRICS)} metrics per trial, no pause between epochs\n")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
