"""A study's champion in MLflow's Model Registry (issue 21 item 2): the served model, logging it, the
alias rules, and loading the champion in a process where dynconv is not installed.

One sqlite store per module (tmp_path), tiny 16-pixel models of width 4; the only server is a local
stand-in on a free port that answers 404 to everything (a tracking proxy without the registry API).
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dynconv.data.augment import normalize
from dynconv.data.channels import SUBSETS
from dynconv.errors import DynconvError
from dynconv.evaluation.model import served_from_checkpoint
from dynconv.evaluation.predict import forward
from dynconv.models import create_model
from dynconv.models.served import ServedClassifier
from dynconv.tracking.layout import TAG_SOURCE_RUN, TAG_STUDY, ensure_experiment
from dynconv.tracking.registry import (
    CODE_COPY,
    PACKAGE,
    log_served_model,
    register_champion,
    registered_version,
    study_versions,
)
from dynconv.tracking.store import client

REPO = Path(__file__).resolve().parents[1]
ARGS = {"stem": "small", "width": 4}
SIZE = 16
METADATA = {
    "channel_slots": {"0": "R", "1": "G", "2": "B"},
    "input": "float32 (N, C, H, W) in [0, 1]; channels= lists the slot of each channel of x",
    "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "test_accuracy": {"RGB": 0.5, "RG": 0.4, "B": 0.25},
    "study": "tiny",
    "test_set": "t1",
}


def _served(name: str, seed: int = 0) -> ServedClassifier:
    """A tiny model of `name` with non-trivial BatchNorm statistics, served from its checkpoint dict."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=5, **ARGS)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, SIZE, SIZE))
    state = {"model_name": name, "model_args": ARGS, "num_classes": 5, "model": model.state_dict()}
    return served_from_checkpoint(state)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A sqlite store with one experiment and a dynamic served model logged into one of its runs."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment_id = ensure_experiment(uri, "tiny")
    run_id = client(uri).create_run(experiment_id).info.run_id
    model_uri = log_served_model(uri, run_id, _served("resnet18_dynamic"), image_size=SIZE, metadata=METADATA)
    return {"uri": uri, "experiment_id": experiment_id, "run_id": run_id, "model_uri": model_uri}


def _new_run(store: dict[str, str]) -> str:
    return client(store["uri"]).create_run(store["experiment_id"]).info.run_id


def _register(store: dict[str, str], name: str, run_id: str, score: float, test_set: str = "t1", **kw):
    kw = {"study": "tiny", "alias": "champion", **kw}
    return register_champion(
        store["uri"], name, store["model_uri"], source_run_id=run_id, score=score, test_set_id=test_set, **kw
    )


