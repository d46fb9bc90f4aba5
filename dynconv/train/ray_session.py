"""The Ray side of training: a `Session` over Ray Train (DDP workers) or over Ray Tune (a single-worker
trial training in its own trial actor), and the entry points that run `fit` under each."""

from __future__ import annotations

import logging
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dynconv.errors import DynconvError, Fault, disk_fault, one_line

CHECKPOINT_FILE = "state.pt"

log = logging.getLogger(__name__)


def read_state(path: Path) -> dict[str, Any] | None:
    """The training state in a checkpoint file (`torch.load`, weights only), or None when the file is
    torn, unreadable or holds anything but a state dict (a process killed while writing it, a damaged
    disk). Never loaded unsafely: torch's advice to retry with `weights_only=False` is not taken."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError):
        return None
    return state if isinstance(state, dict) and "epoch" in state else None


def _read_checkpoint(checkpoint: Any) -> dict[str, Any] | None:
    """The state saved by `report` in a Ray (Train or Tune) checkpoint; None without one, or when its
    file is unreadable (`read_state`)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_state(Path(d) / CHECKPOINT_FILE)


def latest_state(
    checkpoint: Any, resume_globs: Sequence[str] = (), warn: bool = True
) -> dict[str, Any] | None:
    """The state to resume from: the newest epoch among the checkpoint Ray hands back and those matching
    `resume_globs` (the trial's own checkpoint files, on local or mounted shared storage).

    A worker persists its checkpoint when it reports, but Ray registers it only when the driver (Tune)
    or the Train controller collects the report. After the driver is SIGKILLed the orphaned worker can
    persist one or two epochs that the restored study does not know of (or a first checkpoint it never
    registered); resuming from the newest readable one keeps the retrained epochs to the one in flight.
    A file cut short by the kill is skipped. The study driver logs the epochs it never saw from the
    `history` of the next checkpoint (`dynconv.tune.recorder`). When there are checkpoints but none is
    readable, the trial starts again from epoch 1 with one warning (`warn`: rank 0 of a worker group)
    instead of failing every retry on the same files.
    """
    import glob

    state = _read_checkpoint(checkpoint)
    registered = str(Path(checkpoint.path) / CHECKPOINT_FILE) if checkpoint is not None else None
    paths = {p for pattern in resume_globs for p in glob.glob(pattern)} - {registered}
    for path in sorted(paths):
        other = read_state(Path(path))
        if other is not None and (state is None or int(other.get("epoch", 0)) > int(state.get("epoch", 0))):
            state = other
    found = len(paths) + (checkpoint is not None)
    if state is None and found and warn:
        where = registered or sorted(paths)[0]
        log.warning(
            "no readable checkpoint to resume from (%d found, every one torn or damaged, e.g. %s): "
            "training starts again from epoch 1",
            found,
            where,
        )
    return state


class RaySession:
    """A Session inside a Ray Train worker: DDP via `prepare_model`, checkpoints via `ray.train.report`.

    Only rank 0 writes checkpoints; every rank calls `report` once per epoch because `ray.train.report`
    is a barrier. Metrics reach MLflow from the study driver, which Tune hands every report to.
    """

    def __init__(self, resume_globs: Sequence[str] = ()) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._resume_globs = resume_globs  # the trial's checkpoint files on disk (see `latest_state`)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        return latest_state(ray.train.get_checkpoint(), self._resume_globs, warn=self.rank == 0)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        if self.rank != 0 or state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class TuneSession:
    """A Session for a single-worker trial that trains inside its Tune trial actor (no Train worker group).

    Same metrics and checkpoint file as `RaySession`, but reported with `ray.tune.report`: Tune
    persists the checkpoint before the report returns and hands the latest one back through
    `ray.tune.get_checkpoint()` when it retries a failed trial or resumes a study (`Tuner.restore`).
    """

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device, resume_globs: Sequence[str] = ()) -> None:
        self.device = device
        self._resume_globs = resume_globs

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.tune

        return latest_state(ray.tune.get_checkpoint(), self._resume_globs)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.tune

        if state is None:
            ray.tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def quiet_ray_train_logs() -> None:
    """Ray Train logs two INFO lines per checkpoint per epoch; our own progress is Tune's table."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def _fit_from_config(config: dict[str, Any], make_session: Any) -> None:
    """Rebuild the spec from `config`, open the cached data and run `fit` in `make_session(spec)`."""
    from dynconv.data.cache_files import PreparedData
    from dynconv.spec import JobSpec
    from dynconv.spec.metrics import error_result
    from dynconv.train.loop import fit

    spec = JobSpec.model_validate(config["spec"])
    session = make_session(spec)
    try:
        # Exactly the data the driver prepared: a cache rebuilt since, or not there, is an error.
        data = PreparedData.open(Path(config["cache_dir"]), fingerprint=config["cache_fingerprint"])
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
        fit(spec, session, data)
    except (DynconvError, OSError) as err:  # a retry would fail the same way: end the trial with its line
        error = err if isinstance(err, DynconvError) else disk_fault(err, spec.storage_uri())
        if error is None or session.world_size > 1:  # DDP: every worker must fail for Ray Train to end
            raise  # the group; one that returned would leave the others waiting in the first collective
        ranked = [spec.search.tune_metric, *(spec.search.objectives or {})]
        fault = error.kind if isinstance(error, Fault) else None
        session.report(error_result(ranked, one_line(error), fault), None)


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: rebuild the spec, open the cached data, run `fit`."""
    quiet_ray_train_logs()

    _fit_from_config(config, lambda spec: RaySession(config.get("resume_globs", ())))


def train_in_trial_actor(config: dict[str, Any]) -> None:
    """A single-worker trial's training, in the Tune trial actor itself; `config` as for `train_worker`."""

    def session(spec: Any) -> TuneSession:
        device = torch.device("cuda" if config.get("use_cuda", spec.resources.gpu) else "cpu")
        return TuneSession(device, config.get("resume_globs", ()))

    _fit_from_config(config, session)
