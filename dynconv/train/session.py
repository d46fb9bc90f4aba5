"""Where the training loop runs: the `Session` protocol and its plain single-process implementation.

The loop only talks to a Session, so the same code trains inside a Ray Train worker
(`dynconv.train.ray_session.RaySession`), in a plain local process (`LocalSession`: rerun, tests,
the benchmark's reference) and in any future runner.

Imports only torch and `dynconv.errors`; never Ray or MLflow.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class Session(Protocol):
    """What the training loop needs from its runner."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device; wrap for data parallelism when world_size > 1."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (identity for one process)."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint state to resume from, or None for a fresh start."""

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        """End-of-epoch metrics plus the checkpoint state. Every rank calls it once per epoch."""


def default_device(requested: str | None = None) -> torch.device:
    """`requested` if given, else CUDA when available, else CPU."""
    if requested:
        if requested == "cuda" and not torch.cuda.is_available():
            from dynconv.errors import DynconvError

            raise DynconvError("--device cuda requested but no CUDA device is available")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a checkpoint state (tensors and plain containers only, so weights_only loading works)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class LocalSession:
    """A single process, no Ray: keeps the metric history and the latest state in memory."""

    rank = 0
    world_size = 1

    def __init__(
        self,
        device: torch.device | str | None = None,
        resume_state: dict[str, Any] | None = None,
        on_report: Callable[[dict[str, float], dict[str, Any]], None] | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.history: list[dict[str, float]] = []
        self.last_state: dict[str, Any] | None = resume_state
        self._on_report = on_report

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.last_state

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        self.history.append(dict(metrics))
        self.last_state = state
        if self._on_report is not None:
            self._on_report(metrics, state)
