"""The champion answers requests (issue 30): `mlflow models serve` of the registered model, each request
naming the channels it holds; bad requests; batch scoring through pyfunc; `dynconv predict`.

One tiny study in a sqlite store, written in this process as a study leaves it (the helpers of
`tests/test_evaluate.py`, as `tests/test_ui.py` does; no Ray): one trial of a width-4 dynamic ResNet-18 at
16 px, `dynconv evaluate` of it on RGB, RB, GB and B (its per-image predictions recorded), and its model
logged and registered as `tiny@champion` with the dataset's class names, as a confirmed study registers
its champion. The server is the real `mlflow models serve --env-manager local` process on a free port,
its predictions compared with the evaluation's on the same test images. Cost on 2 cores: the study
~10 s, the server's start ~5 s, the rest a few seconds.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynconv.data.channels import SUBSETS

SUBSETS_EVALUATED = "RGB,RB,GB,B"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained, evaluated and registered tiny study (module doc): its store, the test split's images
    (uint8 and files) and the evaluation's predictions per subset."""
    import torch

    from dynconv.evaluation.model import served_from_checkpoint
    from dynconv.spec.data import prepare_for_spec
    from dynconv.tracking.artifacts import load_checkpoint, load_predictions
    from dynconv.tracking.registry import log_served_model, register_champion
    from dynconv.tune.study_evaluation import evaluate_study_cli
    from tests.test_evaluate import FAST, make_spec, open_study, train_trial

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root}/mlflow.db"
    spec = make_spec(root, "tiny", "resnet18_dynamic", {"stem": "small", "width": 4})
    exp, parent = open_study(uri, spec)
    run_id = train_trial(uri, exp, parent, spec, {"lr": 0.05, "augment_strength": 0.1}, "a")
    [(eval_run, _)] = evaluate_study_cli(
        run_id, subsets=SUBSETS_EVALUATED, tracking_uri=uri, device="cpu", speed=FAST
    )
    data = prepare_for_spec(spec, progress=False)
    served = served_from_checkpoint(load_checkpoint(uri, run_id), run_id)
    metadata = {"study": "tiny", "class_names": list(data.class_names)}
    model_uri = log_served_model(uri, run_id, served, image_size=spec.data.image_size, metadata=metadata)
    register_champion(
        uri, "tiny", model_uri, study="tiny", source_run_id=run_id, alias="champion", score=0.5,
        test_set_id="t",
    )  # fmt: skip
    dataset = Path(data.manifest()["built_from"]["root"])
    return {
        "uri": uri,
        "run_id": run_id,
        "class_names": list(data.class_names),
        "images": np.asarray(data.split("test").images),
        "files": [dataset / f for f in data.files("test")],
        "predicted": {s: y_pred.tolist() for s, (_, y_pred) in load_predictions(uri, eval_run).items()},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(study: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`mlflow models serve -m models:/tiny@champion --env-manager local` on a free port, as a user
    starts it (the store named by MLFLOW_TRACKING_URI, the venv's bin on PATH for uvicorn)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": study["uri"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = open(Path(study["uri"].removeprefix("sqlite:///")).parent / "serve.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow models serve exited:\n{Path(log.name).read_text()[-3000:]}"
            assert time.monotonic() < deadline, "mlflow models serve not up after 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        yield {"url": f"http://127.0.0.1:{port}/invocations", "proc": proc}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn child, started here
            proc.wait(timeout=30)
        log.close()


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, parsed JSON answer) of a POST of `body`, as any client without torch sends it."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def pixels(study: dict[str, Any], subset: str) -> list:
    """The test images' channels of `subset` as floats in [0, 1] (nested lists: JSON)."""
    return (study["images"][:, list(SUBSETS[subset])].astype(np.float32) / 255).tolist()


def encoded(study: dict[str, Any]) -> dict[str, Any]:
    """The test images' files, base64-encoded in a column `image` (pandas' split orientation)."""
    data = [[base64.b64encode(f.read_bytes()).decode()] for f in study["files"]]
    return {"columns": ["image"], "data": data}


def classes(answer: dict[str, Any]) -> list[int]:
    return [row["class_index"] for row in answer["predictions"]]


@pytest.mark.parametrize("subset", ["RGB", "RB", "B"])
def test_the_served_champion_answers_with_the_classes_evaluate_predicts(server, study, subset) -> None:
    """Pixels of the subset's channels and the encoded image files, `channels` named as a parameter:
    the predicted classes are `dynconv evaluate`'s on the same images and subset, named by the dataset."""
    predicted = study["predicted"]
    assert len({tuple(p) for p in predicted.values()}) == len(predicted), "each subset its own predictions"
    status, by_pixels = post(server["url"], {"inputs": pixels(study, subset), "params": {"channels": subset}})
    assert status == 200, by_pixels
    assert classes(by_pixels) == study["predicted"][subset]
    status, by_files = post(
        server["url"], {"dataframe_split": encoded(study), "params": {"channels": subset, "top_k": 2}}
    )
    assert status == 200, by_files
    assert classes(by_files) == study["predicted"][subset]
    row = by_files["predictions"][0]
    assert row["class_name"] == study["class_names"][row["class_index"]]
    assert len(row["top_classes"]) == 2 and row["top_indices"][0] == row["class_index"]
    assert row["top_probabilities"][0] == row["probability"] >= row["top_probabilities"][1]
    default_k = min(5, len(study["class_names"]))  # top_k defaults to 5, at most the number of classes
    assert {len(r["top_classes"]) for r in by_pixels["predictions"]} == {default_k}


def test_bad_requests_are_400_with_one_line_and_the_server_goes_on(server, study) -> None:
    rgb = pixels(study, "RGB")[:2]
    junk = {"columns": ["image"], "data": [[base64.b64encode(b"no image").decode()]]}
    bad = [
        ({"inputs": rgb, "params": {"channels": "RB"}}, "channels 'RB' names 2 channels, the pixels hold 3"),
        ({"inputs": rgb, "params": {"channels": "RGX"}}, "unknown channels 'RGX'"),
        ({"inputs": (np.asarray(rgb) * 255).tolist()}, "pixel values outside [0, 1]"),
        ({"dataframe_split": junk, "params": {"channels": "B"}}, "image 0 does not decode"),
        ({"dataframe_records": [{"image": "%%"}]}, "image 0 is text but not base64"),
        ({"inputs": np.zeros((1, 3, 20, 20)).tolist()}, "images of 20x20 pixels: the model takes 16x16"),
    ]
    for body, says in bad:
        status, answer = post(server["url"], body)
        assert status == 400, (body.get("params"), answer)
        assert says in answer["message"] and "\n" not in answer["message"], answer["message"]
    status, answer = post(server["url"], {"inputs": pixels(study, "B"), "params": {"channels": "B"}})
    assert status == 200 and classes(answer) == study["predicted"]["B"]
    assert server["proc"].poll() is None


def test_batch_scoring_through_pyfunc_as_docs_registry_shows(study, monkeypatch) -> None:
    """docs/registry.md's batch example: `mlflow.pyfunc.load_model("models:/tiny@champion")` over a
    folder's files, `params={"channels": "GB"}`, without a server."""
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", study["uri"])  # the docs' set_tracking_uri, undone after
    model = mlflow.pyfunc.load_model("models:/tiny@champion")
    frame = pd.DataFrame({"image": [f.read_bytes() for f in study["files"]]})
    answer = model.predict(frame, params={"channels": "GB"})
    assert answer["class_index"].tolist() == study["predicted"]["GB"]
    slots = model.predict(frame, params={"channels": "1,2"})  # the same channels, as slots
    assert slots["class_index"].tolist() == study["predicted"]["GB"]


def test_dynconv_predict_scores_a_folder_into_a_csv(study, tmp_path, capsys) -> None:
    """`dynconv predict MODEL FOLDER --channels RB`: one CSV row per image file (a file that does not
    decode is a row with its error; other files are not images and are left out), the classes
    `dynconv evaluate` predicts for RB; a run id scores with that run's checkpoint, the same weights."""
    from dynconv.cli import main

    folder = tmp_path / "photos"
    shutil.copytree(study["files"][0].parents[1], folder)  # images/<class>/*.jpg: the test files among all
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "predictions.csv"
    args = ["--channels", "RB", "--top-k", "2", "--batch-size", "16", "--tracking-uri", study["uri"]]
    assert main(["predict", "models:/tiny@champion", str(folder), "--out", str(out), *args]) == 0
    printed = capsys.readouterr()
    rows = {Path(r["path"]).relative_to(folder).as_posix(): r for r in csv.DictReader(out.open())}
    expected = {
        f.relative_to(study["files"][0].parents[1]).as_posix(): k
        for f, k in zip(study["files"], study["predicted"]["RB"], strict=True)
    }
    assert set(expected) < set(rows) and "notes.txt" not in rows
    assert {name: int(rows[name]["class_index"]) for name in expected} == expected
    assert rows["broken.png"]["class_index"] == "" and "does not decode" in rows["broken.png"]["error"]
    some = rows[next(iter(expected))]
    assert some["channels"] == "RB" and len(some["top_classes"].split(";")) == 2
    assert some["class_name"] == study["class_names"][int(some["class_index"])]
    assert "images with models:/tiny@champion (version 1), channels RB (1 did not decode" in printed.out
    assert "scoring" in printed.err, "a progress bar for more than one batch"

    by_run = tmp_path / "by_run.csv"
    assert main(["predict", study["run_id"], str(folder), "--out", str(by_run), *args]) == 0
    run_rows = {Path(r["path"]).relative_to(folder).as_posix(): r for r in csv.DictReader(by_run.open())}
    assert {name: int(run_rows[name]["class_index"]) for name in expected} == expected


def test_dynconv_predict_refuses_bad_input_in_one_line(study, tmp_path, capsys) -> None:
    from dynconv.cli import main

    image = study["files"][0]
    for argv, says in (
        (["models:/tiny@champion", str(image), "--channels", "RGBA"], "unknown channels 'RGBA'"),
        (["models:/tiny@nobody", str(image)], "no such registered model version"),
        (["tiny", str(image)], "'tiny' names no model"),
        (["models:/tiny@champion", str(tmp_path / "missing")], "no such file or folder"),
        (["models:/tiny@champion", str(tmp_path)], "no image files under"),
    ):
        assert main(["predict", *argv, "--tracking-uri", study["uri"], "--out", str(tmp_path / "p.csv")]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_requests_are_decoded_within_a_studys_pixel_budget() -> None:
    from dynconv.models.serving import MAX_PIXELS
    from dynconv.spec import DataSpec

    assert DataSpec().max_pixels == MAX_PIXELS
