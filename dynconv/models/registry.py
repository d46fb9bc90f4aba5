"""A name → constructor registry (timm-style): `@register_model`, `create_model`, `list_models`.

`create_model` records its arguments on the model as `model.model_args`, so a checkpoint that stores
them can rebuild the exact architecture with `create_model(**model_args)`.

Imports only torch and `dynconv.errors`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from dynconv.errors import DynconvError

_MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


class UnknownModelError(DynconvError, ValueError):
    """`create_model` was given a name nothing is registered under."""


class ModelArgumentError(DynconvError, TypeError):
    """A registered model's constructor rejected the keyword arguments it was given."""


def register_model(fn: F) -> F:
    """Register a model entry point under its function name; the function must accept num_classes."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The function registered as `name` (timm's name for it), or UnknownModelError."""
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None


def create_model(name: str, num_classes: int = 50, **kwargs: Any) -> nn.Module:
    """Build the model registered as `name`; its arguments are kept as `model.model_args`."""
    entry = model_entrypoint(name)
    try:
        model = entry(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelArgumentError(f"model {name!r}: {exc}") from exc
    model.model_args = dict(name=name, num_classes=num_classes, **kwargs)
    return model
