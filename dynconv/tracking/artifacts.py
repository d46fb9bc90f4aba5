"""Reading artifacts back: a trial's checkpoint, a study's spec, JSON/YAML and CSV files, per-image
predictions.

Read-only; imports `dynconv.tracking.layout`, `dynconv.errors`, `dynconv.spec` (lazily) and `mlflow`
inside functions.
"""

from __future__ import annotations

import csv
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dynconv.errors import DynconvError, one_line
from dynconv.tracking.layout import CHECKPOINT_ARTIFACT, SPEC_ARTIFACT
from dynconv.tracking.store import client, store_errors


def load_checkpoint(uri: str, run_id: str) -> dict[str, Any]:
    """The trial's `checkpoint/state.pt` (torch.load with weights_only=True), or a one-line error."""
    import torch

    with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
        try:
            path = client(uri).download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
        except store_errors() as exc:
            raise DynconvError(
                f"run {run_id} has no {CHECKPOINT_ARTIFACT} artifact ({one_line(exc)})"
            ) from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
            raise DynconvError(f"checkpoint of run {run_id} failed to load ({one_line(exc)})") from None
    missing = [
        k
        for k in ("model", "model_name", "num_classes", "spec")
        if not isinstance(state, dict) or k not in state
    ]
    if missing:
        raise DynconvError(
            f"checkpoint of run {run_id} is not a dynconv checkpoint (missing {', '.join(missing)})"
        )
    return state


def read_yaml(uri: str, run_id: str, artifact: str) -> Any:
    """A YAML (or JSON, which is YAML) artifact of run `run_id`, parsed; a one-line error when it is
    missing or unreadable."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="dynconv_artifact_") as tmp:
        try:
            path = client(uri).download_artifacts(run_id, artifact, tmp)
            return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (*store_errors(), yaml.YAMLError) as exc:
            raise DynconvError(
                f"run {run_id} has no readable {artifact} artifact ({one_line(exc)})"
            ) from None


def read_csv(uri: str, run_id: str, artifact: str) -> list[dict[str, str]]:
    """The rows of a CSV artifact of run `run_id` (values as text); a one-line error when it is missing."""
    with tempfile.TemporaryDirectory(prefix="dynconv_artifact_") as tmp:
        try:
            path = client(uri).download_artifacts(run_id, artifact, tmp)
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except (*store_errors(), OSError, csv.Error) as exc:
            raise DynconvError(
                f"run {run_id} has no readable {artifact} artifact ({one_line(exc)})"
            ) from None


def download_yaml(uri: str, run_id: str, artifact: str) -> Any:
    """`read_yaml`, or None when the artifact is missing or unreadable."""
    try:
        return read_yaml(uri, run_id, artifact)
    except DynconvError:
        return None


def load_study_spec(uri: str, parent_run):
    """The JobSpec the study ran with, from its `spec.yaml` artifact (no YAML file needed)."""
    from dynconv.spec import parse_spec

    data = read_yaml(uri, parent_run.info.run_id, SPEC_ARTIFACT)
    return parse_spec(data, source=f"run {parent_run.info.run_id} {SPEC_ARTIFACT}")


def load_predictions(uri: str, run_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{subset: (y_true, y_pred)} from an evaluation run's `predictions/predictions_<S>.npz`."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="dynconv_report_") as tmp:
        try:
            local = client(uri).download_artifacts(run_id, "predictions", tmp)
        except store_errors() as exc:
            raise DynconvError(f"evaluation run {run_id} has no predictions artifact ({exc})") from None
        for path in sorted(Path(local).glob("predictions_*.npz")):
            with np.load(path) as z:
                out[path.stem.removeprefix("predictions_")] = (z["y_true"], z["y_pred"])
    return out
