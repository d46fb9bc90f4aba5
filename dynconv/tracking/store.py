"""The tracking store itself: which URI schemes it may have, whether it is there and answers, whether a
study may write to it, and the client that talks to it.

MLflow creates what it is pointed at: a missing sqlite file becomes a new, empty database (with its
directories), and a down HTTP server is retried for minutes. So every command checks its store first
and fails in one line: `check_writable_store` before a study writes anything (and `check_storage_path`
for Ray's storage), `readable_store` before a read-only command (`evaluate`, `rerun`, `report`), which
refuses a store that does not exist instead of creating one. Both probe an HTTP server's `/health` the
same way (`check_server`). Which URI a command uses is `dynconv.spec.resolve_tracking_uri`.

Imports nothing from dynconv but `errors` and `spec`; `mlflow` inside functions only (slow to import).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.spec import resolve_tracking_uri

# The schemes MLflow 3.17's tracking-store registry knows (mlflow.tracking._tracking_service.utils),
# listed here so checking a URI does not import mlflow (~2 s).
KNOWN_SCHEMES = frozenset(
    {"file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
)
HEALTH_TIMEOUT_S = 5.0
SQLITE_MAGIC = b"SQLite format 3\x00"


def store_errors() -> tuple[type[BaseException], ...]:
    """What a failed call to the tracking store raises: MLflow's own errors (unknown run, missing
    artifact, refused value) and I/O errors (files, sockets, HTTP: `requests`' errors are OSErrors).
    A function so that `mlflow` is imported only once an error is being handled."""
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def is_missing(err: BaseException) -> bool:
    """Whether a store error says the run (or artifact) asked for does not exist, or its id is no id;
    any other error (a store that does not answer) means something else and is not "unknown"."""
    return getattr(err, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def client(tracking_uri: str):
    """An MlflowClient bound to `tracking_uri` (import deferred: mlflow is slow to import)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def artifact_root(tracking_uri: str, experiment: str) -> str | None:
    """Absolute artifact location for a local sqlite store (None: let the store decide)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    base = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
    return (base / experiment).resolve().as_uri()


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


def check_writable_store(tracking_uri: str) -> None:
    """Before a study writes anything: a server that answers, or a sqlite store's writable directory."""
    check_uri_scheme(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
    elif tracking_uri.startswith("sqlite:///"):
        _check_writable_dir(Path(tracking_uri[len("sqlite:///") :]).parent, "MLflow store directory")


def check_storage_path(storage: str) -> None:
    """The Ray storage path must be writable (cloud URIs are checked by Ray itself)."""
    if "://" not in storage:
        _check_writable_dir(Path(storage), "Ray storage path")


def _check_writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".dynconv_write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise DynconvError(f"{what} {path} is not writable ({err.strerror or err})") from None


def readable_store(tracking_uri: str | None) -> str:
    """The resolved URI of an existing store; a one-line error (creating nothing) when there is none."""
    uri = resolve_tracking_uri(tracking_uri)
    check_uri_scheme(uri)
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
        check_server(uri)
    return uri
