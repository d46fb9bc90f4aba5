"""Retry of MLflow store calls that fail because the store is momentarily busy.

With the embedded sqlite store, many processes (trial actors, rank-0 workers, the study driver) write one
file. sqlite serialises writers; MLflow waits up to 20 s for a lock (`PRAGMA busy_timeout`), but a
transaction that read first and then wants to write can be refused at once ("database is locked") when
another writer is waiting for it to finish. MLflow then logs the error with a traceback and raises.
`call` retries such calls with jittered exponential backoff and keeps MLflow's log record of a retried
lock off the console; only when the store stays busy for the whole budget does one clear error reach the
user, saying to use an MLflow server.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dynconv.errors import DynconvError, one_line
from dynconv.tracking.store import masked

T = TypeVar("T")

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
