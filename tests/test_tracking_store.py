"""The tracking store's checks (issue 23 items 4 and 5): a damaged sqlite file, a web server that is not
MLflow, and credentials in the tracking URI, each through `dynconv.cli.main` as a user meets them.

In-process HTTP servers on free loopback ports stand in for MLflow servers (`/health` and the one
REST read the probe makes, as MLflow 3.17 answers them) so that no `mlflow server` starts; MLflow's
own client is run against one to check that it sends URL credentials as the probe does. ~10 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dynconv import cli
from dynconv.errors import DynconvError
from dynconv.tracking.store import check_server, check_sqlite_file, masked
from tests.conftest import tiny_spec_dict

USER, PASSWORD = "alice", "s3cret-Pw"


def _one_line(capsys, code: int, expected: str) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out.err
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert expected in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ damaged sqlite


def _sqlite_store(path: Path) -> Path:
    """A real SQLite database of a few pages (MLflow's own schema is not needed to be damaged)."""
    con = sqlite3.connect(path)
    con.execute("create table runs (id integer primary key, name text)")
    con.executemany("insert into runs (name) values (?)", [("x" * 200,) for _ in range(400)])
    con.commit()
    con.close()
    return path


def _cut_short(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:4096])
    return path


def _zeroed_after_header(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes(len(data) - 100))
    return path


@pytest.mark.parametrize("damage", [_cut_short, _zeroed_after_header], ids=["first 4 KiB", "header only"])
@pytest.mark.parametrize(
    "command",
    [["evaluate", "tiny"], ["report"], ["rerun", "tiny"]],
    ids=["evaluate", "report", "rerun"],
)
def test_a_damaged_sqlite_store_is_one_line(tmp_path, capsys, damage, command) -> None:
    db = damage(_sqlite_store(tmp_path / "mlflow.db"))
    args = [*command, "--tracking-uri", f"sqlite:///{db}"]
    if command == ["report"]:
        args += ["--out", str(tmp_path / "report")]
    line = _one_line(capsys, cli.main(args), f"MLflow store {db} is damaged")
    assert "database disk image is malformed" in line
    assert not (tmp_path / "report").exists()


def test_tune_on_a_damaged_sqlite_store_fails_before_anything_runs(tmp_path, tiny_dataset, capsys) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path, tiny_dataset)))
    db = _zeroed_after_header(_sqlite_store(tmp_path / "mlflow.db"))
    _one_line(capsys, cli.main(["tune", str(spec)]), f"MLflow store {db} is damaged")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ray_results").exists()


def test_a_sound_store_passes_and_an_empty_file_is_not_sqlite(tmp_path) -> None:
    check_sqlite_file(_sqlite_store(tmp_path / "ok.db"), "hint")
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(DynconvError, match="is not an SQLite database"):
        check_sqlite_file(tmp_path / "empty.db", "hint")


# ---------------------------------------------------------------------------------- servers


