"""cluster.yaml: valid for Ray's own cluster-config validation, and consistent with the shipped specs.

Offline and fast: nothing is launched and Ray is not started. The validation goes through Ray's private
`ray.autoscaler._private.util` (prepare_config fills the provider defaults, validate_config checks the
JSON schema plus head-type and min/max rules), the same code `ray up` runs before touching the cloud;
Ray is pinned in pyproject.toml, so the private API cannot move under us unnoticed.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "cluster.yaml"
DOCS_FILE = ROOT / "docs" / "cluster.md"

# Command lists that prepare_config would otherwise take from Ray's AWS defaults: those install a Ray
# nightly wheel and bind the dashboard to 0.0.0.0. Every one must be written out in cluster.yaml.
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)

CREDENTIAL_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"aws_secret_access_key",
        r"aws_access_key_id",
        r"aws_session_token",
        r"\bAKIA[0-9A-Z]{16}\b",
        r"password\s*:",
        r"token\s*:",
        r"secret\s*:",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    )
]


def _cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


def _ray_validate(cfg: dict[str, Any]) -> None:
    validate_config(prepare_config(copy.deepcopy(cfg)))


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """The shipped job specs meant for this cluster: those whose trial drivers request a custom resource."""
    specs = []
    for path in sorted((ROOT / "tune_jobs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if (data.get("resources") or {}).get("driver_resource"):
            specs.append((path.name, data))
    return specs


CLUSTER_SPECS = _cluster_specs()


def _head(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["available_node_types"][cfg["head_node_type"]]


def _workers(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def _mlflow_command(cfg: dict[str, Any]) -> str:
    cmds = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(cmds) == 1, "the head must start exactly one MLflow server"
    return cmds[0]


def _flag(cmd: str, name: str) -> str | None:
    m = re.search(rf"{re.escape(name)}[=\s]+(\"[^\"]*\"|'[^']*'|\S+)", cmd)
    return m.group(1).strip("\"'") if m else None


def _shared_mount(cfg: dict[str, Any]) -> str:
    mounts = [
        m.group(1)
        for c in cfg["initialization_commands"]
        if (m := re.search(r"mount -t nfs4?\b.*\s(/\S+)\s*$", c, re.DOTALL))
    ]
    assert len(mounts) == 1, "expected one NFS mount in initialization_commands"
    return mounts[0].rstrip("/")


# ---------------------------------------------------------------------------------- Ray's validation


def test_ray_accepts_cluster_yaml():
    _ray_validate(_cluster())


def _unknown_top_level_key(cfg):
    cfg["head_node"] = {"InstanceType": "m6i.2xlarge"}


def _head_type_not_defined(cfg):
    cfg["head_node_type"] = "ray.head.default"


def _fractional_resource(cfg):
    _head(cfg)["resources"]["trial_driver"] = 0.5


def _node_type_without_node_config(cfg):
    del next(iter(_workers(cfg).values()))["node_config"]


def _min_workers_above_max(cfg):
    next(iter(_workers(cfg).values()))["min_workers"] = cfg["max_workers"] + 1


@pytest.mark.parametrize(
    "break_it",
    [
        _unknown_top_level_key,
        _head_type_not_defined,
        _fractional_resource,
        _node_type_without_node_config,
        _min_workers_above_max,
    ],
)
def test_ray_rejects_broken_variants(break_it):
    """The validation above can fail: the same validator refuses each of these edits of cluster.yaml."""
    cfg = _cluster()
    break_it(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _ray_validate(cfg)


def test_no_command_list_comes_from_ray_defaults():
    cfg = _cluster()
    missing = [k for k in COMMAND_KEYS if k not in cfg]
    assert not missing, f"cluster.yaml must set {missing} (Ray's AWS defaults would be used)"


# ------------------------------------------------------------------------ consistency with the specs


def test_there_are_cluster_specs():
    assert CLUSTER_SPECS, "no tune_jobs/*.yaml sets resources.driver_resource"


@pytest.mark.parametrize(("name", "spec"), CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_only_the_head_offers_the_driver_resource(name, spec):
    cfg = _cluster()
    resource = spec["resources"]["driver_resource"]
    assert _head(cfg)["resources"].get(resource, 0) >= 1, f"{name}: head lacks {resource!r}"
    for wname, wtype in _workers(cfg).items():
        assert resource not in wtype["resources"], f"{name}: worker type {wname} offers {resource!r}"


def test_head_start_command_declares_the_same_resources():
    cfg = _cluster()
    start = next(c for c in cfg["head_start_ray_commands"] if "ray start --head" in c)
    declared = json.loads(_flag(start, "--resources") or "{}")
    custom = {k: v for k, v in _head(cfg)["resources"].items() if k not in ("CPU", "GPU", "memory")}
    assert declared == custom


@pytest.mark.parametrize(("name", "spec"), CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_gpu_workers_fit_the_specs_ddp_workers(name, spec):
    """A request no node type can meet never fails in Ray Train: it waits forever. Catch it here."""
    cfg = _cluster()
    res = spec["resources"]
    assert res.get("gpu"), f"{name}: cluster specs train on GPU workers"
    assert _head(cfg)["resources"].get("GPU", 0) == 0, "the head must not attract DDP workers"
    cpus, gpus = res.get("cpus_per_worker", 1), res.get("gpus_per_worker", 1)
    fitting = [
        t
        for t in _workers(cfg).values()
        if t["resources"].get("GPU", 0) >= gpus and t["resources"].get("CPU", 0) >= cpus
    ]
    assert fitting, f"{name}: no worker type offers {gpus} GPU + {cpus} CPUs"
    capacity = min(cfg["max_workers"], sum(t.get("max_workers", cfg["max_workers"]) for t in fitting))
    assert capacity >= res.get("workers_per_trial", 1), f"{name}: a trial needs more GPU nodes than allowed"


@pytest.mark.parametrize(("name", "spec"), CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_spec_paths_are_on_the_shared_volume(name, spec):
    mount = _shared_mount(_cluster())
    data = spec.get("data") or {}
    paths = [data.get("root"), data.get("cache_dir"), spec.get("storage_path")]
    for path in paths:
        if path is None or "://" in path:
            continue
        assert path == mount or path.startswith(mount + "/"), f"{name}: {path} is not under {mount}"


@pytest.mark.parametrize(("name", "spec"), CLUSTER_SPECS, ids=[n for n, _ in CLUSTER_SPECS])
def test_spec_tracking_uri_reaches_mlflow_on_every_node(name, spec):
    """The driver on the head logs to the URI; what users run on a GPU node (`dynconv evaluate --device
    cuda`) must find the server at the same URI there."""
    cfg = _cluster()
    uri = (spec.get("mlflow") or {}).get("tracking_uri")
    if uri is None:
        pytest.skip("spec leaves the tracking URI to the environment")
    m = re.fullmatch(r"http://(127\.0\.0\.1|localhost):(\d+)/?", uri)
    assert m, f"{name}: unexpected tracking URI {uri}"
    port = m.group(2)
    mlflow = _mlflow_command(cfg)
    assert _flag(mlflow, "--port") == port
    relay = [c for c in cfg["worker_start_ray_commands"] if f"TCP-LISTEN:{port}" in c]
    assert relay, f"GPU workers have no relay from 127.0.0.1:{port} to the head"
    assert "bind=127.0.0.1" in relay[0]
    assert f"TCP:$RAY_HEAD_IP:{port}" in relay[0]


def test_mlflow_store_is_on_the_shared_volume():
    cfg = _cluster()
    mount = _shared_mount(cfg)
    mlflow = _mlflow_command(cfg)
    assert _flag(mlflow, "--backend-store-uri").startswith(f"sqlite:///{mount}/")
    assert _flag(mlflow, "--artifacts-destination").startswith(f"{mount}/")


# ---------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize("path", [CLUSTER_FILE, DOCS_FILE], ids=lambda p: p.name)
def test_no_credentials(path):
    text = path.read_text()
    found = [p.pattern for p in CREDENTIAL_PATTERNS if p.search(text)]
    assert not found, f"{path.name} looks like it holds credentials: {found}"


def test_credential_patterns_catch_a_key():
    leaked = "aws_access_key_id = AKIAABCDEFGHIJKLMNOP\npassword: hunter2"
    assert sum(bool(p.search(leaked)) for p in CREDENTIAL_PATTERNS) == 3


def test_dashboard_listens_on_loopback_only():
    start = next(c for c in _cluster()["head_start_ray_commands"] if "ray start --head" in c)
    assert _flag(start, "--dashboard-host") == "127.0.0.1"


def test_mlflow_exposure_is_limited_and_documented():
    cfg = _cluster()
    mlflow = _mlflow_command(cfg)
    host = _flag(mlflow, "--host")
    allowed = _flag(mlflow, "--allowed-hosts")
    assert "--disable-security-middleware" not in mlflow
    assert allowed, "MLflow must restrict the Host header (--allowed-hosts)"
    assert "*" not in [h.strip() for h in allowed.split(",")], "--allowed-hosts must not accept every host"
    if host != "127.0.0.1":
        docs = DOCS_FILE.read_text()
        assert host in docs and "security group" in docs, f"docs/cluster.md must explain --host {host}"
        # ... and the network really is closed: see the security-group tests (test_cluster_security.py).
