"""MLflow calls that meet a busy, unreachable or broken store: retried in the call, queued until it
answers, or stopped with one line. What a failure is comes from `dynconv.tracking.faults` (by type).

Busy: with the embedded sqlite store, several processes (a study driver, `dynconv evaluate`, another
study) may write one file. sqlite serialises writers; MLflow waits up to 20 s for a lock, but a
transaction that read first and then wants to write can be refused at once when another writer waits
for it. `call` retries such calls (`StoreBusy`) with jittered exponential backoff; only when the store
stays busy for the whole budget does one clear error reach the user, saying to use an MLflow server. A
permanent fault (a full or read-only disk, a store file gone, refused credentials) is raised at once as
its `Fault`, one line.

Unreachable: the study driver records every trial from Tune's callback events. A write must never stall
Tune's event loop, and a write the store refuses because it is down must not be lost: `QueuedWriter`
runs the writes one after the other on a daemon thread and retries one that fails with a transient
fault (unreachable, busy) until it lands; the caller waits for the queue to drain (`flush`) before it
reads MLflow back. A permanent fault stops the writer: it keeps the `Fault` (`fatal`), and the writes
still queued are not tried (every one would fail the same way). A write that fails for any other
reason (a bug, a refused value) is dropped with one logged line and counted against its run.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dynconv.errors import Fault, StoreBusy, one_line
from dynconv.tracking.faults import StoreWatch, classify, quiet_handled_store_errors
from dynconv.tracking.store import masked

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 8
"""Tries per call; the jittered waits between them add up to about 6 s (3-10 s) before giving up."""
BASE_DELAY_S = 0.05
MAX_DELAY_S = 4.0


def call(fn: Callable[..., T], *args: Any, store_uri: str = "", **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, retried while the tracking store (`store_uri`, named in the messages) is
    busy; a permanent fault of the store is raised as its `Fault` (one line), anything else as it was."""
    quiet_handled_store_errors()
    for attempt in range(ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            fault = classify(err, store_uri)
            if fault is None or isinstance(err, Fault):
                raise
            if not isinstance(fault, StoreBusy):
                raise fault from err
            if attempt == ATTEMPTS - 1:
                raise StoreBusy(
                    f"the MLflow tracking store stayed busy through {ATTEMPTS} tries "
                    f"({masked(one_line(err, 200))}); with many trials at once use an MLflow server "
                    "(`mlflow server --backend-store-uri sqlite:///PATH`) and set mlflow.tracking_uri to "
                    "its http:// address"
                ) from err
            delay = min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")


RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 5.0)
"""Waits between tries of a write while the store is unreachable; the last one repeats."""


@dataclass
class _Write:
    run_key: str  # whom the write belongs to (a trial id): what `pending` and `failed` count by
    call: Callable[[], Any]
    what: str  # for the log line of a write that was dropped


@dataclass
class QueuedWriter:
    """Runs `submit`ted writes in order on one daemon thread (see the module doc). `watch`: the store
    the writes go to, so that a store file deleted or replaced under the study is `StoreGone`."""

    watch: StoreWatch | None = None
    name: str = "dynconv-mlflow-writer"
    _queue: collections.deque = field(default_factory=collections.deque, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _busy: _Write | None = field(default=None, repr=False)
    _waiting_since: float | None = field(default=None, repr=False)  # first failed try of the write in hand
    waiting_for: Fault | None = None  # the transient fault the write in hand waits out
    fatal: Fault | None = None  # the permanent fault that stopped the writer
    failed: dict[str, list[str]] = field(default_factory=dict)  # run key -> writes dropped
    lost: dict[str, int] = field(default_factory=dict)  # run key -> writes never tried after `fatal`

    def submit(self, run_key: str, call: Callable[[], Any], what: str) -> None:
        """Queue `call()`; it runs after every write submitted before it."""
        with self._cond:
            self._queue.append(_Write(run_key, call, what))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> dict[str, int]:
        """Writes not yet landed, per run key (the one in hand included)."""
        with self._cond:
            counts: dict[str, int] = collections.Counter(w.run_key for w in self._queue)
            if self._busy is not None:
                counts[self._busy.run_key] += 1
            return dict(counts)

    def incomplete(self, run_key: str) -> list[str]:
        """What of `run_key`'s record did not land: writes dropped, or never tried after a fatal fault."""
        with self._cond:
            lost = self.lost.get(run_key, 0)
            return [*self.failed.get(run_key, []), *([f"{lost} writes not tried"] if lost else [])]

    def waiting_for_store_s(self) -> float:
        """How long the write in hand has been failing with a transient fault (0 when none is)."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    def flush(self, timeout_s: float, on_wait: Callable[[int, float, Fault], None] | None = None) -> bool:
        """Wait until every submitted write landed or was given up (True) or `timeout_s` passed (False).
        `on_wait(n, waited_s, fault)` is called about every 10 s while `n` writes wait out `fault`."""
        start = time.monotonic()
        last_note = start
        with self._cond:
            while self._queue or self._busy is not None:
                now = time.monotonic()
                if now - start >= timeout_s:
                    return False
                if on_wait is not None and now - last_note >= 10 and self.waiting_for is not None:
                    on_wait(len(self._queue) + 1, now - start, self.waiting_for)
                    last_note = now
                self._cond.wait(timeout=min(1.0, timeout_s - (now - start)))
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                self._busy = self._queue.popleft()
                skip = self.fatal is not None
                if skip:
                    self.lost[self._busy.run_key] = self.lost.get(self._busy.run_key, 0) + 1
            if not skip:
                self._write(self._busy)
            with self._cond:
                self._busy = None
                self._waiting_since = self.waiting_for = None
                self._cond.notify_all()

    def _write(self, w: _Write) -> None:
        """One write, retried for as long as the store's fault is transient."""
        attempt = 0
        while True:
            try:
                w.call()
                return
            except Exception as err:
                fault = self.watch.classify(err) if self.watch is not None else classify(err)
                if fault is None:
                    reason = masked(one_line(err))  # MLflow's errors quote the URL, credentials too
                    log.warning("MLflow write dropped (%s): %s", w.what, reason)
                    with self._cond:
                        self.failed.setdefault(w.run_key, []).append(f"{w.what}: {reason}")
                    return
                if not fault.transient:
                    log.debug("MLflow writes stopped: %s", one_line(fault))  # the driver says it
                    with self._cond:
                        self.fatal = fault
                        self.failed.setdefault(w.run_key, []).append(f"{w.what}: {one_line(fault)}")
                    return
                if self._waiting_since is None:
                    self._waiting_since, self.waiting_for = time.monotonic(), fault
                    log.warning("%s; holding writes until it answers", one_line(fault))
            time.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
            attempt += 1
