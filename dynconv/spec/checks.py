"""Checks of a job spec that look beyond its own fields: model arguments against the registered
constructor, searched ranges against the bounds and type of the `train.*` field they search, the
metrics a search names, and the differences between two specs.

The section models (`dynconv.spec.sections`) call the first two from their validators, and `JobSpec`
(`dynconv.spec`) calls `check_metrics` (so they run in `load_spec`, before Ray starts); the study
driver calls `spec_diff` on `--resume`. Whether a trial fits the cluster needs Ray and is checked right
after Ray starts (`dynconv.tune.resources.check_resources_fit`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import reprlib
import typing
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from dynconv.errors import one_line

# Safe names for the study and the MLflow experiment: they become directory names (Tune's storage,
# MLflow's artifact root), so no path separators, no `..`, no control characters, bounded length.
SAFE_NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
SAFE_EXPERIMENT_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9 _.,:+=@-]{0,199}$"

# Arguments a model entry point fills in itself (never taken from `model.args`).
_SUPPLIED = {"self", "num_classes", "layers"}


# How much of a value an error message quotes: enough to recognise it, never the whole of a huge one.
QUOTE_LIMIT = 80


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to at most `limit` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_repr(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` for an error message, at most `limit` characters.

    Built with `reprlib` (a few items per container, a few levels deep, long strings cut), so even a
    value of millions of items costs only those few items, then cut to `limit`.
    """
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    return shorten(r.repr(value), limit)


# Every float a spec holds must be finite, as in the section models (`allow_inf_nan=False` there).
_FINITE = ConfigDict(allow_inf_nan=False)


def _strict(annotation: Any, metadata: list[Any] | None = None) -> TypeAdapter:
    return TypeAdapter(Annotated[(annotation, *metadata)] if metadata else annotation, config=_FINITE)


def first_non_finite(value: Any, where: str) -> str | None:
    """`where` extended to the first inf or nan inside `value` (nested lists and dicts), or None.

    For values typed `Any` (`model.args`, the values of a searched choice), which pydantic's
    `allow_inf_nan=False` does not reach.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = first_non_finite(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]")
        if found is not None:
            return found
    return None


def _first_error(err: ValidationError) -> str:
    return err.errors()[0]["msg"].removeprefix("Value error, ")


# --------------------------------------------------------------------------------- model args


def model_constructor_params(name: str) -> dict[str, Any]:
    """{argument: type hint} a registered model accepts in `model.args`.

    Entry points take `**kwargs` and pass them to a class; the class is the entry's return annotation,
    so the accepted arguments are that class's `__init__` parameters minus those the entry supplies.
    """
    from dynconv.models.registry import model_entrypoint

    entry = model_entrypoint(name)
    target: Any = entry
    params = inspect.signature(entry).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        target = typing.get_type_hints(entry).get("return", entry).__init__
    hints = typing.get_type_hints(target)
    out = {}
    for pname, p in inspect.signature(target).parameters.items():
        if pname in _SUPPLIED or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[pname] = hints.get(pname, Any)
    return out


def check_model_args(name: str, args: dict[str, Any]) -> None:
    """Raise ValueError (one line) for an unknown argument, a value of the wrong type, or one the
    constructor refuses (e.g. an unknown stem). The model is built on the meta device: no memory, no
    weights, but every check of the constructor runs."""
    accepted = model_constructor_params(name)
    for key, value in args.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown argument {short_repr(key)} for {name}; {hint}accepted: {', '.join(accepted)}"
            )
        try:
            _strict(accepted[key]).validate_python(value, strict=True)
        except ValidationError as err:
            raise ValueError(f"{key}={short_repr(value)}: {_first_error(err)}") from None
        found = first_non_finite(value, key)
        if found is not None:
            raise ValueError(f"{found}: Input should be a finite number")
    import torch

    from dynconv.models.registry import create_model

    try:
        with torch.device("meta"):
            create_model(name, num_classes=10, **args)
    except (TypeError, ValueError, RuntimeError) as exc:
        msg = one_line(exc)
        msg = shorten(msg.removeprefix(f"model {name!r}: "), 2 * QUOTE_LIMIT)
        raise ValueError(f"{name} refuses these args: {msg}") from None


# ------------------------------------------------------------------------------ search space


def check_searched_field(key: str, field: Any, param: Any) -> None:
    """A searched `train.<key>` range or choice must lie within the field's bounds and be of its type
    (finite, as every float of a spec), so the bounds written on the field hold for searched values too."""
    adapter = _strict(field.annotation, list(field.metadata))
    is_int = field.annotation in (int, "int")
    if param.type != "choice":
        if is_int:
            raise ValueError(
                f"{key} is an integer field: search it with type 'choice' over integers, not {param.type}"
            )
        candidates = {"low": param.low, "high": param.high}
    else:
        candidates = {f"values[{i}]": v for i, v in enumerate(param.values)}
    for where, value in candidates.items():
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as err:
            msg = _first_error(err)
            raise ValueError(f"{key}.{where}={short_repr(value)} is not a valid train.{key}: {msg}") from None


def check_metrics(where: str, names: Sequence[str], known: Sequence[str]) -> None:
    """Every metric the search names must be one trials report (`dynconv.spec.metrics.reported_metrics`),
    so a typo fails when the spec loads, not after the first epoch."""
    for metric in names:
        if metric not in known:
            close = difflib.get_close_matches(metric, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{where}: {short_repr(metric)} is not a metric trials report{hint}; "
                f"choose one of {', '.join(known)}"
            )


# ---------------------------------------------------------------------------------- diff


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': value} for a nested dict (lists and scalars are leaves)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


RESUME_MAY_CHANGE = ("search.num_samples",)


def spec_diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """Dotted keys whose values differ between two spec dicts (JSON form), sorted; `ignore` left out.

    Numbers compare by value (1 == 1.0), so a spec read back from YAML compares equal to the original.
    """
    fa, fb = flatten(a), flatten(b)
    changed = []
    for key in sorted(set(fa) | set(fb)):
        if key in ignore or any(key.startswith(f"{i}.") for i in ignore):
            continue
        va, vb = fa.get(key, _MISSING), fb.get(key, _MISSING)
        if not _same(va, vb):
            changed.append(key)
    return changed


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (type(a) is type(b) and a == b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b
