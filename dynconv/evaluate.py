"""`dynconv evaluate`: a study's best trial(s) on every channel subset, logged to MLflow as child runs.

What one evaluation measures, per subset (RGB, RG, RB, GB, R, G, B):

* how the model sees a subset: a *dynamic* model gets only the subset's channels plus their indices
  (`model(x[:, idx], channels=idx)`); a *plain* model gets all three channels with the missing ones
  zero-filled after normalisation (= the dataset mean colour), the usual baseline. The printed table
  says which.
* accuracy with a 95 % Wilson interval, macro precision / recall / F1 (`dynconv.stats`), top-5, the
  confusion matrix, McNemar's test against the RGB input on the same images,
* FLOPs for that input (fvcore via `dynconv.flops`: a dynamic stem does C/3 of its work, a
  zero-filled plain model pays full price), parameters, and on the evaluating device the latency of
  one image (batch 1, median over iterations) and the throughput at a large batch (forward pass only,
  input already on the device; bf16 autocast and channels-last on CUDA, as in training; each
  measurement has a time budget; a plain model runs the same full-width input for every subset, so
  it is timed once).

Which trials: the trial runs of the study with a `checkpoint/state.pt` artifact and status FINISHED
or KILLED (stopped early by ASHA: it finished what it was allowed to run), FINISHED ones first, each
group ordered by the trial's best `val_acc` over its epochs. FAILED and still-RUNNING trials are never
evaluated. The checkpoint is the trial's *last* epoch (what Tune kept), so its epoch and validation
accuracy are printed next to the best one.

MLflow: one child run of the study per evaluated trial (`dynconv.role=evaluation`), with metrics
`acc_<S>`, `acc_low_<S>`, `acc_high_<S>`, `precision_<S>`, `recall_<S>`, `f1_<S>`, `top5_<S>`,
`flops_<S>`, `latency_ms_<S>`, `throughput_<S>`, `params`; artifacts `subsets.csv`, `subsets.md`,
`subsets.json` (MLflow table), `evaluation.json`, `predictions/predictions_<S>.npz` (per-image labels,
predictions, top-5 hits and the test-set id, so `dynconv report` can pair models image by image),
and `plots/` (accuracy by subset with CIs, confusion matrices; on the best trial's run also learning
curves of the top trials and lr / augment strength against validation accuracy for all trials).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynconv import stats, tracking
from dynconv.errors import DynconvError

CHECKPOINT_ARTIFACT = "checkpoint/state.pt"
SPEC_ARTIFACT = "spec.yaml"
TAG_SOURCE_RUN = "dynconv.source_run_id"
TAG_MODEL = "dynconv.model"
TAG_DYNAMIC = "dynconv.dynamic"
TAG_RANK = "dynconv.rank"
TAG_TEST_SET = "dynconv.test_set"
TAG_EVALUATION_RUN = "dynconv.evaluation_run_id"
EVALUABLE_STATUSES = ("FINISHED", "KILLED")
DYNAMIC_NOTE = "dynamic model: only the subset's channels, with their indices"
PLAIN_NOTE = "plain model: missing channels zero-filled (after normalisation, i.e. the dataset mean colour)"
RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SpeedConfig:
    """How much timing to do: cheap by default, zero iterations skip a measurement (NaN)."""

    warmup: int = 3
    latency_iters: int = 20
    throughput_batch: int = 256
    throughput_iters: int = 3
    budget_s: float = 10.0  # per measurement; iterations stop early once it is spent


# ------------------------------------------------------------------------------ results


@dataclass
class SubsetResult:
    """Everything measured for one channel subset of one model on one split."""

    subset: str
    n: int
    correct: int
    accuracy: float
    acc_low: float
    acc_high: float
    precision: float
    recall: float
    f1: float
    top5: float
    flops: int
    params: int
    latency_ms: float
    throughput: float
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)
    top5_hit: np.ndarray = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    vs_rgb: stats.McNemar | None = None

    @property
    def correct_mask(self) -> np.ndarray:
        return self.y_true == self.y_pred

    def row(self) -> dict[str, Any]:
        """The CSV / MLflow-table row (fractions, not percentages)."""
        return {
            "subset": self.subset,
            "n": self.n,
            "accuracy": self.accuracy,
            "acc_low": self.acc_low,
            "acc_high": self.acc_high,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "top5": self.top5,
            "flops": self.flops,
            "params": self.params,
            "latency_ms": self.latency_ms,
            "throughput": self.throughput,
            "mcnemar_b_vs_rgb": None if self.vs_rgb is None else self.vs_rgb.b,
            "mcnemar_c_vs_rgb": None if self.vs_rgb is None else self.vs_rgb.c,
            "p_vs_rgb": None if self.vs_rgb is None else self.vs_rgb.p_value,
        }


@dataclass
class Evaluation:
    """One model evaluated over channel subsets on one split."""

    model_name: str
    model_args: dict[str, Any]
    dynamic: bool
    split: str
    device: str
    num_classes: int
    class_names: list[str] | None
    test_set_id: str
    data_fingerprint: str
    image_size: int
    results: list[SubsetResult]
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    @property
    def input_note(self) -> str:
        return DYNAMIC_NOTE if self.dynamic else PLAIN_NOTE

    def result(self, subset: str) -> SubsetResult:
        return next(r for r in self.results if r.subset == subset)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics named by measure and subset, e.g. `acc_RGB`, `flops_R`."""
        out: dict[str, float] = {}
        for r in self.results:
            s = r.subset
            out.update(
                {
                    f"acc_{s}": r.accuracy,
                    f"acc_low_{s}": r.acc_low,
                    f"acc_high_{s}": r.acc_high,
                    f"precision_{s}": r.precision,
                    f"recall_{s}": r.recall,
                    f"f1_{s}": r.f1,
                    f"top5_{s}": r.top5,
                    f"flops_{s}": float(r.flops),
                }
            )
            if math.isfinite(r.latency_ms):
                out[f"latency_ms_{s}"] = r.latency_ms
            if math.isfinite(r.throughput):
                out[f"throughput_{s}"] = r.throughput
        if self.results:
            out["params"] = float(self.results[0].params)
            out["n_test"] = float(self.results[0].n)
        return out

    def summary(self) -> dict[str, Any]:
        """`evaluation.json`: what was evaluated, how, and on which images."""
        return {
            "model": self.model_name,
            "model_args": self.model_args,
            "dynamic": self.dynamic,
            "input": self.input_note,
            "split": self.split,
            "device": self.device,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "test_set_id": self.test_set_id,
            "data_fingerprint": self.data_fingerprint,
            "n": self.results[0].n if self.results else 0,
            "subsets": [r.subset for r in self.results],
            "speed": self.speed.__dict__,
        }


