"""Checks on a tracking store before MLflow touches it, so bad stores fail in one line and fast.

MLflow creates what it is pointed at: a missing sqlite file becomes a new, empty 1 MB database (with
its directories), and a down HTTP server is retried for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7
with exponential backoff, 120 s per request). Read-only commands (`evaluate`, `rerun`, `report`) call
`readable_store` first: it refuses a store that does not exist instead of creating one, and bounds
MLflow's HTTP retries so a server that goes away mid-command fails in seconds, not minutes.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from dynconv.errors import DynconvError

# The schemes MLflow 3.17's tracking-store registry knows (mlflow.tracking._tracking_service.utils),
# listed here so checking a URI does not import mlflow (~2 s).
KNOWN_SCHEMES = frozenset(
    {"file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
)
HEALTH_TIMEOUT_S = 5.0
# Bounds for MLflow's own HTTP client in read-only commands (set only when the user has not set them).
READ_ONLY_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
SQLITE_MAGIC = b"SQLite format 3\x00"


def check_uri_scheme(uri: str) -> None:
    """One-line error unless `uri` is a plain path or uses a scheme MLflow has a tracking store for."""
    if not uri.strip():
        raise DynconvError("empty MLflow tracking URI")
    if "://" not in uri:
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in KNOWN_SCHEMES:
        raise DynconvError(
            f"MLflow tracking URI {uri!r}: unknown scheme {scheme!r} (use sqlite:///PATH, a directory, "
            "http(s)://HOST:PORT, or a database URI: postgresql://, mysql://, mssql://)"
        )


def resolve_store(tracking_uri: str | None) -> str:
    """`tracking_uri`, else $MLFLOW_TRACKING_URI, else ./mlflow.db; relative stores made absolute."""
    from dynconv.spec import absolute_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    check_uri_scheme(uri)
    return absolute_tracking_uri(uri)


def readable_store(tracking_uri: str | None) -> str:
    """The resolved URI of an existing store; a one-line error (creating nothing) when there is none."""
    uri = resolve_store(tracking_uri)
    hint = "run a study first, or point --tracking-uri or MLFLOW_TRACKING_URI at the study's store"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            raise DynconvError(f"no MLflow store at {db} ({hint})")
        try:
            with db.open("rb") as fh:
                magic = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise DynconvError(f"MLflow store {db} is not readable ({exc.strerror or exc})") from None
        if magic != SQLITE_MAGIC:
            raise DynconvError(f"{db} is not an SQLite database, so not an MLflow store ({hint})")
    elif uri.startswith("file://"):
        root = Path(uri[len("file://") :])
        if not root.is_dir():
            raise DynconvError(f"no MLflow store at {root} ({hint})")
    elif uri.startswith(("http://", "https://")):
        for key, value in READ_ONLY_HTTP_ENV.items():
            os.environ.setdefault(key, value)
        check_server(uri)
    return uri


def check_server(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """One GET of the server's /health with a short timeout: a down server fails here, in seconds."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise DynconvError(f"MLflow tracking server {uri} answered HTTP {resp.status} on /health")
    except urllib.error.HTTPError as err:
        raise DynconvError(f"MLflow tracking server {uri} answered HTTP {err.code} on /health") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DynconvError(f"MLflow tracking server {uri} is unreachable ({reason})") from None