class _Server(ThreadingHTTPServer):
    """`/health` answers 200 without credentials (as MLflow's basic-auth app does); everything else
    answers `api` for a GET of the probe's REST read, else a 404 HTML page (a plain web server), and
    401 without the right basic-auth header when `auth` is set; a POST (MLflow's searches) gets a 404
    page, or with `drop` the connection closed unanswered. Remembers the paths and headers seen."""

    daemon_threads = True

    def __init__(self, api: bool, auth: bool, drop: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api, self.auth, self.drop = api, auth, drop
        self.seen: list[tuple[str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # BaseHTTPRequestHandler's name
        header = self.headers.get("Authorization")
        self.server.seen.append((self.path, header))
        token = base64.standard_b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.path == "/health":
            return self._send(200, b"OK", "text/plain")
        if self.server.auth and header != f"Basic {token}":
            return self._send(401, b"You are not authenticated.", "text/plain")
        if self.server.api and self.path.startswith("/api/2.0/mlflow/experiments/get-by-name"):
            body = {"experiment": {"experiment_id": "0", "name": "Default", "lifecycle_stage": "active"}}
            return self._send(200, json.dumps(body).encode(), "application/json")
        return self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html")

    def do_POST(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.server.drop:  # MLflow's client then raises "API request to <its URL> failed ..."
            self.close_connection = True
            return
        self._send(404, b"<html><body>404</body></html>", "text/html")

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serving(api: bool = True, auth: bool = False, drop: bool = False) -> Iterator[_Server]:
    server = _Server(api, auth, drop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", [["evaluate", "tiny"], ["report"], ["rerun", "tiny"]], ids=str)
def test_a_web_server_that_is_not_mlflow_is_one_line(tmp_path, capsys, command) -> None:
    with _serving(api=False) as server:
        code = cli.main([*command, "--tracking-uri", server.url])
    line = _one_line(capsys, code, f"{server.url} does not answer like an MLflow tracking server")
    assert "answered HTTP 404, text/html" in line


def test_credentials_in_the_uri_are_sent_as_basic_auth(tmp_path) -> None:
    with _serving(auth=True) as server:
        check_server(server.url.replace("://", f"://{USER}:{PASSWORD}@"))
        with pytest.raises(DynconvError, match=r"refused the request \(no credentials given\) \(HTTP 401\)"):
            check_server(server.url)
    token = base64.standard_b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert (server.seen[1][0].split("?")[0], server.seen[1][1]) == (
        "/api/2.0/mlflow/experiments/get-by-name",
        f"Basic {token}",
    )


def test_mlflow_sends_credentials_in_the_uri_as_the_probe_does(monkeypatch) -> None:
    """MLflow's client (through `requests`) takes `user:password@` from the URI as basic auth; the
    probe must agree with it, or a URI MLflow works with would be refused (or the reverse)."""
    from dynconv.tracking.store import client

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with _serving(auth=True) as server:
        uri = server.url.replace("://", f"://{USER}:{PASSWORD}@")
        assert client(uri).get_experiment_by_name("Default").name == "Default"
    token = base64.standard_b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert server.seen[-1][1] == f"Basic {token}"


def test_mlflow_environment_credentials_are_sent_too(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with _serving(auth=True) as server:
        check_server(server.url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://alice:s3cret@host:5000", "http://alice:***@host:5000"),
        ("https://alice:s3cret@host/mlflow/", "https://alice:***@host/mlflow/"),
        ("postgresql://u:p%40ss@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
        ("http://alice:p@ss@host:5000", "http://alice:***@host:5000"),
        ("cannot reach 'http://a:b@h:1/api/x' (refused)", "cannot reach 'http://a:***@h:1/api/x' (refused)"),
        ("--set mlflow.tracking_uri=http://a:b@h:1", "--set mlflow.tracking_uri=http://a:***@h:1"),
        ("http://alice@host:5000", "http://alice@host:5000"),
        ("http://host:5000/a@b", "http://host:5000/a@b"),
        ("sqlite:////home/u/mlflow.db", "sqlite:////home/u/mlflow.db"),
    ],
)
def test_masked_hides_passwords_only(text, expected) -> None:
    assert masked(text) == expected


def _no_password(capsys, tmp_path: Path) -> str:
    out = capsys.readouterr()
    files = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".db"]
    for text in (out.out, out.err, *files):
        assert PASSWORD not in text
    return out.err


@pytest.mark.parametrize("command", [["evaluate", "tiny"], ["report"], ["rerun", "tiny"]], ids=str)
def test_no_line_shows_the_password(tmp_path, capsys, monkeypatch, command) -> None:
    """Failing commands with a credentialed URI: a down server, wrong credentials, a server that is not
    MLflow, and a store that answers the probe but not the command (an unexpected error, its crash log
    holding MLflow's error, which quotes the request URL with its credentials)."""
    monkeypatch.setenv("DYNCONV_LOG_DIR", str(tmp_path / "logs"))
    out = ["--out", str(tmp_path / "report")] if command == ["report"] else []

    def run(url: str, password: str = PASSWORD) -> int:
        uri = url.replace("://", f"://{USER}:{password}@")
        return cli.main([*command, "--tracking-uri", uri, *out])

    with _serving(auth=True) as server:
        down = server.url
    assert run(down) == 2
    assert "is unreachable" in _no_password(capsys, tmp_path)
    with _serving(auth=True) as server:
        assert run(server.url, password="wrong") == 2
        assert "refused the credentials given (HTTP 401)" in _no_password(capsys, tmp_path)
    with _serving(api=False) as server:
        assert run(server.url) == 2
        assert f"{USER}:***@" in _no_password(capsys, tmp_path)
    for drop in (False, True):  # the probe passes; MLflow's search then gets a 404 page, or nothing
        with _serving(auth=True, drop=drop) as server:
            code = run(server.url)
        err = _no_password(capsys, tmp_path)
        assert code in (1, 2) and len(err.strip().splitlines()) == 1, err


def test_ui_banner_and_server_command_hide_the_password(capsys, monkeypatch) -> None:
    from dynconv.cli import ui

    seen: dict = {}

    class _Proc:
        pid = 0

        def __init__(self, cmd, env, **kwargs) -> None:
            seen.update(cmd=cmd, env=env)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(ui.subprocess, "Popen", _Proc)
    monkeypatch.setattr(ui, "_stop_group", lambda proc: None)
    uri = f"postgresql://{USER}:{PASSWORD}@db:5432/mlflow"
    assert ui.serve(uri, port=_free_port()) == 0
    out = capsys.readouterr().out
    assert f"postgresql://{USER}:***@db:5432/mlflow" in out and PASSWORD not in out
    assert PASSWORD not in " ".join(seen["cmd"]) and seen["env"]["MLFLOW_BACKEND_STORE_URI"] == uri


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_recorded_spec_masks_the_password_and_resumes_unchanged(tmp_path, tiny_dataset) -> None:
    """spec.yaml on the study run and the spec trials train with (and write into checkpoints) hold the
    masked URI; `--resume` compares the same masked form, so a credentialed study still resumes."""
    from dynconv.spec import parse_spec
    from dynconv.spec.checks import spec_diff
    from dynconv.tune.parent_run import recorded_spec

    data = tiny_spec_dict(tmp_path, tiny_dataset)
    data["mlflow"]["tracking_uri"] = f"http://{USER}:{PASSWORD}@127.0.0.1:5000"
    spec = parse_spec(data).resolved()
    logged = yaml.safe_load(yaml.safe_dump(recorded_spec(spec)))
    assert logged["mlflow"]["tracking_uri"] == f"http://{USER}:***@127.0.0.1:5000"
    assert PASSWORD not in yaml.safe_dump(logged) and spec_diff(logged, recorded_spec(spec)) == []
    assert spec.tracking_uri() == data["mlflow"]["tracking_uri"]  # the driver keeps the real one
