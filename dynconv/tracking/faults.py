"""Which fault of the world a failed tracking-store call is, decided by exception type, error code and
errno (never by message text): busy, unreachable, gone, refused credentials, a full or read-only disk.

MLflow wraps what went wrong: a sqlite store raises `MlflowException(TEMPORARILY_UNAVAILABLE)` from
SQLAlchemy's `OperationalError`, whose `orig` is the `sqlite3` error with its result code; an HTTP
store raises `MlflowException` while handling `requests`' exception, or a `RestException` with the
server's error code. `classify` walks that chain (`dynconv.errors.causes`).

A sqlite file deleted or replaced while a study writes it gives no error of its own: MLflow's next
connection makes a new empty file and fails with "no such table". `StoreWatch` remembers which file
the study opened (device and inode) and calls a failure on another file, or none, `StoreGone`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from dynconv.errors import (
    AuthRefused,
    DiskFull,
    Fault,
    ReadOnlyDisk,
    StoreBusy,
    StoreGone,
    StoreUnreachable,
    causes,
    disk_fault,
    free_space,
    one_line,
)
from dynconv.tracking.store import masked, sqlite_path

_SQLITE_KINDS: dict[int, type[Fault]] = {
    sqlite3.SQLITE_BUSY: StoreBusy,
    sqlite3.SQLITE_LOCKED: StoreBusy,
    sqlite3.SQLITE_READONLY: ReadOnlyDisk,
    sqlite3.SQLITE_CANTOPEN: StoreGone,
    sqlite3.SQLITE_NOTADB: StoreGone,
    sqlite3.SQLITE_CORRUPT: StoreGone,
}
_HTTP_AUTH = (401, 403)


RESERVE_BYTES = 1 << 20
"""Space a study holds beside its sqlite store, given back when the disk fills, for SQLite's journal
while the driver closes the study's runs with their cause. Seen enough: on a full 4 MB disk it let the
driver close a study run and its 4 trial runs (`tests/test_world_faults.py`); without it all 5 stayed
RUNNING."""


class StoreWatch:
    """The tracking store a study writes, and the file it was when the study opened it (sqlite).

    With `reserve` (a study's name), the watch also holds `RESERVE_BYTES` in a file beside a sqlite
    store (`.dynconv-reserve-<study>`) until `release`: a disk that fills up mid-study leaves no room
    for even the writes that close its runs, and those must not stay RUNNING.
    """

    def __init__(self, tracking_uri: str, reserve: str | None = None) -> None:
        self.uri = tracking_uri
        self.path = sqlite_path(tracking_uri)
        self.identity = _identity(self.path) if self.path else None
        self.reserve = self.path.with_name(f".dynconv-reserve-{reserve}") if reserve and self.path else None
        if self.reserve is not None:
            try:
                self.reserve.write_bytes(bytes(RESERVE_BYTES))
            except OSError:  # no room even for that: nothing to give back later
                self.release()

    def release(self) -> None:
        """Give the reserved space back (when the disk filled, and when the study ends)."""
        if self.reserve is not None:
            self.reserve.unlink(missing_ok=True)

    def replaced(self) -> bool:
        """Whether the store's file is gone or another file now stands at its path."""
        return self.identity is not None and _identity(self.path) != self.identity

    def classify(self, error: BaseException) -> Fault | None:
        """The fault `error` is (see `classify`); any failure of a store whose file was deleted or
        replaced is `StoreGone`, whatever SQLite made of it."""
        if self.replaced():
            return StoreGone(
                f"the MLflow store {self.path} was deleted or replaced while the study wrote it: the "
                "study's record is lost; restore the file from a backup or start the study again"
            )
        return classify(error, self.uri)


def _identity(path: Path | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


def classify(error: BaseException, tracking_uri: str = "") -> Fault | None:
    """The `Fault` that `error`, raised by a call to the store at `tracking_uri`, is, with a one-line
    message; None when it is none of them (a refused value, an unknown run, a bug)."""
    if isinstance(error, Fault):
        return error
    shown = masked(tracking_uri) or "the MLflow store"
    reason = masked(one_line(error, 200))
    path = sqlite_path(tracking_uri)
    disk = disk_fault(error, path or None)
    if disk is not None:
        return disk
    for err in causes(error):
        if isinstance(err, sqlite3.Error):
            code = getattr(err, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            if code == sqlite3.SQLITE_FULL:
                return DiskFull(f"disk full at {path or shown}: {free_space(path) if path else reason}")
            kind = _SQLITE_KINDS.get(code)
            return kind(f"{shown}: {reason}") if kind is not None else None  # e.g. no such table
        if isinstance(err, (ConnectionError, TimeoutError, *_requests_outages())):
            return StoreUnreachable(f"MLflow tracking server {shown} is unreachable ({reason})")
    code = getattr(error, "error_code", None)
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return AuthRefused(f"MLflow tracking server {shown} refused the credentials ({reason})")
    if code == "TEMPORARILY_UNAVAILABLE":
        return StoreBusy(f"{shown} is busy ({reason})")
    if tracking_uri.startswith(("http://", "https://")):  # what a server's status says of it
        status = _http_status(error)
        if status in _HTTP_AUTH:
            return AuthRefused(f"MLflow tracking server {shown} refused the credentials ({reason})")
        # A server's database layer failing (its connection pool full, the case seen) is BAD_REQUEST;
        # a request the server finds invalid is INVALID_PARAMETER_VALUE.
        if code == "BAD_REQUEST" or status == 429 or (status or 0) >= 500:
            return StoreBusy(f"{shown} is busy ({reason})")
    return None


def _requests_outages() -> tuple[type[BaseException], ...]:
    """`requests`' exceptions for a server that did not answer (MLflow's HTTP client raises them)."""
    from requests import exceptions

    return exceptions.ConnectionError, exceptions.Timeout, exceptions.RetryError


def _http_status(error: BaseException) -> int | None:
    status = getattr(error, "get_http_status_code", None)
    try:
        return int(status()) if callable(status) else None
    except (TypeError, ValueError):
        return None


class _DropHandledStoreErrors(logging.Filter):
    """MLflow logs every SQLAlchemy `OperationalError` with a traceback before raising it again as an
    MlflowException; dynconv handles those by type (retries a busy store, names a full disk or a gone
    store in one line), so the log record would only flood the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        from sqlalchemy.exc import OperationalError

        error = record.exc_info[1] if record.exc_info else None
        return error is None or not any(isinstance(e, OperationalError) for e in causes(error))


_FILTER = _DropHandledStoreErrors()


def quiet_handled_store_errors() -> None:
    """Install the filter above on MLflow's database logger (once per process)."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
