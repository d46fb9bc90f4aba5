"""`dynconv rerun RUN_OR_STUDY`: rebuild a trial's exact configuration from MLflow and train it locally.

The configuration comes from the trial's checkpoint artifact, whose `spec` field is the whole JobSpec
with the trial's searched values already applied (model and its arguments, every `train.*` value,
data settings, seed); it is checked against the parameters the trial logged. No YAML file and no Ray:
the run trains in this process through `LocalSession`, is evaluated over the channel subsets with the
same code as `dynconv evaluate`, and lands in MLflow as a new run (`dynconv.role=rerun`,
`dynconv.rerun_of=<original run id>`) in the original's experiment, nested under the same study; that
run is FINISHED only once trained, checkpointed and evaluated (KILLED when interrupted, FAILED on an
error). Finally the original and the rerun are printed side by side (the original's newest complete
evaluation). A study stands for its best trial in the ranking it recorded, as in `dynconv evaluate`.
A run in MLflow's trash is refused in one line that says how to restore it.

Imports `dynconv.tracking` (never `mlflow` directly), `dynconv.evaluation` and the Ray-free training
loop; never Ray.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynconv.errors import DynconvError
from dynconv.evaluation.model import evaluate_model, model_from_checkpoint
from dynconv.evaluation.results import Evaluation, SpeedConfig
from dynconv.evaluation.tables import print_evaluation
from dynconv.spec import resolve_tracking_uri
from dynconv.spec.ranking import Ranking
from dynconv.tracking.artifacts import load_checkpoint, load_study_spec
from dynconv.tracking.evaluations import log_evaluation
from dynconv.tracking.find import (
    find_study_run,
    get_run,
    latest_evaluation_metrics,
    list_trials,
    metric_history,
    restore_command,
)
from dynconv.tracking.layout import (
    CONFIRMATION_ARTIFACT,
    RUN_ID_PATTERN,
    TAG_CONFIRMS,
    TAG_DYNAMIC,
    TAG_MODEL,
    TAG_PARENT,
    TAG_REPRODUCED,
    TAG_RERUN_OF,
    TAG_ROLE,
    TAG_SOURCE_RUN,
    TAG_STUDY,
    closed_on_error,
    create_child_run,
    end_run,
    log_artifact,
    log_metrics,
    log_params,
    run_params,
    set_tags,
)
from dynconv.tracking.store import masked
from dynconv.tune.parent_run import recorded_trials
from dynconv.tune.study_evaluation import select_trials


@dataclass
class RerunResult:
    """What a rerun produced."""

    run_id: str
    original_run_id: str
    spec: Any
    history: list[dict[str, float]]
    evaluation: Evaluation | None
    notes: list[str]
    verdict: str = ""  # reproduced, or outside the confirmed interval by how much (`reproduction_verdict`)


def resolve_trial(uri: str, run: str) -> Any:
    """The trial run to rerun: a trial, confirmation (or rerun) run id as is, a registered model
    (`models:/<study>@champion`, `models:/<study>/<version>`) -> the confirmation run it was made from, a
    study name or id -> its best trial with a checkpoint by the ranking the study recorded (as
    `dynconv evaluate` picks it), an evaluation run id -> the trial it evaluated."""
    if run.startswith("models:/"):
        from dynconv.tracking.registry import registered_version

        return get_run(uri, registered_version(uri, run).source_run_id)
    if RUN_ID_PATTERN.match(run):
        found = None
        with contextlib.suppress(DynconvError):
            found = get_run(uri, run)
        if found is not None:
            role = found.data.tags.get(TAG_ROLE)
            if role in ("trial", "confirmation", "rerun"):
                return found
            if role == "evaluation":
                return get_run(uri, found.data.tags.get(TAG_SOURCE_RUN, ""))
    parent = find_study_run(uri, run)
    study = parent.data.tags.get(TAG_STUDY, run)
    spec = load_study_spec(uri, parent)
    ranking = Ranking.for_spec(spec)
    runs = list_trials(uri, parent, ranking.metric, [m for m, _ in ranking.objectives])
    [(_, best)] = select_trials(recorded_trials(uri, parent, spec), runs, 1, study)
    return get_run(uri, best.run_id)


def refuse_trashed(uri: str, original: Any, asked: str) -> None:
    """A run in MLflow's trash (a registered champion's source run deleted since) is not rerun: one
    line naming it and the command that restores it. A rerun would be recorded beside an original the
    UI no longer shows, and in a deleted experiment could not be recorded at all."""
    command = restore_command(uri, original)
    if command is None:
        return
    oid = original.info.run_id
    named = "" if asked == oid else f" (what {asked} names)"
    raise DynconvError(
        f"run {oid}{named} is in MLflow's trash (deleted); restore it first: "
        f"MLFLOW_TRACKING_URI={shlex.quote(masked(uri))} {command}"
    )


def spec_from_checkpoint(state: dict[str, Any], run_id: str):
    """The JobSpec stored in a checkpoint, validated (one-line error when it no longer validates)."""
    from dynconv.spec import parse_spec

    if not isinstance(state.get("spec"), dict):
        raise DynconvError(f"checkpoint of run {run_id} carries no job spec")
    return parse_spec(state["spec"], source=f"checkpoint of run {run_id}")


def with_epochs(spec, epochs: int | None) -> tuple[Any, list[str]]:
    """The spec with `train.epochs` overridden; warm-up and ASHA grace are shortened to fit. (spec, notes)."""
    from dynconv.spec import parse_spec

    if epochs is None or epochs == spec.train.epochs:
        return spec, []
    if epochs < 1:
        raise DynconvError(f"--epochs must be at least 1, got {epochs}")
    data = spec.to_json_dict()
    notes = [f"epochs overridden: {spec.train.epochs} -> {epochs}"]
    data["train"]["epochs"] = epochs
    warmup = data["train"]["schedule"]["warmup_epochs"]
    if epochs > 1 and warmup >= epochs:
        data["train"]["schedule"]["warmup_epochs"] = epochs - 1
        notes.append(f"warm-up shortened to fit: {warmup} -> {epochs - 1} epochs")
    if data["scheduler"]["grace_period"] > epochs:
        data["scheduler"]["grace_period"] = epochs  # unused by a local rerun, but must validate
    return parse_spec(data, source="rerun"), notes


def spec_params(spec) -> dict[str, Any]:
    """The params a trial run logs for its spec (same keys, so the UI can compare them column by column)."""
    searched = {k: getattr(spec.train, k) for k in spec.search.space}
    return run_params(spec, searched)


def check_against_logged(spec, logged: dict[str, str]) -> list[str]:
    """Differences between the rebuilt configuration and the params the original run logged."""
    diffs = []
    for key, value in spec_params(spec).items():
        if key in logged and str(value)[:6000] != logged[key] and key != "train.epochs":
            diffs.append(f"{key}: logged {logged[key]!r}, rebuilt {value!r}")
    return diffs


def setting_notes(spec, device) -> list[str]:
    """Where a local rerun necessarily differs from how the original trained (said, not hidden)."""
    notes = []
    workers, batch = spec.resources.workers_per_trial, spec.train.batch_size
    if workers > 1:
        notes.append(
            f"the original trained on {workers} DDP workers (global batch {workers * batch}); this rerun is "
            f"one process (batch {batch}), so its curves can differ"
        )
    if spec.resources.gpu and device.type != "cuda":
        notes.append(
            f"the original trained on GPU workers (bf16 autocast); this rerun runs on {device} in fp32"
        )
    return notes


def format_side_by_side(uri: str, original, rerun_id: str, ev: Evaluation | None) -> str:
    """Validation accuracy per epoch and test accuracy per subset, original next to rerun."""
    orig = metric_history(uri, original.info.run_id, "val_acc")
    new = metric_history(uri, rerun_id, "val_acc")
    lines = ["epoch  original val_acc  rerun val_acc  difference"]
    for epoch in sorted(set(orig) | set(new)):
        a, b = orig.get(epoch), new.get(epoch)
        diff = f"{b - a:+.4f}" if a is not None and b is not None else "-"
        lines.append(f"{epoch:>5}  {_f(a):>16}  {_f(b):>13}  {diff:>10}")
    if ev is not None:
        confirmed = f"{ev.split}_acc_"  # a confirmation run holds its own per-subset accuracies
        o_metrics = latest_evaluation_metrics(uri, original) or {
            f"acc_{k.removeprefix(confirmed)}": v
            for k, v in original.data.metrics.items()
            if k.startswith(confirmed)
        }
        lines.append("")
        lines.append("subset  original test acc  rerun test acc  [95% CI]")
        for r in ev.results:
            lines.append(
                f"{r.subset:<6}  {_f(o_metrics.get(f'acc_{r.subset}')):>17}  {_f(r.accuracy):>14}  "
                f"[{r.acc_low:.4f}, {r.acc_high:.4f}]"
            )
        if not o_metrics:
            lines.append(
                "(the original run has no evaluation; run `dynconv evaluate` on its study to compare)"
            )
    return "\n".join(lines)


def recorded_interval(uri: str, original) -> dict[str, Any] | None:
    """The confirmed interval of the configuration `original` belongs to (a confirmation run, or the
    search trial it confirms), from its study run's confirmation.json; None when it was never confirmed."""
    from dynconv.tracking.artifacts import download_yaml

    parent = original.data.tags.get(TAG_PARENT)
    recorded = download_yaml(uri, parent, CONFIRMATION_ARTIFACT) if parent else None
    source = original.data.tags.get(TAG_CONFIRMS, original.info.run_id)
    for config in (recorded or {}).get("configurations", []):
        if config.get("source_run_id") == source:
            return {"metric": recorded["metric"], **config}
    return None


