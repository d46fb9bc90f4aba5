"""The MLflow layout of a study as comparable data, and the recorded layout it must keep.

`layout(uri, parent_run_id)` describes the study run and its children by role: normalised run names,
tag keys (with the values of the tags that are fixed for a given spec), param keys, metric keys and
artifact paths. Ids, timestamps and Tune trial ids are replaced by placeholders; values that depend on
timing or on the search (accuracies, which trial ASHA stopped) are left out, so the description is the
same on every run of the same code.

`tests/data/mlflow_layout.json` was recorded from the code before the split of evaluate/report/tracking
into packages (issue 12), so the tests that compare against it prove that the refactor kept the layout.
To re-record after an intended layout change: `DYNCONV_RECORD_LAYOUT=1 pytest tests/test_tune_smoke.py
tests/test_evaluate.py -k layout` and review the diff of the JSON file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

EXPECTED = Path(__file__).parent / "data" / "mlflow_layout.json"
VALUED_TAGS = ("dynconv.role", "dynconv.study", "dynconv.model", "dynconv.dynamic", "dynconv.rank")
_PLACEHOLDERS = (
    (re.compile(r"[0-9a-f]{32}"), "<run_id>"),
    (re.compile(r"\d{8}-\d{6}"), "<time>"),
    (re.compile(r"_[0-9a-f]{8}\b"), "_<trial>"),  # Ray Tune 2.60 trial ids: run_trial_c3aa3f87
    (re.compile(r"_[0-9a-f]{5}_\d{5}\b"), "_<trial>"),  # older Tune: run_trial_0d3f1_00000
)


def _normalise(text: str) -> str:
    for pattern, placeholder in _PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return text


def _artifacts(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def run_layout(client: Any, run: Any) -> dict[str, Any]:
    """One run's layout: normalised name, tags, param/metric keys and artifact paths."""
    tags = run.data.tags
    return {
        "run_name": _normalise(run.info.run_name or ""),
        "tags": sorted(k for k in tags if not k.startswith("mlflow.") or k == "mlflow.parentRunId"),
        "tag_values": {k: _normalise(tags[k]) for k in VALUED_TAGS if k in tags},
        "params": sorted(run.data.params),
        "metrics": sorted(run.data.metrics),
        "artifacts": sorted(_artifacts(client, run.info.run_id)),
    }


def _merge(layouts: list[dict[str, Any]]) -> dict[str, Any]:
    """The layouts of several runs of one role as one (union of keys; run count)."""
    merged: dict[str, Any] = {"count": len(layouts)}
    for key in ("run_name", "tags", "params", "metrics", "artifacts"):
        values: set[str] = set()
        for lay in layouts:
            values |= {lay[key]} if isinstance(lay[key], str) else set(lay[key])
        merged[key] = sorted(values)
    merged["tag_values"] = {
        k: sorted({lay["tag_values"][k] for lay in layouts if k in lay["tag_values"]})
        for k in VALUED_TAGS
        if any(k in lay["tag_values"] for lay in layouts)
    }
    return merged


def layout(uri: str, parent_run_id: str) -> dict[str, Any]:
    """The study run and its child runs grouped by `dynconv.role`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    by_role: dict[str, list[dict[str, Any]]] = {}
    for run in children:
        by_role.setdefault(run.data.tags.get("dynconv.role", "?"), []).append(run_layout(client, run))
    roles = {role: _merge(runs) for role, runs in sorted(by_role.items())}
    return {"study": _merge([run_layout(client, parent)]), **roles}


def one_run(uri: str, run_id: str) -> dict[str, Any]:
    """The layout of a single run (e.g. a rerun), in the same form as `layout`'s roles."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return _merge([run_layout(client, client.get_run(run_id))])


def check(name: str, actual: dict[str, Any]) -> None:
    """Assert `actual` equals the recorded layout `name` (or record it when DYNCONV_RECORD_LAYOUT is set)."""
    recorded = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    if os.environ.get("DYNCONV_RECORD_LAYOUT"):
        recorded[name] = actual
        EXPECTED.parent.mkdir(exist_ok=True)
        EXPECTED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert name in recorded, f"no recorded MLflow layout {name!r} in {EXPECTED}"
    differences = _differences(recorded[name], json.loads(json.dumps(actual)))
    assert not differences, f"MLflow layout {name!r} differs from {EXPECTED.name}:\n" + "\n".join(differences)


def _differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Readable differences between two layouts: missing and unexpected keys or list items, changed values."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{where}/{k}: missing" for k in expected if k not in actual]
        out += [f"{where}/{k}: unexpected" for k in actual if k not in expected]
        for k in expected.keys() & actual.keys():
            out += _differences(expected[k], actual[k], f"{where}/{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list) and expected != actual:
        missing = [x for x in expected if x not in actual]
        extra = [x for x in actual if x not in expected]
        return [f"{where}: missing {missing}, unexpected {extra}"]
    return [] if expected == actual else [f"{where}: expected {expected!r}, got {actual!r}"]
