"""The tracking store itself: which URI schemes it may have, whether it is there and answers, whether a
study may write to it, and the client that talks to it.

MLflow creates what it is pointed at: a missing sqlite file becomes a new, empty database (with its
directories), and a down HTTP server is retried for minutes. So every command checks its store first
and fails in one line: `check_writable_store` before a study writes anything (and `check_storage_path`
for Ray's storage), `readable_store` before a read-only command (`evaluate`, `rerun`, `report`), which
refuses a store that does not exist instead of creating one. Both probe an HTTP server the same way
(`check_server`: `/health`, then one read of MLflow's REST API, so a web server that is not MLflow is
one line too) and check an existing sqlite file the same way (`check_sqlite_file`: a damaged database
is one line, not SQLAlchemy's traceback). Which URI a command uses is `dynconv.spec.resolve_tracking_uri`.

A tracking URI may carry credentials (`http://USER:PASSWORD@HOST:PORT`, a database URI's password):
`masked` hides the password in anything dynconv prints, logs, writes or records in MLflow.

Imports nothing from dynconv but `errors` and `spec`; `mlflow` inside functions only (slow to import).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dynconv.errors import DynconvError, Fault, one_line
from dynconv.spec import resolve_tracking_uri

# The schemes MLflow 3.17's tracking-store registry knows (mlflow.tracking._tracking_service.utils),
# listed here so checking a URI does not import mlflow (~2 s).
KNOWN_SCHEMES = frozenset(
    {"file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
)
HEALTH_TIMEOUT_S = 5.0
SQLITE_MAGIC = b"SQLite format 3\x00"
# One read of MLflow's REST API that any MLflow tracking server answers in JSON (the experiment, or
# RESOURCE_DOES_NOT_EXIST) and that creates nothing.
API_PROBE = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
# `scheme://user:password@`: the password ends at the last '@' before the host (a raw '@' in a password
# is not valid in a URI, but it must not leak either); quotes and whitespace end a URI inside a text.
_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s/?#:@'\"]*):[^\s/?#'\"]*@")


def masked(text: str) -> str:
    """`text` (a URI, or a line holding URIs) with every URI's password replaced by `***`:
    `http://alice:s3cret@host:5000` becomes `http://alice:***@host:5000`. Everything dynconv prints, logs,
    writes or records that may hold a tracking URI goes through here (errors, the study's plan and
    browse lines, the UI banner, crash logs, the recorded spec, the report)."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def store_errors() -> tuple[type[BaseException], ...]:
    """What a failed call to the tracking store raises: MLflow's own errors (unknown run, missing
    artifact, refused value), I/O errors (files, sockets, HTTP: `requests`' errors are OSErrors) and
    the `Fault` that `dynconv.tracking.retry.call` names one of them as. A function so that `mlflow`
    is imported only once an error is being handled."""
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError, Fault)


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


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` store; None for any other store."""
    return Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None


# The driver module SQLAlchemy's default dialect of each database imports, and the package that has it.
DB_DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "pymysql": "PyMySQL", "MySQLdb": "mysqlclient"}


def check_uri_form(uri: str) -> None:
    """One-line error unless `uri` is a tracking URI MLflow 3.17 opens: a known scheme, a well-formed
    sqlite URI, a database URI whose driver is installed; a file store (a directory, `file:`, a plain
    path) only where the user set MLflow's own switch for it (`MLFLOW_ALLOW_FILE_STORE=true`)."""
    if not uri.strip():
        raise DynconvError("empty MLflow tracking URI")
    shown = masked(uri)
    if "://" not in uri or uri.startswith("file:"):
        _check_file_store(uri)
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in KNOWN_SCHEMES:
        raise DynconvError(
            f"MLflow tracking URI {shown!r}: unknown scheme {scheme!r} (use sqlite:///PATH, "
            "http(s)://HOST:PORT, or a database URI: postgresql://, mysql://, mssql://)"
        )
    if scheme == "sqlite" and (not uri.startswith("sqlite:///") or uri.rstrip("/") == "sqlite:"):
        raise DynconvError(
            f"MLflow tracking URI {shown!r} names no file: use sqlite:///RELATIVE/PATH.db or "
            "sqlite:////ABSOLUTE/PATH.db (three slashes, then the path)"
        )
    if scheme in ("postgresql", "mysql", "mssql"):
        _check_db_driver(uri, shown)


def _check_file_store(uri: str) -> None:
    """MLflow 3.17 refuses a file store (a directory of runs) unless MLFLOW_ALLOW_FILE_STORE is true."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes"):
        return
    path = uri.removeprefix("file://").removeprefix("file:")
    guess = (
        f"sqlite:///{path}" if path.endswith((".db", ".sqlite", ".sqlite3")) else "sqlite:///PATH/mlflow.db"
    )
    raise DynconvError(
        f"MLflow tracking URI {masked(uri)!r} is a file store (a directory of runs), which MLflow 3.17 "
        f"no longer opens: use {guess} or an MLflow server (http://HOST:PORT); to keep a file store, "
        "set MLFLOW_ALLOW_FILE_STORE=true"
    )


def _check_db_driver(uri: str, shown: str) -> None:
    """A database URI that SQLAlchemy can parse and whose DB-API driver is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise DynconvError(f"MLflow tracking URI {shown!r} is not a database URI ({one_line(err)})") from None
    except ImportError as err:
        module = (err.name or "").split(".")[0] or "its driver"
        package = DB_DRIVER_PACKAGES.get(module, module)
        raise DynconvError(
            f"MLflow tracking URI {shown!r}: the database driver {module!r} is not installed "
            f"(pip install {package}, or name another driver: SCHEME+DRIVER://...)"
        ) from None


def server_request(uri: str) -> tuple[str, dict[str, str]]:
    """The server's base URL without credentials, and the headers that authenticate to it as MLflow's
    client does: credentials in the URI as HTTP basic auth (`requests`, under MLflow's client, takes them
    from the URL and they win), else MLflow's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD,
    else MLFLOW_TRACKING_TOKEN as a bearer token. urllib would take `user:pass@` for part of the host."""
    parts = urllib.parse.urlsplit(uri.rstrip("/"))
    host = parts.netloc.rpartition("@")[2]
    base = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    user, password = parts.username, parts.password
    if user is None or password is None:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    else:
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    if user and password:
        token = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        return base, {"Authorization": f"Basic {token}"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return base, {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return base, {}


def check_server(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """A down server, one that refuses our credentials, or one that is not an MLflow tracking server fails
    here in one line and in seconds: a GET of `/health` (MLflow answers it without credentials), then
    one read of the REST API (`API_PROBE`) that must answer MLflow's JSON."""
    shown = masked(uri)
    base, headers = server_request(uri)
    status, ctype, body = _get(base + "/health", headers, shown, timeout_s)
    if status in (401, 403):
        raise DynconvError(_refused(shown, status, headers))
    if status == 404:  # every MLflow tracking server answers /health
        raise DynconvError(f"{shown} does not answer like an MLflow tracking server (/health: HTTP 404)")
    if status != 200:
        raise DynconvError(f"MLflow tracking server {shown} answered HTTP {status} on /health")
    status, ctype, body = _get(base + API_PROBE, headers, shown, timeout_s)
    if status in (401, 403):
        raise DynconvError(_refused(shown, status, headers))
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ({"experiment", "error_code"} & set(answer)):
        what = f"HTTP {status}, {ctype or 'no content type'}"
        raise DynconvError(
            f"{shown} does not answer like an MLflow tracking server (its REST API "
            f"{API_PROBE.split('?')[0]} answered {what}, not MLflow's JSON): check the host, port and path "
            "of the tracking URI"
        )


def _refused(shown: str, status: int, headers: dict[str, str]) -> str:
    what = "the credentials given" if headers else "the request (no credentials given)"
    return (
        f"MLflow tracking server {shown} refused {what} (HTTP {status}): put USER:PASSWORD@ before the "
        "host in the tracking URI, or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def _get(url: str, headers: dict[str, str], shown: str, timeout_s: float) -> tuple[int, str, bytes]:
    """(status, content type, first 64 KiB of the body) of a GET of `url`; unreachable is one line."""
    request = urllib.request.Request(url, headers=headers)
    try:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return resp.status, resp.headers.get_content_type(), resp.read(65536)
        except urllib.error.HTTPError as err:  # 4xx/5xx: still an answer to read
            with err:
                return err.code, err.headers.get_content_type() if err.headers else "", err.read(65536)
    except http.client.HTTPException as err:  # something answered, but not HTTP
        raise DynconvError(
            f"{shown} does not answer like an MLflow tracking server (not HTTP: {type(err).__name__})"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DynconvError(f"MLflow tracking server {shown} is unreachable ({masked(str(reason))})") from None


def check_writable_store(tracking_uri: str) -> None:
    """Before a study writes anything: a server that answers, or a sqlite store's writable directory."""
    check_uri_form(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
    elif tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        _check_writable_dir(db.parent, "MLflow store directory")
        if db.is_file() and db.stat().st_size > 0:  # an empty file is an empty database MLflow fills in
            check_sqlite_file(db, "start a new store elsewhere")


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


def check_sqlite_file(db: Path, hint: str) -> None:
    """One line unless the existing file `db` is a readable, undamaged SQLite database: its header, then
    `PRAGMA quick_check` on a read-only connection (a cut-short or zeroed file fails here instead of in
    SQLAlchemy's first query, with a traceback; ~0.3 s for 350 MB). A store locked by a writer is left
    to MLflow, which waits for it."""
    try:
        with db.open("rb") as fh:
            magic = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise DynconvError(f"MLflow store {db} is not readable ({exc.strerror or exc})") from None
    if magic != SQLITE_MAGIC:
        raise DynconvError(f"{db} is not an SQLite database, so not an MLflow store ({hint})")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            problems = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            raise DynconvError(_damaged(db, one_line(exc))) from None
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return
        raise DynconvError(f"MLflow store {db} is not readable (SQLite: {one_line(exc)})") from None
    if problems != ["ok"]:
        raise DynconvError(_damaged(db, one_line("; ".join(problems), limit=200)))


def _damaged(db: Path, report: str) -> str:
    return (
        f"MLflow store {db} is damaged (cut short or overwritten; SQLite: {report}): restore it from a "
        "backup, or point --tracking-uri or mlflow.tracking_uri at another store"
    )


def readable_store(tracking_uri: str | None) -> str:
    """The resolved URI of an existing store; a one-line error (creating nothing) when there is none."""
    uri = resolve_tracking_uri(tracking_uri)
    check_uri_form(uri)
    hint = "run a study first, or point --tracking-uri or MLFLOW_TRACKING_URI at the study's store"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            raise DynconvError(f"no MLflow store at {db} ({hint})")
        check_sqlite_file(db, hint)
    elif uri.startswith("file://"):
        root = Path(uri[len("file://") :])
        if not root.is_dir():
            raise DynconvError(f"no MLflow store at {root} ({hint})")
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    return uri