def reproduction_verdict(interval: dict[str, Any] | None, history: list[dict[str, float]]) -> str:
    """'reproduced' when the rerun's last value of the ranked metric lands inside the configuration's
    confirmed 95 % interval over seeds, else by how far it missed; says so when there is no interval."""
    if interval is None:
        return "no confirmed interval to check against (the configuration was never confirmed over seeds)"
    metric, low, high = interval["metric"], interval.get("low"), interval.get("high")
    value = next((h[metric] for h in reversed(history) if metric in h), None)
    if value is None or low is None or high is None:
        return f"cannot tell: the rerun reported no {metric}, or the recorded interval is unknown"
    shown = (
        f"{metric} {value:.4f} vs the confirmed interval [{low:.4f}, {high:.4f}] over {interval['n']} seeds"
    )
    if low <= value <= high:
        return f"reproduced: {shown}"
    miss = (low - value) if value < low else (value - high)
    by = f"{100 * miss:.1f} points" if "acc" in metric else f"{miss:.4g}"
    return f"outside the interval, by {by}: {shown}"


def reproducibility(spec, data, dev) -> dict[str, str]:
    """What a rerun needs to be reproduced again: package versions, the git commit of the code, the data
    fingerprint, the device, precision and seed (params `repro.*` of the rerun run)."""
    import importlib.metadata
    import subprocess

    from dynconv.train.loop import Precision

    out = {}
    for package in ("dynconv", "torch", "torchvision", "numpy", "mlflow", "ray"):
        try:
            out[f"repro.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[f"repro.{package}"] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out["repro.git_commit"] = commit or "unknown (not a git checkout)"
    out["repro.data_fingerprint"] = data.fingerprint
    out["repro.device"] = str(dev)
    out["repro.precision"] = "bf16" if Precision.resolve(spec.train.precision, dev).bf16 else "fp32"
    out["repro.seed"] = str(spec.train.seed)
    return out


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _open_rerun_run(uri: str, original, spec, dev) -> str:
    """A new `dynconv.role=rerun` run beside the original (nested under its study when it has one)."""
    oid = original.info.run_id
    tags = {
        TAG_ROLE: "rerun",
        TAG_RERUN_OF: oid,
        TAG_STUDY: original.data.tags.get(TAG_STUDY, spec.study),
        TAG_MODEL: spec.model.name,
    }
    parent = original.data.tags.get(TAG_PARENT)
    name = f"rerun-{original.info.run_name or oid[:8]}"
    run_id = create_child_run(uri, original.info.experiment_id, parent, name, tags)
    log_params(uri, run_id, {**spec_params(spec), "rerun_of": oid, "device": str(dev)})
    return run_id


def _train(uri: str, run_id: str, spec, data, dev):
    """Train in this process, logging each epoch's metrics."""
    from dynconv.train.loop import fit
    from dynconv.train.session import LocalSession

    def on_report(metrics: dict[str, float], _state: dict[str, Any]) -> None:
        log_metrics(uri, run_id, metrics, step=int(metrics["epoch"]))

    session = LocalSession(device=dev, on_report=on_report)
    fit(spec, session, data)
    return session


def _evaluate_rerun(uri: str, run_id: str, final, spec, data, dev, names, speed, title: str, out):
    """Log the final checkpoint, evaluate it over the subsets, log and print the evaluation."""
    import torch

    with tempfile.TemporaryDirectory(prefix="dynconv_rerun_") as tmp:
        path = Path(tmp) / "state.pt"
        torch.save(final, path)
        log_artifact(uri, run_id, path, "checkpoint")
    model = model_from_checkpoint(final, run_id)
    ev = evaluate_model(model, data, names or spec.evaluate.subsets, spec.evaluate.split, dev, speed=speed)
    set_tags(uri, run_id, {TAG_DYNAMIC: str(ev.dynamic).lower()})
    log_evaluation(uri, run_id, ev, title)
    print_evaluation(ev, f"Rerun {run_id}: {spec.evaluate.split} split", file=out)
    return ev


def rerun(
    run: str,
    epochs: int | None = None,
    device: str | None = None,
    tracking_uri: str | None = None,
    *,
    subsets: Sequence[str] | None = None,
    speed: SpeedConfig | None = None,
    file=None,
) -> RerunResult:
    """Retrain the configuration of `run` (a trial run id, or a study whose best trial is taken) locally."""
    from dynconv.data.channels import parse_subsets
    from dynconv.spec.data import prepare_for_spec
    from dynconv.train.session import default_device

    out = file or sys.stdout
    names = parse_subsets(list(subsets)) if subsets is not None else None  # bad names fail before training
    uri = resolve_tracking_uri(tracking_uri)
    original = resolve_trial(uri, run)
    refuse_trashed(uri, original, run)
    oid = original.info.run_id
    state = load_checkpoint(uri, oid)
    spec, notes = with_epochs(spec_from_checkpoint(state, oid), epochs)
    diffs = check_against_logged(spec, dict(original.data.params))
    if diffs:
        notes.append("the checkpoint's configuration differs from the logged params: " + "; ".join(diffs))
    dev = default_device(device)
    notes += setting_notes(spec, dev)
    data = prepare_for_spec(spec, progress=False)

    run_id = _open_rerun_run(uri, original, spec, dev)
    log_params(uri, run_id, reproducibility(spec, data, dev))
    with closed_on_error(uri, run_id):  # FINISHED only once trained, checkpointed, evaluated
        print(
            f"Rerun of {original.info.run_name} (run {oid}) as run {run_id}: {spec.model.name} "
            f"{spec.model.args}, {spec.train.epochs} epochs on {dev}; "
            "configuration rebuilt from the run's checkpoint",
            file=out,
        )
        for note in notes:
            print(f"note: {note}", file=out)
        session = _train(uri, run_id, spec, data, dev)
        ev = None
        if session.last_state is not None:
            title = f"rerun of {original.info.run_name}"
            ev = _evaluate_rerun(uri, run_id, session.last_state, spec, data, dev, names, speed, title, out)
        verdict = reproduction_verdict(recorded_interval(uri, original), session.history)
        set_tags(uri, run_id, {TAG_REPRODUCED: verdict[:5000]})
        end_run(uri, run_id, "FINISHED")
    print("\nOriginal vs rerun\n" + format_side_by_side(uri, original, run_id, ev), file=out)
    print(f"\nReproduction: {verdict}", file=out)
    return RerunResult(run_id, oid, spec, session.history, ev, notes, verdict)