@pytest.mark.parametrize("name", ["resnet18_dynamic", "resnet18"])
def test_served_classifier_equals_the_evaluation_path(name: str) -> None:
    """[0, 1] images of a subset's channels give exactly the logits of dynconv's evaluation (normalize,
    then `predict.forward`: the subset's channels for a dynamic model, zero-filled slots for a plain one)."""
    served = _served(name)
    x_u8 = torch.randint(
        0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        for subset in ("RGB", "RG", "RB", "B"):
            slots = list(SUBSETS[subset])
            expected = forward(served.model, normalize(x_u8), subset, served.model.dynamic)
            got = served(x_u8.float().div(255)[:, slots], channels=slots)
            assert torch.equal(got, expected), subset
        assert torch.equal(served(x_u8.float().div(255)[:, :2]), served(x_u8.float().div(255)[:, :2], [0, 1]))


def test_served_classifier_refuses_what_it_cannot_take() -> None:
    served = _served("resnet18_dynamic")
    x = torch.rand(2, 3, SIZE, SIZE)
    for bad_x, channels in (
        (torch.rand(2, 4, SIZE, SIZE), None),  # four channels
        ((x * 255).to(torch.uint8), None),  # not [0, 1] floats
        (x[:, :2], [0, 0]),  # one slot twice
        (x[:, :2], [0, 1, 2]),  # three slots for two channels
        (x[:, :1], [3]),  # no such slot
    ):
        with pytest.raises(ValueError, match=r"expected float images|channels="):
            served(bad_x, channels=channels)


LOADER = r"""
import json, sys
repo, uri, name, inputs, outputs = sys.argv[1:6]
# The venv has dynconv installed editable: its finder and any path into the repository go first.
editable = lambda hook: "__editable__" in str(getattr(hook, "__module__", "") or type(hook).__module__)
sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
inside_repo = lambda p: (p or ".").startswith(repo) and not p.startswith(sys.prefix)  # a .venv in it stays
sys.path[:] = [p for p in sys.path if "__editable__" not in p and not inside_repo(p)]
sys.path_importer_cache.clear()
try:
    import dynconv
except ImportError:
    pass
else:
    raise SystemExit(f"dynconv is importable before loading: {dynconv.__file__}")

import mlflow
import torch

mlflow.set_tracking_uri(uri)
model = mlflow.pytorch.load_model(f"models:/{name}@champion")
info = mlflow.models.get_model_info(f"models:/{name}@champion")
batches = torch.load(inputs)
with torch.no_grad():
    logits = [model(x, channels=channels) for x, channels in batches]
# the pyfunc face: the same batches as numpy pixels, the channels as an inference parameter
pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
answers = [
    pyfunc.predict(x.numpy(), params={"channels": ",".join(map(str, channels or range(x.shape[1])))})
    for x, channels in batches
]
torch.save({"logits": logits, "classes": [a["class_index"].tolist() for a in answers]}, outputs)
import dynconv

print(json.dumps({
    "dynconv": dynconv.__file__,
    "class": f"{type(model).__module__}.{type(model).__qualname__}",
    "metadata": info.metadata,
    "signature": info.signature.to_dict(),
}))
"""


def test_champion_loads_where_dynconv_is_not_installed(store: dict[str, str], tmp_path: Path) -> None:
    """Logged and registered here; loaded by `mlflow.pytorch.load_model("models:/<name>@champion")` in a
    process that has torch and mlflow but cannot import dynconv, it gives the same logits on 1, 2 and 3
    channels, and carries the metadata (with the training size) and the signature of its pyfunc face,
    which loads there too and answers with the same classes on the same channels."""
    import mlflow

    uri, path_before, env_before = store["uri"], list(sys.path), os.environ.get("MLFLOW_TRACKING_URI")
    global_uri_before = mlflow.is_tracking_uri_set()
    served = _served("resnet18_dynamic", seed=3)
    run_id = _new_run(store)
    model_uri = log_served_model(uri, run_id, served, image_size=SIZE, metadata=METADATA)
    assert sys.path == path_before and os.environ.get("MLFLOW_TRACKING_URI") == env_before
    outcome = register_champion(
        uri, "loadable", model_uri, study="tiny", source_run_id=run_id, alias="champion", score=0.5,
        test_set_id="t1",
    )  # fmt: skip
    assert outcome.moved and outcome.version == "1"
    assert sys.path == path_before and os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert mlflow.is_tracking_uri_set() == global_uri_before, "MLflow's global URI is left alone"

    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    batches = [(x[:, [2]], [2]), (x[:, [0, 2]], [0, 2]), (x, None)]
    with torch.no_grad():
        expected = [served(b, channels=c) for b, c in batches]
    torch.save(batches, tmp_path / "inputs.pt")
    (tmp_path / "loader.py").write_text(LOADER)
    (tmp_path / "user").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "loader.py"), str(REPO), uri, "loadable",
         str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        cwd=tmp_path / "user", env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["dynconv"].startswith(str(REPO)) and "/code/dynconv/" in report["dynconv"]
    assert report["class"] == "dynconv.models.served.ServedClassifier"
    assert report["metadata"] == {**METADATA, "image_size": SIZE}
    params = {p["name"]: p["default"] for p in json.loads(report["signature"]["params"])}
    assert params == {"channels": "RGB", "top_k": 5} and report["signature"]["inputs"] is None
    outputs = torch.load(tmp_path / "outputs.pt")
    for got, want in zip(outputs["logits"], expected, strict=True):
        torch.testing.assert_close(got, want)
    assert outputs["classes"] == [want.argmax(dim=1).tolist() for want in expected]


