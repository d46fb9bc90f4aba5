"""Argument types for the `dynconv` command line: every value is checked by argparse, before any work.

Each factory returns a callable for argparse's `type=`; a bad value raises `argparse.ArgumentTypeError`,
which the CLI prints as one line (`dynconv flops: error: argument --image-size: ...`) with exit code 2.
The bounds are the ones the code behind each flag can honour: e.g. `flops --image-size` stops at 256
because the 5-layer CNN's self-attention map grows with the fourth power of the side (~3 GB at 256 px).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high] (decimal text only: no floats, no '1e3')."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _checked_by(check, text: str) -> str:
    """`text` unchanged once `check(text)` passes; its DynconvError becomes argparse's one-line error."""
    from dynconv.errors import DynconvError

    try:
        check(text)
    except DynconvError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def subset_list(text: str) -> str:
    """A comma-separated list of channel subsets (RGB, RG, RB, GB, R, G, B), checked, returned as given."""
    from dynconv.data.channels import parse_subsets

    return _checked_by(parse_subsets, text)


def existing_file(text: str) -> str:
    """A path to an existing regular file."""
    path = Path(text).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what} (expected a file)")
    return text


def existing_dir(text: str) -> str:
    """A path to an existing directory."""
    path = Path(text).expanduser()
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what} (expected a directory)")
    return text


def dir_to_write(text: str) -> str:
    """A directory that may not exist yet, but must not be an existing non-directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory path, got an empty string")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {parent} is not a directory")
    return text


def key_value(text: str) -> str:
    """A `--set` override: KEY=VALUE with a dotted KEY (the value is parsed as YAML by the spec loader)."""
    key, sep, _ = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a dotted key (train.lr=0.1), got {text!r}")
    return text


def non_empty(text: str) -> str:
    """Any non-blank string (names, hosts, addresses)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def tracking_uri(text: str) -> str:
    """An MLflow tracking URI with a scheme MLflow knows, or a plain local path."""
    from dynconv.tracking.store import check_uri_form

    return _checked_by(check_uri_form, text)


def run_id(text: str) -> str:
    """An MLflow run id (32 lowercase hex digits)."""
    if not re.fullmatch(r"[0-9a-f]{32}", text.strip()):
        raise argparse.ArgumentTypeError(f"expected an MLflow run id (32 hex digits), got {text!r}")
    return text.strip()
