"""cluster.yaml security: its own security group, Ray token auth on all nodes, an MLflow server with a login.

Offline: no cloud call. The security-group script runs against a stand-in `aws` that records its calls;
the MLflow server command is taken from cluster.yaml itself and started locally (temp directory for the
shared volume, a free port, loopback), then asked without, with wrong and with the right credentials.
Costs about 15-25 s on 2 cores (the MLflow server start); the rest is under a second.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = "/mnt/shared"
SECRETS = f"{SHARED}/.cluster-secrets"
SG_SCRIPT = ROOT / "cluster" / "security_group.sh"
AUTH_INI = ROOT / "cluster" / "mlflow_auth.ini"
DOCS = ROOT / "docs" / "cluster.md"


def _cluster() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _index(commands: list[str], needle: str) -> int:
    hits = [i for i, c in enumerate(commands) if needle in c]
    assert len(hits) == 1, f"expected one command with {needle!r}, got {len(hits)}"
    return hits[0]


# ------------------------------------------------------------------------------------- security group


def test_every_node_type_brings_its_security_group_so_ray_creates_none():
    """Ray's default group always opens SSH to 0.0.0.0/0 (`_create_default_ssh_inbound_rules`, even with
    `provider.security_group.IpPermissions`); `_configure_security_group` creates none only when every
    node type has `SecurityGroupIds` (ray/autoscaler/_private/aws/config.py, Ray 2.60; that module needs
    boto3, which the test environment lacks, so the condition is checked here as Ray checks it)."""
    cfg = _cluster()
    untouched = [n for n, t in cfg["available_node_types"].items() if "SecurityGroupIds" in t["node_config"]]
    assert untouched == list(cfg["available_node_types"]), "Ray would create its default group"
    for name in untouched:
        groups = cfg["available_node_types"][name]["node_config"]["SecurityGroupIds"]
        assert groups and all(g.startswith("sg-") for g in groups), f"{name}: {groups}"
    assert "security_group" not in cfg["provider"], "provider.security_group cannot restrict SSH in Ray 2.60"


def _fake_aws(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "aws.log"
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$*" >> "$AWS_LOG"\n'
        'case "$*" in *create-security-group*) echo sg-0123456789abcdef0 ;; esac\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "AWS_LOG": str(log)}
    return env, log


def test_security_group_admits_ssh_from_the_given_cidr_and_the_cluster_to_itself(tmp_path: Path):
    env, log = _fake_aws(tmp_path)
    out = subprocess.run(
        ["bash", str(SG_SCRIPT), "vpc-0abc", "203.0.113.7/32", "eu-west-1"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "sg-0123456789abcdef0" in out.stdout
    calls = log.read_text().splitlines()
    assert [c.split()[1] for c in calls] == [
        "create-security-group",
        "authorize-security-group-ingress",
        "authorize-security-group-ingress",
    ]
    rules = [c.split("--ip-permissions ", 1)[1] for c in calls[1:]]
    ssh = "IpRanges=[{CidrIp=203.0.113.7/32,Description=ssh}]"
    assert rules[0] == f"IpProtocol=tcp,FromPort=22,ToPort=22,{ssh}"
    members = "UserIdGroupPairs=[{GroupId=sg-0123456789abcdef0,Description=cluster-nodes}]"
    assert rules[1] == f"IpProtocol=-1,{members}"
    assert "0.0.0.0/0" not in log.read_text()


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "10.0.0.0/4", "203.0.113.7", "example.org/32"])
def test_security_group_refuses_open_or_malformed_ssh_ranges(tmp_path: Path, cidr: str):
    env, log = _fake_aws(tmp_path)
    res = subprocess.run(["bash", str(SG_SCRIPT), "vpc-0abc", cidr], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert not log.exists(), "nothing may be created for a refused range"


# ------------------------------------------------------------------------------------------ Ray token


def test_head_creates_the_ray_token_before_ray_starts_and_workers_copy_it():
    cfg = _cluster()
    head = cfg["head_start_ray_commands"]
    token_step = _index(head, "ray get-auth-token --generate")
    assert token_step < _index(head, "ray start --head")
    shared_token = f"{SECRETS}/ray_auth_token"
    assert f"cp ~/.ray/auth_token {shared_token}" in head[token_step]
    assert "umask 077" in head[token_step]
    workers = cfg["worker_start_ray_commands"]
    copy_step = _index(workers, shared_token)
    assert f"cp {shared_token} ~/.ray/auth_token" in workers[copy_step]
    assert copy_step < _index(workers, "ray start --address")
    assert any("export RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"]), "token mode on every node"


# ---------------------------------------------------------------------------------- MLflow basic auth


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(cmd: str, shared: Path, port: int) -> str:
    """A cluster.yaml command made runnable here: shared volume → temp dir, port → free port, loopback."""
    return (
        cmd.replace(SHARED, str(shared))
        .replace(":5000", f":{port}")
        .replace("--port 5000", f"--port {port}")
        .replace("--host 0.0.0.0", "--host 127.0.0.1")
        .replace("/tmp/mlflow.log", str(shared / "mlflow.log"))
    )


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError:
        return 0  # not listening (yet)


def test_mlflow_command_requires_a_login():
    cfg = _cluster()
    cmd = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assert "--app-name basic-auth" in cmd
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD" in cmd
    assert f"{SECRETS}/mlflow.env" in cmd
    ini = AUTH_INI.read_text()
    assert f"database_uri = sqlite:///{SHARED}/" in ini and "admin_password" not in ini
    docs = DOCS.read_text()
    for needle in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "dynconv ui", "trust boundary"):
        assert needle in docs, f"docs/cluster.md must explain {needle}"


def test_head_installs_the_basic_auth_app():
    """MLflow's basic-auth app needs Flask-WTF (`mlflow[auth]`): without it the server exits at start."""
    setup = " ".join(_cluster()["head_setup_commands"])
    assert "dynconv'[cluster]'" in setup
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in ("cluster", "test"):
        block = re.search(rf"^{extra} = \[\n(.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
        assert block and '"mlflow[auth]==' in block.group(1), f"extra {extra!r} lacks mlflow[auth]"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """The head's secrets step and MLflow server command from cluster.yaml, run locally."""
    pytest.importorskip("flask_wtf", reason="needs the test extra's mlflow[auth] (pip install -e '.[test]')")
    cfg = _cluster()
    tmp = tmp_path_factory.mktemp("head")
    shared, home, port = tmp / "shared", tmp / "home", _free_port()
    (shared / "mlflow" / "artifacts").mkdir(parents=True)
    (home / "dynconv" / "cluster").mkdir(parents=True)
    ini = AUTH_INI.read_text().replace(SHARED, str(shared))
    (home / "dynconv" / "cluster" / "mlflow_auth.ini").write_text(ini)
    (shared / ".cluster-secrets").mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    head = cfg["head_start_ray_commands"]
    secrets_cmd = next(c for c in head if "mlflow.env" in c and "mlflow server" not in c)
    subprocess.run(["bash", "-c", _local(secrets_cmd, shared, port)], env=env, check=True, timeout=60)
    server_cmd = _local(next(c for c in head if "mlflow server" in c), shared, port)
    proc = subprocess.Popen(["bash", "-c", server_cmd], env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while _status(f"{base}/health") != 200:
            log = (shared / "mlflow.log").read_text() if (shared / "mlflow.log").exists() else ""
            assert time.time() < deadline and "Traceback" not in log, log[-3000:]
            time.sleep(0.5)
        env_file = (shared / ".cluster-secrets" / "mlflow.env").read_text()
        creds = dict(line.split("=", 1) for line in env_file.split())
        yield base, (creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]), shared
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server runs in the session started for this command


def test_mlflow_server_refuses_requests_without_the_login(mlflow_server):
    base, (user, password), shared = mlflow_server
    env_file = shared / ".cluster-secrets" / "mlflow.env"
    assert env_file.stat().st_mode & 0o077 == 0, "the credentials file must be private to its owner"
    assert user == "admin" and len(password) >= 24
    values = dict(line.split("=", 1) for line in env_file.read_text().split())
    assert len(values["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
    api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(api) == 401
    assert _status(api, (user, password + "x")) == 401
    assert _status(api, (user, password)) == 200


def test_mlflow_client_logs_with_credentials_from_the_environment(mlflow_server, monkeypatch):
    """What trials and `dynconv` do on a node: MLFLOW_TRACKING_USERNAME/PASSWORD from mlflow.env."""
    from mlflow.tracking import MlflowClient

    base, (user, password), _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(tracking_uri=base)
    exp = client.create_experiment("cluster-auth-check")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_acc", 0.5, step=1)
    assert client.get_run(run.info.run_id).data.metrics == {"val_acc": 0.5}
