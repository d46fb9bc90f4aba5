"""`dynconv ui`: a busy port is one line, SIGTERM leaves nothing listening, and the UI renders a study.

The browser test loads the MLflow UI in headless Chromium (Debian's `chromium`; `.ci/run` installs it)
and reads the rendered DOM. The tiny finished study is trained in-process with the helpers of
`tests/test_evaluate.py` (no Ray). Cost on 2 cores: the study ~15 s, each UI start ~5-10 s, each page ~10 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dynconv.tracking.layout import end_run
from dynconv.tracking.store import client

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(uri: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "dynconv", "ui", "--port", str(port), "--tracking-uri", uri]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dynconv ui exited early:\n{proc.stdout.read()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"MLflow UI not up on port {port} after {timeout_s} s")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start_ui(f"sqlite:///{tmp_path}/mlflow.db", port)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().splitlines() == [
        f"dynconv: error: port {port} on 127.0.0.1 is busy (Address already in use): another MLflow UI? "
        "Stop it or choose another port with --port"
    ]


def test_sigterm_leaves_nothing_listening(tmp_path: Path) -> None:
    port = free_port()
    proc = start_ui(f"sqlite:///{tmp_path}/mlflow.db", port)
    try:
        wait_healthy(port, proc)
    finally:
        stop(proc)
    assert proc.returncode == 0
    deadline = time.monotonic() + 10
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listening(port), "an MLflow server outlived dynconv ui"


# ------------------------------------------------------------------------------------ the browser


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium; apt-get failed or not Debian)")
    return path


def render(url: str, tmp_path: Path, budget_ms: int = 15000, screenshot: Path | None = None) -> str:
    """The page's DOM after `budget_ms` of virtual time in headless Chromium (no network but localhost)."""
    profile = tmp_path / f"profile{time.monotonic_ns()}"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--window-size=1400,900",
    ]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny study as `dynconv tune` leaves it: study run, 2 trial runs, an evaluation with its table."""
    import torch

    from dynconv.spec.ranking import Ranking
    from dynconv.tune.parent_run import record_trial_table
    from dynconv.tune.study_evaluation import evaluate_study_cli
    from dynconv.tune.study_result import StudyResult, TrialSummary, apply_ranking
    from dynconv.tune.summary import write_study_summary
    from tests.test_evaluate import FAST, make_spec, open_study, train_trial

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("uistudy")
    uri = f"sqlite:///{root}/mlflow.db"
    spec = make_spec(root, "tiny", "simple_cnn_dynamic")
    exp, parent = open_study(uri, spec)
    trials = []
    for key, params, status in [
        ("a", {"lr": 0.05, "augment_strength": 0.1}, "FINISHED"),
        ("b", {"lr": 0.02, "augment_strength": 0.3}, "KILLED"),
    ]:
        run_id = train_trial(uri, exp, parent, spec, params, key, status)
        acc = client(uri).get_run(run_id).data.metrics["val_acc"]  # the last value, as Tune's
        outcome = "FINISHED" if status == "FINISHED" else "STOPPED"
        trials.append(TrialSummary(key, params, acc, 2, outcome, run_id))
    apply_ranking(trials, Ranking.for_spec(spec))
    record_trial_table(uri, parent, trials, spec)  # the driver's one ranking, as it records it
    [(eval_run, _)] = evaluate_study_cli(
        "tiny", subsets="RGB,RB,G", tracking_uri=uri, device="cpu", speed=FAST
    )
    result = StudyResult("tiny", "tiny-20240101-000000", parent, exp, uri, "", False, trials)
    write_study_summary(spec, result, [(eval_run, _)])
    end_run(uri, parent, "FINISHED")
    champion = register_as_champion(uri, trials[0].run_id, spec.data.image_size)
    port = free_port()
    proc = start_ui(uri, port)
    try:
        wait_healthy(port, proc)
        yield {
            "uri": uri,
            "exp": exp,
            "parent": parent,
            "trials": trials,
            "eval": eval_run,
            "port": port,
            "champion": champion,
        }
    finally:
        stop(proc)


def register_as_champion(uri: str, run_id: str, image_size: int) -> str:
    """Trial `run_id`'s model registered as `tiny@champion`, as a confirmed study registers its champion."""
    from dynconv.evaluation.model import served_from_checkpoint
    from dynconv.tracking.artifacts import load_checkpoint
    from dynconv.tracking.registry import log_served_model, register_champion

    served = served_from_checkpoint(load_checkpoint(uri, run_id), run_id)
    model_uri = log_served_model(uri, run_id, served, image_size=image_size, metadata={"study": "tiny"})
    outcome = register_champion(
        uri,
        "tiny",
        model_uri,
        study="tiny",
        source_run_id=run_id,
        alias="champion",
        score=0.5,
        test_set_id="t",
    )
    return outcome.version