# --------------------------------------------------------------------------- evaluation


def test_set_id(files: Sequence[str], labels: np.ndarray) -> str:
    """Identity of an evaluation split: sha256 of its file list (in order) and labels.

    Two evaluations with the same id saw the same images in the same order, so their per-image
    correctness can be paired (McNemar), even at different image sizes. The cache fingerprint is kept
    too, but it also covers the training split, file mtimes and the image size, which do not matter
    for pairing.
    """
    h = hashlib.sha256()
    for name, label in zip(files, np.asarray(labels).tolist(), strict=True):
        h.update(f"{name}\0{label}\n".encode())
    return h.hexdigest()


def model_inputs(x, subset: str, dynamic: bool):
    """(input, channels) for a normalised full (B, 3, H, W) batch shown as `subset`.

    Dynamic: the subset's channels only, and their indices for `forward(x, channels=...)`.
    Plain: the full-width batch with the other channels zero-filled, and None.
    """
    from dynconv.data.channels import model_inputs as _model_inputs  # shared with training's validation

    return _model_inputs(x, subset, dynamic)


def _autocast(device):
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forward(model, x, subset: str, dynamic: bool):
    import torch

    xin, channels = model_inputs(x, subset, dynamic)
    if x.device.type == "cuda":
        xin = xin.contiguous(memory_format=torch.channels_last)
    with _autocast(x.device):
        return model(xin, channels=channels) if channels is not None else model(xin)