def test_served_code_copy_is_closed_under_imports() -> None:
    """Every dynconv module the copied files import is in the copy (else loading without dynconv fails)."""
    copied = [
        p
        for name in CODE_COPY
        for p in ([PACKAGE / name] if name.endswith(".py") else (PACKAGE / name).rglob("*.py"))
    ]
    modules = {".".join(("dynconv", *p.relative_to(PACKAGE).with_suffix("").parts)) for p in copied}
    modules = {m.removesuffix(".__init__") for m in modules}
    missing = set()
    for path in copied:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module]
            else:
                continue
            missing |= {m for m in imported if m.split(".")[0] == "dynconv" and m not in modules}
    assert missing == set()
    assert "dynconv.tracking.served_pyfunc" in modules and "dynconv.data.decode" in modules


def test_alias_moves_when_beaten_or_scored_on_another_test_set(store: dict[str, str]) -> None:
    first = _register(store, "rules", _new_run(store), 0.5)
    assert (first.version, first.moved) == ("1", True) and "no version held it" in first.message
    worse = _register(store, "rules", _new_run(store), 0.4)
    assert (worse.version, worse.moved) == ("2", False)
    assert "version 1 of registered model 'rules' keeps champion" in worse.message
    better = _register(store, "rules", _new_run(store), 0.6)
    assert (better.version, better.moved) == ("3", True) and "beats version 1" in better.message
    other_set = _register(store, "rules", _new_run(store), 0.1, test_set="t2")
    assert (other_set.version, other_set.moved) == ("4", True)
    assert "test set t1" in other_set.message and "do not compare" in other_set.message
    tie = _register(store, "rules", _new_run(store), 0.1, test_set="t2")
    assert (tie.version, tie.moved) == ("5", False) and "version 4" in tie.message
    assert registered_version(store["uri"], "models:/rules@champion").version == "4"
    for outcome in (first, worse, better, other_set, tie):
        assert "\n" not in outcome.message


def test_candidate_and_champion_move_independently(store: dict[str, str]) -> None:
    assert _register(store, "pair", _new_run(store), 0.9).moved
    candidate = _register(store, "pair", _new_run(store), 0.5, alias="candidate")
    assert (candidate.version, candidate.alias, candidate.moved) == ("2", "candidate", True)
    assert _register(store, "pair", _new_run(store), 0.7, alias="candidate").version == "3"
    assert client(store["uri"]).get_registered_model("pair").aliases == {"champion": 1, "candidate": 3}
    with pytest.raises(DynconvError, match="champion or candidate"):
        _register(store, "pair", _new_run(store), 0.7, alias="best")


def test_registering_a_run_again_reuses_its_version(store: dict[str, str]) -> None:
    """A study interrupted after registering and then resumed makes no second version."""
    run_a, run_b = _new_run(store), _new_run(store)
    _register(store, "again", run_a, 0.5)
    _register(store, "again", run_b, 0.4)
    again_a = _register(store, "again", run_a, 0.5)
    assert (again_a.version, again_a.moved) == ("1", False)
    assert again_a.message.startswith("reused version 1") and "already holds champion" in again_a.message
    again_b = _register(store, "again", run_b, 0.4)
    assert (again_b.version, again_b.moved) == ("2", False) and "keeps champion" in again_b.message
    versions = client(store["uri"]).search_model_versions("name = 'again'")
    assert sorted(v.tags[TAG_SOURCE_RUN] for v in versions) == sorted([run_a, run_b])