def runs_url(port: int, experiment_id: str, tail: str = "") -> str:
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}{tail}?workflowType=machine_learning"


def page_text(dom: str) -> str:
    import html
    import re

    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def test_browser_shows_study_trials_and_subset_table(finished_study, tmp_path: Path) -> None:
    s = finished_study
    port, exp = s["port"], s["exp"]
    runs = page_text(render(runs_url(port, exp, "/runs"), tmp_path))
    assert "Run Name" in runs and " tiny " in runs, runs[:2000]
    assert "4 matching runs" in runs  # the study run, 2 trials, 1 evaluation
    assert "Detect Issues" not in runs and "Traces 0" not in runs, "opened on the GenAI overview"

    study = page_text(render(runs_url(port, exp, f"/runs/{s['parent']}"), tmp_path))
    assert "Study tiny" in study and "2 trials (1 finished, 1 stopped)" in study, study[:2000]
    assert "subset accuracy % RGB" in study, "the description's subset table"
    children = study.split("Child runs", 1)[1][:200]
    assert "trial_a" in children and "trial_b" in children and "eval-trial_a" in children

    table = page_text(render(runs_url(port, exp, f"/runs/{s['eval']}/artifacts/subsets.json"), tmp_path))
    assert "View as table" in table, table[:2000]
    rows = table.split("subset n accuracy", 1)[1]
    assert [w for w in rows.split() if w in ("RGB", "RB", "G")][:3] == ["RGB", "RB", "G"]


def test_browser_shows_the_registered_champion_with_its_alias_and_source_run(
    finished_study, tmp_path
) -> None:
    s = finished_study
    base = f"http://127.0.0.1:{s['port']}/#/models/tiny"
    model = page_text(render(base, tmp_path))
    assert "tiny" in model and f"Version {s['champion']}" in model and "@ champion" in model, model[:3000]
    version = page_text(render(f"{base}/versions/{s['champion']}", tmp_path))
    assert "champion" in version and "trial_a" in version, version[:3000]  # its source run, by name
    # how to serve it, with its `channels` parameter: MLflow 3.17's version page shows a signature's
    # inputs and outputs but not its params, so the version's description names them
    assert "Params: channels (string, default 'RGB')" in version, version[:3000]
    assert "mlflow models serve -m models:/tiny@champion" in version and "Outputs (6)" in version


@pytest.mark.skipif(not os.environ.get("DYNCONV_SCREENSHOT"), reason="writes docs/img; run by hand")
def test_screenshot_of_a_study(tmp_path: Path) -> None:
    """DYNCONV_SCREENSHOT=sqlite:///ABS/mlflow.db,EXPERIMENT_ID: the runs page into docs/img/."""
    uri, exp = os.environ["DYNCONV_SCREENSHOT"].rsplit(",", 1)
    port = free_port()
    proc = start_ui(uri, port)
    try:
        wait_healthy(port, proc)
        out = REPO / "docs" / "img" / "mlflow-study-runs.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        flat = "&orderByKey=attributes.run_name&orderByAsc=true"  # sorted by name: children not nested
        render(runs_url(port, exp, "/runs") + flat, tmp_path, screenshot=out)
        assert out.stat().st_size > 10_000
    finally:
        stop(proc)
