"""The Ray Train (V2) side of a training worker: a `Session` over `ray.train`, and the worker entry point."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

CHECKPOINT_FILE = "state.pt"


class RaySession:
    """A Session inside a Ray Train worker: DDP via `prepare_model`, checkpoints via `ray.train.report`.

    Only rank 0 writes checkpoints and MLflow metrics; every rank calls `report` once per epoch because
    `ray.train.report` is a barrier.
    """

    def __init__(
        self, tracking_uri: str | None = None, run_id: str | None = None, spool: Path | None = None
    ) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._tracking_uri = tracking_uri
        self._run_id = run_id
        self._spool = spool  # where epochs wait while the MLflow server is unreachable (dynconv.spool)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        if self._run_id is not None:
            from dynconv import spool

            spool.log_epoch(self._tracking_uri, self._run_id, metrics, int(metrics["epoch"]), self._spool)
        with tempfile.TemporaryDirectory(prefix="dynconv_ckpt_") as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def quiet_ray_train_logs() -> None:
    """Ray Train logs two INFO lines per checkpoint per epoch; our own progress is Tune's table."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: rebuild the spec, open the cached data, run `fit`."""
    from dynconv.data.cache import PreparedData
    from dynconv.spec import JobSpec
    from dynconv.train.loop import fit

    quiet_ray_train_logs()
    spec = JobSpec.model_validate(config["spec"])
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    from dynconv.spool import spool_root

    session = RaySession(
        tracking_uri=config.get("tracking_uri"),
        run_id=config.get("run_id"),
        spool=spool_root(spec.storage_uri()),
    )
    fit(spec, session, PreparedData.open(Path(config["cache_dir"])))
