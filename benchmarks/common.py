"""Helpers every benchmark script shares: the machine, the date and command, markdown tables, the
`--write-docs` section writer, a time limit, GPU memory, the augmentation rate, the FLOP count of a
model and the machine's matmul peak.

Imports only torch and `dynconv.models` at the top (Ray lazily in `start_ray`); benchmarks are run by hand,
never by the test suite.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dynconv.models import create_model

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> str:
    """One line: OS, CPU model and cores, Python, torch, GPU (if any)."""
    parts = [
        platform.platform(),
        f"{cpu_name()}, {usable_cores()} usable cores (os.cpu_count() = {os.cpu_count()})",
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.append(f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    else:
        parts.append("no GPU")
    return "; ".join(parts)


def utc_date() -> str:
    """The date as `date -u` prints it."""
    return datetime.now(timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")


def command_line() -> str:
    """The command that is running, as typed from the repository root (best effort)."""
    exe = sys.executable
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(exe, REPO)
        exe = rel if not rel.startswith("..") else Path(exe).name
    script = sys.argv[0]
    with contextlib.suppress(ValueError):
        script = os.path.relpath(script, REPO)
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return env + " ".join(shlex.quote(a) for a in [exe, script, *sys.argv[1:]])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; `align` is one letter per column (l or r), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def docs_section(title: str, intro: str, body: str) -> str:
    """A `## title` section in docs/benchmarks.md's style: what, the exact command, date, machine, results."""
    return (
        f"## {title}\n\n{intro.strip()}\n\n"
        f"Command (from the repository root, {utc_date()}):\n\n    {command_line()}\n\n"
        f"Machine: {machine_info()}.\n\n{body.strip()}\n"
    )


def write_docs_section(section: str, path: Path = DOCS) -> None:
    """Replace the `## title` section (first line of `section`) in `path`, or append it."""
    heading = section.splitlines()[0].rstrip()
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    path.write_text(new, encoding="utf-8")
    print(f"wrote section {heading!r} to {path}")


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TimeoutError in the main thread after `seconds` (SIGALRM; no-op elsewhere)."""
    usable = seconds and hasattr(signal, "SIGALRM") and sys.platform != "win32"
    if not usable or not _in_main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(" Set TORCHDYNAMO_VERBOSE=1")[0]  # dynamo's boilerplate hint
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ GPU memory, augmentation


def have(module: str) -> bool:
    """Whether `module` is installed (without importing it)."""
    return importlib.util.find_spec(module) is not None


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last reset, GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    """Free cached CUDA memory and reset the peak counter (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def augment_rate(batch: int, size: int, device: torch.device, seconds: float = 1.0) -> float:
    """Images/s of `normalize` + `BatchAugment(1.0)` alone, from pinned uint8 host batches."""
    from dynconv.data.augment import BatchAugment, normalize

    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    if device.type == "cuda":
        x = x.pin_memory()
    aug = BatchAugment(1.0)
    for _ in range(3):
        aug(normalize(x, device))
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        aug(normalize(x, device))
        n += 1
    sync(device)
    return n * batch / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------ FLOPs and peak


def forward_macs(name: str, num_classes: int, image_size: int, model_args: dict | None = None) -> tuple:
    """(multiply-adds of one forward pass, source): fvcore via dynconv.flops, else torch's counter / 2."""
    model = create_model(name, num_classes=num_classes, **(model_args or {}))
    try:
        from dynconv.flops import count_flops

        return count_flops(model, image_size), "fvcore"
    except ImportError:
        pass
    try:
        from torch.utils.flop_counter import FlopCounterMode

        model.eval()
        x = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops() // 2, "torch FlopCounterMode (convs and matmuls only)"
    except Exception as exc:  # a counter that fails must not stop the benchmark
        return None, f"unavailable ({one_line(exc)})"


def matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    seconds: float = 2.0,
) -> float:
    """Best rate of an n x n x n torch.mm in GFLOP/s (2n^3 FLOPs per product), over `seconds`."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    reps = max(1, int(0.2 / max(time.perf_counter() - t0, 1e-6)))
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync(device)
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return best / 1e9


def training_gflops(macs: int | None, images_per_second: float | None) -> float | None:
    """Achieved training GFLOP/s: 3 x forward, 2 FLOPs per multiply-add."""
    if not macs or not images_per_second:
        return None
    return 6 * macs * images_per_second / 1e9


def start_ray(num_cpus: int) -> None:
    """A fresh local Ray (never an already running cluster), dashboard on, quiet logs."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=num_cpus, logging_level="WARNING")
