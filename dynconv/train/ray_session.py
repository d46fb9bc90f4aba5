"""The Ray side of training: a `Session` over Ray Train (DDP workers) or over Ray Tune (a single-worker
trial training in its own trial actor), and the entry points that run `fit` under each."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

CHECKPOINT_FILE = "state.pt"


def _read_checkpoint(checkpoint: Any) -> dict[str, Any] | None:
    """The state saved by `report` in a Ray (Train or Tune) checkpoint, or None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _latest_state(checkpoint: Any, resume_globs: Sequence[str] = ()) -> dict[str, Any] | None:
    """The state to resume from: the newest epoch among the checkpoint Ray hands back and those matching
    `resume_globs` (the trial's own checkpoint files, on local or mounted shared storage).

    A worker persists its checkpoint when it reports, but Ray registers it only when the driver (Tune)
    or the Train controller collects the report. After the driver is SIGKILLed the orphaned worker can
    persist one or two epochs that the restored study does not know of (or a first checkpoint it never
    registered); resuming from the newest readable one keeps the retrained epochs to the one in flight.
    A file cut short by the kill is skipped.
    """
    import glob

    state = _read_checkpoint(checkpoint)
    registered = str(Path(checkpoint.path) / CHECKPOINT_FILE) if checkpoint is not None else None
    paths = {p for pattern in resume_globs for p in glob.glob(pattern)} - {registered}
    for path in sorted(paths):
        try:
            other = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn file: the registered checkpoint still stands
            continue
        if state is None or int(other.get("epoch", 0)) > int(state.get("epoch", 0)):
            state = other
    return state


def _log_epoch(
    tracking_uri: str | None, run_id: str | None, metrics: dict[str, float], spool_dir: Path | None
) -> None:
    """The epoch's metrics on the trial's MLflow run (step = epoch); spooled while MLflow is unreachable."""
    if run_id is not None:
        from dynconv.tracking import spool

        spool.log_epoch(tracking_uri, run_id, metrics, int(metrics["epoch"]), spool_dir)


class RaySession:
    """A Session inside a Ray Train worker: DDP via `prepare_model`, checkpoints via `ray.train.report`.

    Only rank 0 writes checkpoints and MLflow metrics; every rank calls `report` once per epoch because
    `ray.train.report` is a barrier.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        spool: Path | None = None,
        resume_globs: Sequence[str] = (),
    ) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._tracking_uri = tracking_uri
        self._run_id = run_id
        self._spool = spool  # where epochs wait while MLflow is unreachable (dynconv.tracking.spool)
        self._resume_globs = resume_globs  # the trial's checkpoint files on disk (see `_latest_state`)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        return _latest_state(ray.train.get_checkpoint(), self._resume_globs)

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        _log_epoch(self._tracking_uri, self._run_id, metrics, self._spool)
        with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class TuneSession:
    """A Session for a single-worker trial that trains inside its Tune trial actor (no Train worker group).

    Same MLflow metrics and checkpoint file as `RaySession`, but reported with `ray.tune.report`: Tune
    persists the checkpoint before the report returns and hands the latest one back through
    `ray.tune.get_checkpoint()` when it retries a failed trial or resumes a study (`Tuner.restore`).
    """

    rank = 0
    world_size = 1

    def __init__(
        self,
        device: torch.device,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        spool: Path | None = None,
        resume_globs: Sequence[str] = (),
    ) -> None:
        self.device = device
        self._tracking_uri = tracking_uri
        self._run_id = run_id
        self._spool = spool  # as RaySession's
        self._resume_globs = resume_globs

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.tune

        return _latest_state(ray.tune.get_checkpoint(), self._resume_globs)

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        import ray.tune

        _log_epoch(self._tracking_uri, self._run_id, metrics, self._spool)
        with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def quiet_ray_train_logs() -> None:
    """Ray Train logs two INFO lines per checkpoint per epoch; our own progress is Tune's table."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def _spool_dir(spec: Any) -> Path | None:
    """Where a trial's epochs wait while the MLflow server is unreachable (`dynconv.tracking.spool`)."""
    from dynconv.tracking.spool import spool_root

    return spool_root(spec.storage_uri())


def _fit_from_config(config: dict[str, Any], make_session: Any) -> None:
    """Rebuild the spec from `config`, open the cached data and run `fit` in `make_session(spec)`."""
    from dynconv.data.cache import PreparedData
    from dynconv.spec import JobSpec
    from dynconv.train.loop import fit

    spec = JobSpec.model_validate(config["spec"])
    # Exactly the data the driver prepared: a cache rebuilt since (another study, changed files) is an error.
    data = PreparedData.open(Path(config["cache_dir"]), fingerprint=config["cache_fingerprint"])
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    fit(spec, make_session(spec), data)


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: rebuild the spec, open the cached data, run `fit`."""
    quiet_ray_train_logs()

    def session(spec: Any) -> RaySession:
        globs = config.get("resume_globs", ())
        return RaySession(config.get("tracking_uri"), config.get("run_id"), _spool_dir(spec), globs)

    _fit_from_config(config, session)


def train_in_trial_actor(config: dict[str, Any]) -> None:
    """A single-worker trial's training, in the Tune trial actor itself; `config` as for `train_worker`."""

    def session(spec: Any) -> TuneSession:
        device = torch.device("cuda" if config.get("use_cuda", spec.resources.gpu) else "cpu")
        uri, run_id, globs = config.get("tracking_uri"), config.get("run_id"), config.get("resume_globs", ())
        return TuneSession(device, uri, run_id, _spool_dir(spec), globs)

    _fit_from_config(config, session)
