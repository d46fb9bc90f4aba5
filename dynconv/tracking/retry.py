"""MLflow calls that meet a busy or unreachable store: retried in the call, or queued until it answers.

Busy: with the embedded sqlite store, several processes (a study driver, `dynconv evaluate`, another
study) may write one file. sqlite serialises writers; MLflow waits up to 20 s for a lock (`PRAGMA
busy_timeout`), but a transaction that read first and then wants to write can be refused at once
("database is locked") when another writer is waiting for it to finish. MLflow then logs the error with
a traceback and raises. `call` retries such calls with jittered exponential backoff and keeps MLflow's
log record of a retried lock off the console; only when the store stays busy for the whole budget does
one clear error reach the user, saying to use an MLflow server.

Unreachable: the study driver records every trial from Tune's callback events. A write must never stall
Tune's event loop (a slow or stopped MLflow server would hold back every trial's next report), and a
write the store refuses because it is down must not be lost: `QueuedWriter` runs the writes one after
the other on a daemon thread, retries one that fails with an outage (connection refused, timeout, 5xx,
a busy sqlite file) with backoff until it lands, and lets the caller wait for the queue to drain
(`flush`) before it reads MLflow back. A write that fails for any other reason (a bug, a refused value)
is dropped with one logged line, and counted against its run. Only the study driver holds one; the
writes are the caller's closures over `dynconv.tracking`.
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

from dynconv.errors import DynconvError, one_line
from dynconv.tracking.store import masked

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 8
"""Tries per call; the jittered waits between them add up to about 6 s (3-10 s) before giving up."""
BASE_DELAY_S = 0.05
MAX_DELAY_S = 4.0

_LOCKED = "database is locked"
_POOL_FULL = "QueuePool limit"
"""An MLflow server with more requests in flight than database connections (5 + 10 overflow by default)
answers HTTP 400 "QueuePool limit of size 5 overflow 10 reached" after 30 s: overload, not bad input."""


def is_transient(err: BaseException) -> bool:
    """True for a store that is busy now and may answer on the next try (sqlite lock, server pool full,
    MLflow's TEMPORARILY_UNAVAILABLE)."""
    text = str(err)
    if _LOCKED in text or _POOL_FULL in text:
        return True
    code = getattr(err, "error_code", None)
    return code == "TEMPORARILY_UNAVAILABLE"


class _DropRetriedLocks(logging.Filter):
    """MLflow logs every sqlite OperationalError with a traceback before raising; a lock we retry is
    not an error the user should see."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _LOCKED not in record.getMessage()


_FILTER = _DropRetriedLocks()


def _install_filter() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, retried while the tracking store is transiently busy."""
    _install_filter()
    for attempt in range(ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == ATTEMPTS - 1:
                reason = masked(one_line(err, 200))
                raise DynconvError(
                    f"the MLflow tracking store stayed busy through {ATTEMPTS} tries ({reason}); "
                    "with many trials at once use an MLflow server (`mlflow server --backend-store-uri "
                    "sqlite:///PATH`) and set mlflow.tracking_uri to its http:// address"
                ) from err
            delay = min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")


RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 5.0)
"""Waits between tries of a write while the store is unreachable; the last one repeats."""


def unreachable(err: BaseException) -> bool:
    """True when the store did not answer (refused, timed out, 5xx after MLflow's own retries, busy)."""
    if isinstance(err, OSError):  # ConnectionError, TimeoutError among them
        return True
    text = str(err)
    if "API request to" in text and "failed with" in text:  # MLflow's HTTP client, after its retries
        return True
    return is_transient(err) or (isinstance(err, DynconvError) and "stayed busy" in text)


@dataclass
class _Write:
    run_key: str  # whom the write belongs to (a trial id): what `pending` and `failed` count by
    call: Callable[[], Any]
    what: str  # for the log line of a write that was dropped


@dataclass
class QueuedWriter:
    """Runs `submit`ted writes in order on one daemon thread (see the module doc)."""

    name: str = "dynconv-mlflow-writer"
    _queue: collections.deque = field(default_factory=collections.deque, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _busy: _Write | None = field(default=None, repr=False)
    _waiting_since: float | None = field(default=None, repr=False)  # first failed try of the write in hand
    failed: dict[str, list[str]] = field(default_factory=dict)  # run key -> writes dropped on a non-outage

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

    def waiting_for_store_s(self) -> float:
        """How long the write in hand has been failing with an outage (0 when none is)."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    def flush(self, timeout_s: float, on_wait: Callable[[int, float], None] | None = None) -> bool:
        """Wait until every submitted write landed (True) or `timeout_s` passed (False). `on_wait(n,
        waited_s)` is called about every 10 s while `n` writes wait for an unreachable store."""
        start = time.monotonic()
        last_note = start
        with self._cond:
            while self._queue or self._busy is not None:
                now = time.monotonic()
                if now - start >= timeout_s:
                    return False
                if on_wait is not None and now - last_note >= 10 and self._waiting_since is not None:
                    on_wait(len(self._queue) + 1, now - start)
                    last_note = now
                self._cond.wait(timeout=min(1.0, timeout_s - (now - start)))
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                self._busy = self._queue.popleft()
            self._write(self._busy)
            with self._cond:
                self._busy = None
                self._waiting_since = None
                self._cond.notify_all()

    def _write(self, w: _Write) -> None:
        """One write, retried for as long as the store is unreachable."""
        attempt = 0
        while True:
            try:
                w.call()
                return
            except Exception as err:
                if not unreachable(err):
                    reason = masked(one_line(err))  # MLflow's errors quote the URL, credentials too
                    log.warning("MLflow write dropped (%s): %s", w.what, reason)
                    with self._cond:
                        self.failed.setdefault(w.run_key, []).append(f"{w.what}: {reason}")
                    return
                if self._waiting_since is None:
                    self._waiting_since = time.monotonic()
                    reason = masked(one_line(err))
                    log.warning("MLflow unreachable (%s); holding writes until it answers", reason)
            time.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
            attempt += 1