def test_study_versions_lists_the_studys_versions_oldest_first(store: dict[str, str]) -> None:
    """What a later confirmation reuses (one version per configuration): the versions dynconv registered
    for the study, with their source runs; none for a name nobody registered."""
    run_a, run_b = _new_run(store), _new_run(store)
    _register(store, "listed", run_a, 0.5)
    _register(store, "listed", run_b, 0.6)
    found = study_versions(store["uri"], "listed", "tiny")
    assert [(v.version, v.source_run_id) for v in found] == [("1", run_a), ("2", run_b)]
    assert study_versions(store["uri"], "listed", "other") == []
    assert study_versions(store["uri"], "nobody's", "tiny") == []
    assert study_versions(store["uri"], "never-registered", "tiny") == []


def test_a_registered_model_of_another_study_or_made_by_hand_is_refused(store: dict[str, str]) -> None:
    uri, c = store["uri"], client(store["uri"])
    _register(store, "taken", _new_run(store), 0.5, study="other")
    with pytest.raises(DynconvError) as refused:
        _register(store, "taken", _new_run(store), 0.9)
    assert "'taken' belongs to study 'other', not study 'tiny'" in str(refused.value)
    c.create_registered_model("by_hand")
    with pytest.raises(DynconvError, match="no dynconv study"):
        _register(store, "by_hand", _new_run(store), 0.9)
    c.create_registered_model("mixed", tags={TAG_STUDY: "tiny"})
    c.create_model_version("mixed", f"{uri.removeprefix('sqlite:///')}-elsewhere", run_id=None)
    with pytest.raises(DynconvError, match="holds versions 1 not registered by dynconv"):
        _register(store, "mixed", _new_run(store), 0.9)
    counts = {
        name: len(c.search_model_versions(f"name = '{name}'")) for name in ("taken", "by_hand", "mixed")
    }
    assert counts == {"taken": 1, "by_hand": 0, "mixed": 1}  # nothing registered by the refused calls


@pytest.fixture
def no_registry_server() -> Iterator[str]:
    """A local HTTP server on a free port answering 404 to every request: MLflow's REST client sees a
    store without the registry API."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def _not_found(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"Not Found")

        do_GET = do_POST = do_PATCH = do_DELETE = _not_found

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_store_without_registry_is_one_line(
    no_registry_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without the registry API, and a `file:` store (refused by MLflow 3.17 unless
    MLFLOW_ALLOW_FILE_STORE is set): one DynconvError line each, for writing and for reading."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri, says in ((no_registry_server, "has no model registry"), (tmp_path.as_uri(), "refused")):
        for call in (
            lambda u=uri: register_champion(
                u, "tiny", "models:/m-0", study="tiny", source_run_id="0" * 32, alias="champion", score=1.0,
                test_set_id="t1",
            ),
            lambda u=uri: registered_version(u, "models:/tiny@champion"),
        ):  # fmt: skip
            with pytest.raises(DynconvError) as error:
                call()
            assert says in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_registered_version_reads_an_alias_or_a_number(store: dict[str, str]) -> None:
    run_id = _new_run(store)
    _register(store, "read", run_id, 0.5)
    by_alias = registered_version(store["uri"], "models:/read@champion")
    assert by_alias == registered_version(store["uri"], "models:/read/1")
    version, source_run_id, tags = by_alias
    assert (version, source_run_id) == ("1", run_id)
    assert tags["dynconv.score"] == "0.5" and tags["dynconv.test_set"] == "t1" and tags[TAG_STUDY] == "tiny"
    for ref, says in (
        ("read", "use models:/NAME@ALIAS"),
        ("models:/read@candidate", "no such registered model version"),
        ("models:/read/9", "no such registered model version"),
        ("models:/nothing@champion", "no such registered model version"),
    ):
        with pytest.raises(DynconvError, match=says):
            registered_version(store["uri"], ref)