def predict(
    model, images: np.ndarray, labels: np.ndarray, subset: str, dynamic: bool, device, batch_size: int = 256
):
    """(y_pred, top5_hit) numpy arrays over a split, in split order."""
    import torch

    from dynconv.data.augment import normalize

    preds, hits = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x_u8 = torch.from_numpy(np.array(images[start : start + batch_size]))
            y = torch.from_numpy(np.asarray(labels[start : start + batch_size], dtype=np.int64)).to(device)
            logits = _forward(model, normalize(x_u8, device), subset, dynamic).float()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            preds.append(topk[:, 0].cpu().numpy())
            hits.append(topk.eq(y[:, None]).any(dim=1).cpu().numpy())
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(preds).astype(np.int64), np.concatenate(hits).astype(bool)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_calls(fn, iters: int, budget_s: float) -> list[float]:
    """Seconds of up to `iters` calls of `fn`, stopping early once `budget_s` is spent (at least one call)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return times


def measure_speed(
    model, images: np.ndarray, subset: str, dynamic: bool, device, speed: SpeedConfig
) -> tuple[float, float]:
    """(latency ms per image at batch 1 (median), images per second at `speed.throughput_batch`).

    Each measurement stops early once `speed.budget_s` is spent, so a 7.7-GFLOP model on a CPU costs
    seconds, not minutes; when even the warm-up at the large batch overruns the budget, that one
    (slightly pessimistic) call is the measurement.
    """
    import torch

    from dynconv.data.augment import normalize

    model.eval()
    latency = throughput = float("nan")

    def call(x):
        _sync(device)  # the copy to the device is not part of the timing

        def run() -> None:
            _forward(model, x, subset, dynamic)
            _sync(device)

        return run

    with torch.no_grad():
        if speed.latency_iters > 0 and len(images):
            one = call(normalize(torch.from_numpy(np.array(images[:1])), device))
            _timed_calls(one, speed.warmup, speed.budget_s)
            latency = statistics.median(_timed_calls(one, speed.latency_iters, speed.budget_s)) * 1000
        if speed.throughput_iters > 0 and len(images):
            idx = np.sort(np.arange(speed.throughput_batch) % len(images))
            big = call(normalize(torch.from_numpy(np.array(images[idx])), device))
            warm = _timed_calls(big, max(1, speed.warmup), speed.budget_s)  # allocator, cuDNN autotuning
            times = warm[-1:] if sum(warm) > speed.budget_s else []
            times = times or _timed_calls(big, speed.throughput_iters, speed.budget_s)
            throughput = speed.throughput_batch * len(times) / sum(times)
    return latency, throughput


def evaluate_model(
    model,
    data,
    subsets: Sequence[str],
    split: str = "test",
    device=None,
    *,
    batch_size: int = 256,
    speed: SpeedConfig | None = None,
) -> Evaluation:
    """Evaluate `model` on `data.split(split)` for every subset (see the module doc for what is measured)."""
    import torch

    from dynconv.data.channels import SUBSETS, parse_subsets
    from dynconv.flops import count_flops, count_params
    from dynconv.train.loop import unwrap

    speed = speed or SpeedConfig()
    names = parse_subsets(list(subsets))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = unwrap(model).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    dynamic = bool(getattr(model, "dynamic", False))
    arrays = data.split(split)
    labels = np.asarray(arrays.labels, dtype=np.int64)
    params = count_params(model)
    full_flops = count_flops(model, image_size=data.size)

    results: list[SubsetResult] = []
    for name in names:
        y_pred, top5_hit = predict(model, arrays.images, labels, name, dynamic, device, batch_size)
        m = stats.classification_metrics(labels, y_pred, data.num_classes)
        low, high = stats.wilson_interval(m["correct"], m["n"])
        flops = count_flops(model, image_size=data.size, channels=SUBSETS[name]) if dynamic else full_flops
        if dynamic or not results:  # a plain model runs the same full-width input for every subset
            latency, throughput = measure_speed(model, arrays.images, name, dynamic, device, speed)
        results.append(
            SubsetResult(
                subset=name,
                n=m["n"],
                correct=m["correct"],
                accuracy=m["accuracy"],
                acc_low=low,
                acc_high=high,
                precision=m["precision"],
                recall=m["recall"],
                f1=m["f1"],
                top5=float(top5_hit.mean()) if len(top5_hit) else 0.0,
                flops=int(flops),
                params=int(params),
                latency_ms=latency,
                throughput=throughput,
                y_true=labels,
                y_pred=y_pred,
                top5_hit=top5_hit,
                confusion=stats.confusion_matrix(labels, y_pred, data.num_classes),
            )
        )
    rgb = next((r for r in results if r.subset == "RGB"), None)
    if rgb is not None:
        for r in results:
            if r is not rgb:
                r.vs_rgb = stats.mcnemar(r.correct_mask, rgb.correct_mask)

    model_args = dict(getattr(model, "model_args", {}) or {})
    model_name = str(model_args.pop("name", type(model).__name__))
    model_args.pop("num_classes", None)
    return Evaluation(
        model_name=model_name,
        model_args=model_args,
        dynamic=dynamic,
        split=split,
        device=str(device),
        num_classes=data.num_classes,
        class_names=list(data.class_names) if data.class_names else None,
        test_set_id=test_set_id(data.files(split), labels),
        data_fingerprint=data.fingerprint,
        image_size=data.size,
        results=results,
        speed=speed,
    )


# -------------------------------------------------------------------------------- tables


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _num(x: float, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def format_table(ev: Evaluation) -> str:
    """Markdown table of an evaluation (percentages), one row per subset."""
    head = [
        "subset",
        "accuracy % [95% CI]",
        "precision %",
        "recall %",
        "F1 %",
        "top-5 %",
        "vs RGB (McNemar)",
        "FLOPs",
        "params",
        "latency ms (b=1)",
        f"img/s (b={ev.speed.throughput_batch})",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in ev.results:
        vs = "-" if r.vs_rgb is None else f"{r.vs_rgb.b}/{r.vs_rgb.c}: {stats.verdict(r.vs_rgb.p_value)}"
        cells = [
            r.subset,
            f"{_pct(r.accuracy)} [{_pct(r.acc_low)}, {_pct(r.acc_high)}]",
            _pct(r.precision),
            _pct(r.recall),
            _pct(r.f1),
            _pct(r.top5),
            vs,
            f"{r.flops:,}",
            f"{r.params:,}",
            _num(r.latency_ms, ".2f"),
            _num(r.throughput, ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_notes(ev: Evaluation) -> str:
    """The lines printed under the table: input mode, interval width, how to read the McNemar column."""
    n = ev.results[0].n if ev.results else 0
    half = 100 * max(((r.acc_high - r.acc_low) / 2 for r in ev.results), default=0.0)
    return "\n".join(
        [
            f"Input: {ev.input_note}.",
            f"{n} {ev.split} images; the 95 % Wilson intervals reach ±{half:.1f} points, so gaps between"
            " rows smaller than that are likely noise (the McNemar column tests each subset against RGB).",
            "vs RGB: images only this subset got right / only RGB got right, and McNemar's test on"
            " those same images.",
            "FLOPs: fvcore multiply-adds for this input; latency and throughput: forward pass on "
            f"{ev.device}.",
        ]
    )


def write_table_files(ev: Evaluation, out_dir: Path) -> dict[str, Path]:
    """subsets.csv, subsets.md, evaluation.json and predictions/*.npz under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in ev.results]
    csv_path = out_dir / "subsets.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = out_dir / "subsets.md"
    md_path.write_text(f"{format_table(ev)}\n\n{table_notes(ev)}\n")
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(ev.summary(), indent=1))
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for r in ev.results:
        np.savez_compressed(
            pred_dir / f"predictions_{r.subset}.npz",
            y_true=r.y_true,
            y_pred=r.y_pred,
            top5_hit=r.top5_hit,
            confusion=r.confusion,
            test_set_id=np.array(ev.test_set_id),
            data_fingerprint=np.array(ev.data_fingerprint),
        )
    return {"csv": csv_path, "md": md_path, "json": json_path, "predictions": pred_dir}


# ---------------------------------------------------------------------------------- MLflow


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """`tracking_uri`, else $MLFLOW_TRACKING_URI, else ./mlflow.db; relative stores made absolute."""
    from dynconv.spec import absolute_tracking_uri

    quiet_artifact_downloads()
    return absolute_tracking_uri(
        tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    )


def quiet_artifact_downloads() -> None:
    """No MLflow progress bar per downloaded artifact (unless the user asked for them)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def get_run(uri: str, run_id: str):
    """The MLflow run `run_id`, or a one-line error."""
    try:
        return tracking.client(uri).get_run(run_id)
    except Exception:
        raise DynconvError(f"unknown run {run_id!r} in {uri}") from None


def _all_experiment_ids(uri: str) -> list[str]:
    return [e.experiment_id for e in tracking.client(uri).search_experiments()]


def search_runs(uri: str, filter_string: str, experiment_ids: Sequence[str] | None = None) -> list[Any]:
    """Runs matching `filter_string` in `experiment_ids` (default: every experiment), newest first."""
    ids = list(experiment_ids) if experiment_ids is not None else _all_experiment_ids(uri)
    if not ids:
        return []
    return tracking.client(uri).search_runs(
        ids, filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=5000
    )


def find_study_run(uri: str, study: str):
    """The parent run of `study`: a parent run id, or the newest study run named `study` (any experiment).

    The name matches the `dynconv.study` tag (the spec's study) or the `dynconv.run_name` tag
    (`<study>-<timestamp>`, one particular study run).
    """
    if RUN_ID_PATTERN.match(study):
        run = None
        with contextlib.suppress(DynconvError):
            run = get_run(uri, study)
        if run is not None:
            role = run.data.tags.get(tracking.TAG_ROLE)
            if role == "study":
                return run
            raise DynconvError(f"run {study} is a {role or 'non-dynconv'} run, not a study run")
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):  # a valid study name (never quotes)
        for key in ("study", "run_name"):
            runs = search_runs(uri, f"tags.`dynconv.role` = 'study' and tags.`dynconv.{key}` = '{study}'")
            if runs:
                return runs[0]
    known = sorted(
        {r.data.tags.get(tracking.TAG_STUDY, "?") for r in search_runs(uri, "tags.`dynconv.role` = 'study'")}
    )
    hint = f"; known studies: {', '.join(known)}" if known else "; the store holds no studies"
    raise DynconvError(f"unknown study or run {study!r} in {uri}{hint}")


def load_study_spec(uri: str, parent_run):
    """The JobSpec the study ran with, from its `spec.yaml` artifact (no YAML file needed)."""
    import yaml

    from dynconv.spec import parse_spec

    with tempfile.TemporaryDirectory(prefix="dynconv_spec_") as tmp:
        try:
            path = tracking.client(uri).download_artifacts(parent_run.info.run_id, SPEC_ARTIFACT, tmp)
            data = yaml.safe_load(Path(path).read_text())
        except Exception as exc:
            raise DynconvError(
                f"study run {parent_run.info.run_id} has no readable {SPEC_ARTIFACT} artifact "
                f"({_one_line(exc)})"
            ) from None
    return parse_spec(data, source=f"run {parent_run.info.run_id} {SPEC_ARTIFACT}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


@dataclass
class TrialInfo:
    """A trial run as the evaluation sees it."""

    run_id: str
    name: str
    status: str
    best_val_acc: float | None
    has_checkpoint: bool
    params: dict[str, str]
    curves: dict[str, list[tuple[int, float]]]

    def param(self, key: str) -> float | None:
        """A searched value (`lr`) or its resolved train field (`train.lr`), as a float."""
        for k in (key, f"train.{key}"):
            if k in self.params:
                try:
                    return float(self.params[k])
                except ValueError:
                    return None
        return None


def list_trials(uri: str, parent_run) -> list[TrialInfo]:
    """Every trial run of a study with its status, best val_acc, curves and whether it has a checkpoint."""
    c = tracking.client(uri)
    parent_id = parent_run.info.run_id
    runs = search_runs(
        uri,
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`dynconv.role` = 'trial'",
        [parent_run.info.experiment_id],
    )
    trials = []
    for run in runs:
        rid = run.info.run_id
        curves = {
            key: [(m.step, m.value) for m in c.get_metric_history(rid, key)]
            for key in ("val_acc", "train_loss")
        }
        accs = [v for _, v in curves["val_acc"] if math.isfinite(v)]
        try:
            has_ckpt = any(a.path == CHECKPOINT_ARTIFACT for a in c.list_artifacts(rid, "checkpoint"))
        except Exception:
            has_ckpt = False
        trials.append(
            TrialInfo(
                run_id=rid,
                name=run.info.run_name or rid[:8],
                status=run.info.status,
                best_val_acc=max(accs) if accs else None,
                has_checkpoint=has_ckpt,
                params=dict(run.data.params),
                curves=curves,
            )
        )
    return trials


def select_trials(trials: Sequence[TrialInfo], top_k: int, study: str) -> list[TrialInfo]:
    """The `top_k` trials to evaluate (see the module doc for the order); a one-line error when none."""
    if top_k < 1:
        raise DynconvError(f"--top-k must be at least 1, got {top_k}")
    usable = [t for t in trials if t.has_checkpoint and t.status in EVALUABLE_STATUSES]
    if not usable:
        counts: dict[str, int] = {}
        for t in trials:
            key = t.status.lower() + ("" if t.has_checkpoint else " without checkpoint")
            counts[key] = counts.get(key, 0) + 1
        seen = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no trial runs at all"
        raise DynconvError(f"study {study!r} has no finished trial with a checkpoint ({seen})")
    usable.sort(
        key=lambda t: (t.status == "FINISHED", t.best_val_acc if t.best_val_acc is not None else -1.0),
        reverse=True,
    )
    return usable[:top_k]


def load_checkpoint(uri: str, run_id: str) -> dict[str, Any]:
    """The trial's `checkpoint/state.pt` (torch.load with weights_only=True), or a one-line error."""
    import torch

    with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
        try:
            path = tracking.client(uri).download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
        except Exception as exc:
            raise DynconvError(
                f"run {run_id} has no {CHECKPOINT_ARTIFACT} artifact ({_one_line(exc)})"
            ) from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DynconvError(f"checkpoint of run {run_id} failed to load ({_one_line(exc)})") from None
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


def model_from_checkpoint(state: dict[str, Any], run_id: str = "?"):
    """Rebuild the model a checkpoint was saved from and load its weights (one-line error on mismatch)."""
    from dynconv.models import create_model

    try:
        model = create_model(
            state["model_name"], num_classes=int(state["num_classes"]), **dict(state.get("model_args") or {})
        )
        model.load_state_dict(state["model"])
    except Exception as exc:
        raise DynconvError(f"checkpoint of run {run_id} does not fit its model ({_one_line(exc)})") from None
    return model


def log_evaluation(uri: str, run_id: str, ev: Evaluation, title: str = "") -> None:
    """Metrics, tables, predictions and per-evaluation plots of `ev` into MLflow run `run_id`."""
    from dynconv import plots

    c = tracking.client(uri)
    tracking.log_metrics(uri, run_id, ev.metrics())
    with tempfile.TemporaryDirectory(prefix="dynconv_eval_") as tmp:
        out = Path(tmp)
        files = write_table_files(ev, out)
        for key in ("csv", "md", "json"):
            tracking.log_artifact(uri, run_id, files[key])
        c.log_artifacts(run_id, str(files["predictions"]), "predictions")
        with warnings.catch_warnings():  # pandas deprecation noise from inside mlflow
            warnings.simplefilter("ignore")
            c.log_table(run_id, data=_columns([r.row() for r in ev.results]), artifact_file="subsets.json")
        plot_dir = out / "plots"
        plots.accuracy_by_subset([r.row() for r in ev.results], plot_dir / "accuracy_by_subset.png", title)
        plots.confusion_grid(
            {r.subset: r.confusion for r in ev.results}, plot_dir / "confusion.png", ev.class_names, title
        )
        c.log_artifacts(run_id, str(plot_dir), "plots")


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts -> column dict (what `MlflowClient.log_table` takes), NaN/None as None."""
    keys = list(rows[0]) if rows else []

    def clean(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

    return {k: [clean(r[k]) for r in rows] for k in keys}


def log_study_plots(uri: str, run_id: str, trials: Sequence[TrialInfo], top: int = 5) -> None:
    """Learning curves of the `top` trials and lr / strength vs best val_acc of all trials."""
    from dynconv import plots

    ranked = sorted((t for t in trials if t.best_val_acc is not None), key=lambda t: -t.best_val_acc)
    with tempfile.TemporaryDirectory(prefix="dynconv_plots_") as tmp:
        out = Path(tmp)
        plots.learning_curves(
            {f"{t.name} ({t.best_val_acc:.3f})": t.curves for t in ranked[:top]}, out / "learning_curves.png"
        )
        points = [
            {
                "lr": t.param("lr"),
                "augment_strength": t.param("augment_strength"),
                "val_acc": t.best_val_acc,
                "status": t.status,
            }
            for t in trials
        ]
        plots.hyperparameter_scatter(points, out / "search.png")
        tracking.client(uri).log_artifacts(run_id, str(out), "plots")


def create_child_run(
    uri: str, experiment_id: str, parent_run_id: str, run_name: str, tags: dict[str, str]
) -> str:
    """A new run nested under `parent_run_id` (evaluations and reruns are never resumed, always new)."""
    run = tracking.client(uri).create_run(
        experiment_id, run_name=run_name, tags={tracking.TAG_PARENT: parent_run_id, **tags}
    )
    return run.info.run_id


def record_evaluation(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    study: str,
    ev: Evaluation,
    *,
    source_run_id: str,
    rank: str = "1",
    run_name: str = "evaluation",
    params: dict[str, Any] | None = None,
    title: str = "",
) -> str:
    """A new evaluation child run of the study holding `ev` (left RUNNING: the caller ends it)."""
    run_id = create_child_run(
        uri,
        experiment_id,
        parent_run_id,
        run_name=run_name,
        tags={
            tracking.TAG_ROLE: "evaluation",
            tracking.TAG_STUDY: study,
            TAG_SOURCE_RUN: source_run_id,
            TAG_MODEL: ev.model_name,
            TAG_DYNAMIC: str(ev.dynamic).lower(),
            TAG_RANK: rank,
            TAG_TEST_SET: ev.test_set_id,
        },
    )
    tracking.log_params(uri, run_id, {**evaluation_params(ev), **(params or {})})
    log_evaluation(uri, run_id, ev, title)
    return run_id


def evaluation_params(ev: Evaluation) -> dict[str, Any]:
    """Params of an evaluation run: what model, which input mode, which images."""
    params: dict[str, Any] = {
        "model": ev.model_name,
        **{f"model.{k}": v for k, v in ev.model_args.items()},
        "split": ev.split,
        "subsets": ",".join(r.subset for r in ev.results),
        "input": "subset channels + indices" if ev.dynamic else "zero-filled",
        "device": ev.device,
        "image_size": ev.image_size,
        "test_set_id": ev.test_set_id,
    }
    return params


def print_evaluation(ev: Evaluation, header: str, file=None) -> None:
    """The evaluation table with its header and notes, to stdout (or `file`)."""
    out = file or sys.stdout
    print(f"\n{header}", file=out)
    print(format_table(ev), file=out)
    print(table_notes(ev), file=out)


def evaluate_trials(
    spec,
    uri: str,
    parent_run,
    *,
    top_k: int | None = 1,
    subsets: Sequence[str] | None = None,
    split: str = "test",
    device: str | None = None,
    speed: SpeedConfig | None = None,
    only_run_id: str | None = None,
    data=None,
) -> list[tuple[str, Evaluation]]:
    """Evaluate the study's best trial(s), logging one child run each; returns [(run id, Evaluation)].

    `top_k=None`: the whole Pareto set of a multi-objective study (`dynconv.tune.pareto`), else the best.
    """
    from dynconv.data.channels import SUBSET_NAMES, parse_subsets
    from dynconv.datasets import prepare_for_spec
    from dynconv.train.session import default_device

    names = parse_subsets(list(subsets) if subsets is not None else list(SUBSET_NAMES))
    quiet_artifact_downloads()
    study = parent_run.data.tags.get(tracking.TAG_STUDY, spec.study)
    trials = list_trials(uri, parent_run)
    if only_run_id is not None:
        chosen = [t for t in trials if t.run_id == only_run_id]
        if not chosen or not chosen[0].has_checkpoint:
            raise DynconvError(f"trial run {only_run_id} has no {CHECKPOINT_ARTIFACT} artifact")
    else:
        from dynconv.tune.pareto import pareto_run_ids

        pareto = pareto_run_ids(parent_run) if top_k is None else None
        pool = trials if pareto is None else [t for t in trials if t.run_id in pareto]
        k = top_k if top_k is not None else max(1, len(pool)) if pareto is not None else 1
        chosen = select_trials(pool, k, study)
    dev = default_device(device)
    states = [(t, load_checkpoint(uri, t.run_id)) for t in chosen]  # fail before any work on a bad one
    data = data if data is not None else prepare_for_spec(spec, progress=False)

    parent_id = parent_run.info.run_id
    experiment_id = parent_run.info.experiment_id
    done: list[tuple[str, Evaluation]] = []
    for rank, (trial, state) in enumerate(states, start=1):
        if int(state["num_classes"]) != data.num_classes:
            raise DynconvError(
                f"checkpoint of run {trial.run_id} has {state['num_classes']} classes, "
                f"the dataset {data.num_classes}"
            )
        model = model_from_checkpoint(state, trial.run_id)
        ev = evaluate_model(model, data, names, split, dev, speed=speed)
        run_id = record_evaluation(
            uri,
            experiment_id,
            parent_id,
            study,
            ev,
            source_run_id=trial.run_id,
            rank=str(rank) if only_run_id is None else "manual",
            run_name=f"eval-{trial.name}",
            params={"checkpoint_epoch": state.get("epoch")},
            title=f"{study}: {ev.model_name} (trial {trial.name})",
        )
        if rank == 1 and only_run_id is None:
            log_study_plots(uri, run_id, trials)
            tracking.set_tags(uri, parent_id, {TAG_EVALUATION_RUN: run_id})
        tracking.end_run(uri, run_id, "FINISHED")
        val_at_ckpt = (state.get("metrics") or {}).get("val_acc")
        header = (
            f"Study {study!r}, rank {rank}: trial {trial.name} (run {trial.run_id}, {trial.status.lower()}), "
            f"model {ev.model_name} {ev.model_args}\n"
            f"checkpoint epoch {state.get('epoch')}, val acc there {_num(val_at_ckpt, '.4f')}, "
            f"best val acc {_num(trial.best_val_acc, '.4f')}; {ev.split} split, "
            f"test set {ev.test_set_id[:12]}\n"
            f"MLflow evaluation run {run_id}"
        )
        print_evaluation(ev, header)
        done.append((run_id, ev))
    return done


def evaluate_study(spec, result) -> list[tuple[str, Evaluation]]:
    """End-of-study hook of `dynconv tune`: evaluate with the spec's `evaluate` section.

    An evaluation problem must not lose the study (its trials and checkpoints are already in MLflow):
    a DynconvError (no finished trial, a broken checkpoint) is printed as one line, anything else with
    its traceback; either is recorded as the parent's `dynconv.evaluation_error` tag, and [] is
    returned so the study run still closes. `dynconv evaluate STUDY` retries later.
    """
    try:
        parent = get_run(result.tracking_uri, result.parent_run_id)
        return evaluate_trials(
            spec,
            result.tracking_uri,
            parent,
            top_k=None if spec.search.multi_objective else spec.evaluate.top_k,  # None: the Pareto set
            subsets=spec.evaluate.subsets,
            split=spec.evaluate.split,
        )
    except Exception as exc:
        if not isinstance(exc, DynconvError):
            traceback.print_exc()
        print(
            f"dynconv: evaluation skipped: {_one_line(exc)}; retry with: dynconv evaluate {spec.study}",
            file=sys.stderr,
        )
        with contextlib.suppress(Exception):
            tracking.set_tags(
                result.tracking_uri, result.parent_run_id, {"dynconv.evaluation_error": str(exc)[:5000]}
            )
        return []


def evaluate_study_cli(
    study: str,
    top_k: int | None = None,
    subsets: str | Sequence[str] = "RGB,RG,RB,GB,R,G,B",
    split: str = "test",
    tracking_uri: str | None = None,
    device: str | None = None,
    speed: SpeedConfig | None = None,
) -> list[tuple[str, Evaluation]]:
    """`dynconv evaluate STUDY`: STUDY is a study name, a study (parent) run id or a trial run id.

    No `top_k`: the best trial, or the whole Pareto set of a multi-objective study; `top_k=N`: the N
    best by val_acc (RGB) in either kind of study.
    """
    from dynconv.data.channels import parse_subsets

    names = parse_subsets(subsets)  # bad names fail before MLflow is touched
    uri = resolve_tracking_uri(tracking_uri)
    only = None
    if RUN_ID_PATTERN.match(study):
        run = get_run(uri, study)
        if run.data.tags.get(tracking.TAG_ROLE) == "trial":
            only = study
            study = run.data.tags.get(tracking.TAG_PARENT, "")
    parent = find_study_run(uri, study)
    spec = load_study_spec(uri, parent)
    return evaluate_trials(
        spec,
        uri,
        parent,
        top_k=top_k,
        subsets=names,
        split=split,
        device=device,
        speed=speed,
        only_run_id=only,
    )
