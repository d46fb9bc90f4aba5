"""Training throughput benchmark (run by hand, not a timed test): dynconv's training loop against a plain
PyTorch loop and against the machine's compute limit, on the CPU.

For every model, in one run (these machines are noisy, so only ratios measured side by side count):

(a) plain: the reference. A plain PyTorch loop over uint8 images already in memory (the cache's NCHW
    shape): normalise, forward, cross-entropy, backward, SGD (momentum 0.9, Nesterov, weight decay)
    step. Same model, batch size, thread count and image size as (b). It runs twice, before and after
    (b), and the mean is the reference (the spread shows the machine's drift).
(b) dynconv: the real worker entry point ``dynconv.train.ray_session.train_worker`` under a Ray Train
    ``TorchTrainer`` with one worker (``resources_per_worker={"CPU": THREADS}``; the worker sets
    ``torch.set_num_threads(THREADS)``) on a prepared synthetic cache whose train split holds exactly
    the batches that (a) times. Augmentation strength 0 and channel drop 0, for parity with (a)
    (``--with-augment`` adds a strength-1 run to show what augmentation costs). Two epochs: the first is
    the warm-up; the figure is epoch 2's ``train_images_per_second`` (the loop's own measure, training
    only, evaluation excluded), read from ``Result.metrics``.
(c) compute limit: the best rate of a large fp32 ``torch.mm`` (2048x2048, same threads), counted as
    2n^3 FLOPs.

FLOPs: fvcore counts one multiply-add as one FLOP, so its figures are MACs. A training step costs about
3x the forward pass (backward ~ 2x forward), and a MAC is 2 FLOPs, so achieved FLOP/s =
6 x fvcore_MACs x images/s, on the same scale as the matmul's 2n^3. The compute-bound rate is
peak / (6 x MACs) images/s; "% of peak" = achieved / peak = images/s / compute-bound rate.

``--variants`` measures, on the plain loop only, what each speed option is worth: thread count,
channels_last, bf16 autocast, torch.compile and their combinations (the dynconv loop applies
channels_last and bf16 only on CUDA, so on the CPU only the reference can show whether they help).

This file also holds the helpers the other benchmark scripts share (machine description, markdown
tables, the ``--write-docs`` section writer, the reference loop that ``benchmarks/gpu.py`` reuses);
its top level imports only torch and ``dynconv.models``/``dynconv.data.augment``.

    .venv/bin/python benchmarks/train_throughput.py                # plain vs dynconv, 4 models
    .venv/bin/python benchmarks/train_throughput.py --variants     # what makes the loop faster
    .venv/bin/python benchmarks/train_throughput.py --quick        # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from dynconv.models import create_model

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
MODELS = ("resnet18", "resnet18_dynamic", "resnet34", "simple_cnn")
SECTION = "Training throughput (CPU)"
VARIANTS_SECTION = "Training throughput (CPU): speed options"


# ------------------------------------------------------------------------------ shared helpers


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


# ------------------------------------------------------------------------------ the reference loop


@dataclass(frozen=True)
class LoopConfig:
    """Speed options of the reference loop."""

    threads: int | None = None
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    augment: float = 0.0

    def label(self) -> str:
        parts = ["bf16" if self.bf16 else "fp32"]
        parts.append("channels_last" if self.channels_last else "NCHW")
        if self.compile:
            parts.append("compile")
        if self.augment:
            parts.append(f"aug {self.augment:g}")
        if self.threads:
            parts.append(f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return ", ".join(parts)


@dataclass
class Timing:
    images_per_second: float
    steps: int
    seconds: float


class ReferenceLoop:
    """A plain PyTorch training loop over uint8 batches already in memory (CPU, pinned when on CUDA).

    One step: copy to the device, normalise (ImageNet mean/std), optionally `BatchAugment`, optionally
    channels_last, forward (optionally under bf16 autocast), cross-entropy in fp32, backward, SGD step.
    """

    def __init__(
        self,
        name: str,
        *,
        num_classes: int,
        image_size: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        config: LoopConfig = LoopConfig(),
        model_args: dict | None = None,
        pool_batches: int = 4,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.config = config
        self.batch_size = batch_size
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(seed)
        model = create_model(name, num_classes=num_classes, **(model_args or {})).to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.model: nn.Module = torch.compile(model) if config.compile else model
        gen = torch.Generator().manual_seed(seed)
        shape = (pool_batches, batch_size, 3, image_size, image_size)
        self.x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        self.y = torch.randint(0, num_classes, (pool_batches, batch_size), generator=gen)
        if self.device.type == "cuda":
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.augment = BatchAugment(config.augment) if config.augment else None
        self._i = 0
        self.last_step_seconds = math.nan

    def _autocast(self):
        if self.config.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self) -> None:
        i = self._i % len(self.x)
        self._i += 1
        x = self.x[i].to(self.device, non_blocking=True).float().div_(255.0).sub_(self.mean).div_(self.std)
        y = self.y[i].to(self.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def warmup(self, steps: int, timeout_s: float | None = None) -> float:
        """Run `steps` untimed steps (compilation happens here); returns their seconds."""
        t0 = time.perf_counter()
        with time_limit(timeout_s):
            for _ in range(max(1, steps)):
                s0 = time.perf_counter()
                self.step()
                sync(self.device)
                self.last_step_seconds = time.perf_counter() - s0
        return time.perf_counter() - t0

    def steps_for(self, seconds: float, min_steps: int = 3, max_steps: int = 10_000) -> int:
        """How many steps fill about `seconds`, from the last warm-up step's duration."""
        if not math.isfinite(self.last_step_seconds):
            return min_steps
        return int(min(max_steps, max(min_steps, math.ceil(seconds / self.last_step_seconds))))

    def measure(self, steps: int) -> Timing:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        dt = time.perf_counter() - t0
        return Timing(steps * self.batch_size / dt, steps, dt)

    @torch.no_grad()
    def measure_inference(self, steps: int, warmup: int = 2) -> Timing:
        """Forward passes only (eval mode, no autograd), same options; restores train mode."""
        self.model.eval()
        x = self.x[0].to(self.device).float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            for _ in range(warmup):
                with self._autocast():
                    self.model(x)
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                with self._autocast():
                    self.model(x)
            sync(self.device)
            dt = time.perf_counter() - t0
        finally:
            self.model.train()
        return Timing(steps * self.batch_size / dt, steps, dt)


# ------------------------------------------------------------------------------ the dynconv side


def prepare_synthetic_cache(directory: Path, train_images: int, image_size: int, classes: int = 10):
    """A synthetic dataset whose train split holds at least `train_images` images, and its cache."""
    from dynconv.data.cache import prepare
    from dynconv.data.synth import write_synthetic

    per_class_train = math.ceil(train_images / classes)
    root = write_synthetic(
        directory / "synthetic",
        classes=classes,
        per_class=per_class_train + 2,
        size=max(16, image_size),
        seed=0,
        splits=(per_class_train, 1, 1),
    )
    return prepare(root, size=image_size, cache_dir=directory / "cache", progress=False)


def throughput_spec(
    name: str,
    *,
    batch_size: int,
    threads: int,
    image_size: int,
    augment: float = 0.0,
    compile: bool = False,
    epochs: int = 2,
    storage: str = "ray_results",
    model_args: dict | None = None,
):
    """The JobSpec the dynconv side trains: constant LR, no channel drop, no label smoothing."""
    from dynconv.spec import parse_spec

    return parse_spec(
        {
            "study": "train-throughput",
            "model": {"name": name, "args": dict(model_args or {})},
            "data": {"image_size": image_size},
            "train": {
                "epochs": epochs,
                "batch_size": batch_size,
                "optimizer": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": {"name": "constant", "warmup_epochs": 0},
                "label_smoothing": 0.0,
                "augment_strength": augment,
                "channel_drop": 0.0,
                "seed": 0,
                "compile": compile,
            },
            "search": {
                "space": {
                    "lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
                    "augment_strength": {"type": "uniform", "low": 0.0, "high": 1.0},
                },
                "num_samples": 1,
            },
            "scheduler": {"name": "none"},
            "resources": {"workers_per_trial": 1, "cpus_per_worker": float(threads)},
            "evaluate": {"enabled": False},
            "storage_path": storage,
        },
        source="benchmarks/train_throughput.py",
    )


def dynconv_rate(spec, cache_dir: Path, storage: Path) -> dict[str, float]:
    """Train `spec` through `train_worker` in a one-worker TorchTrainer; the last epoch's metrics."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from dynconv.data.cache import PreparedData
    from dynconv.train.ray_session import train_worker

    r = spec.resources
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "spec": spec.to_json_dict(),
            "cache_dir": str(cache_dir),
            "cache_fingerprint": PreparedData.open(cache_dir).fingerprint,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, use_gpu=False, resources_per_worker={"CPU": r.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=f"throughput-{spec.model.name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage)
        ),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if int(metrics.get("epoch", 0)) != spec.train.epochs:
        raise RuntimeError(f"dynconv run ended at epoch {metrics.get('epoch')}, not {spec.train.epochs}")
    return metrics


def start_ray(num_cpus: int) -> None:
    """A fresh local Ray (never an already running cluster), dashboard on, quiet logs."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=num_cpus, logging_level="WARNING")


# ------------------------------------------------------------------------------ runs


def _fmt(x: float | None, spec: str = ",.1f", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def run_comparison(args: argparse.Namespace, threads: int, peak: float) -> tuple[str, list[str]]:
    """Plain vs dynconv per model; returns (table, notes)."""
    config = LoopConfig(
        threads=threads, channels_last=args.channels_last, bf16=args.bf16, compile=args.compile
    )
    start_ray(args.ray_cpus or threads)
    import ray

    rows, notes, checks = [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="dynconv_throughput_") as tmp:
            for name in args.models:
                print(f"\n== {name}: counting FLOPs", flush=True)
                macs, source = forward_macs(name, args.num_classes, args.image_size)
                ref = ReferenceLoop(
                    name,
                    num_classes=args.num_classes,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    config=config,
                )
                warm = ref.warmup(args.warmup, timeout_s=args.compile_timeout if args.compile else None)
                steps = args.steps or ref.steps_for(args.seconds, args.min_steps)
                print(f"   plain warm-up {warm:.1f} s; timing {steps} steps of {args.batch_size}", flush=True)
                before = ref.measure(steps)
                print(f"   plain (before): {before.images_per_second:,.1f} img/s", flush=True)

                data = prepare_synthetic_cache(Path(tmp) / name, steps * args.batch_size, args.image_size)
                spec = throughput_spec(
                    name,
                    batch_size=args.batch_size,
                    threads=threads,
                    image_size=args.image_size,
                    compile=args.compile,
                )
                dyn = dynconv_rate(spec, data.cache_dir, Path(tmp) / "ray_results")
                dyn_rate = dyn["train_images_per_second"]
                print(
                    f"   dynconv: {dyn_rate:,.1f} img/s (epoch 2, {dyn['epoch_seconds']:.1f} s)", flush=True
                )
                aug_rate = None
                if args.with_augment:
                    spec1 = throughput_spec(
                        name,
                        batch_size=args.batch_size,
                        threads=threads,
                        image_size=args.image_size,
                        compile=args.compile,
                        augment=1.0,
                    )
                    aug_rate = dynconv_rate(spec1, data.cache_dir, Path(tmp) / "ray_results")[
                        "train_images_per_second"
                    ]
                    print(f"   dynconv, augment 1.0: {aug_rate:,.1f} img/s", flush=True)

                after = ref.measure(steps)
                print(f"   plain (after): {after.images_per_second:,.1f} img/s", flush=True)
                plain = statistics.mean([before.images_per_second, after.images_per_second])
                spread = abs(before.images_per_second - after.images_per_second) / plain
                ratio = dyn_rate / plain
                achieved = training_gflops(macs, dyn_rate)
                bound = peak * 1e9 / (6 * macs) if macs else None
                pct = achieved / peak if achieved else None
                rows.append(
                    [
                        f"`{name}`",
                        _fmt(macs / 1e6 if macs else None, ",.0f"),
                        f"{steps} × {args.batch_size}",
                        f"{plain:,.1f} (±{spread / 2:.0%})",
                        f"{dyn_rate:,.1f}",
                        f"**{ratio:.3f}**",
                        *([_fmt(aug_rate)] if args.with_augment else []),
                        _fmt(achieved),
                        _fmt(bound),
                        f"**{pct:.0%}**" if pct is not None else "-",
                    ]
                )
                checks.append(
                    f"{name}: dynconv/plain = {ratio:.3f} ({'meets' if ratio >= 0.95 else 'misses'} ≥ 0.95)"
                )
                if name == "resnet18" and pct is not None:
                    checks.append(
                        f"resnet18: {pct:.0%} of the compute-bound rate "
                        f"({'meets' if pct >= 0.5 else 'misses'} ≥ 50 %)"
                    )
                if source != "fvcore":
                    notes.append(f"{name}: FLOPs from {source}")
                del ref
    finally:
        ray.shutdown()
    headers = [
        "model",
        "fwd MMACs/img",
        "timed steps × batch",
        "plain img/s (± drift)",
        "dynconv img/s",
        "dynconv / plain",
        *(["dynconv, augment 1.0, img/s"] if args.with_augment else []),
        "achieved GFLOP/s",
        "compute-bound img/s",
        "% of peak",
    ]
    if args.channels_last or args.bf16:
        notes.append(
            "channels_last/bf16 were applied to the plain loop only: dynconv's loop uses them only on CUDA, "
            "so the ratio compares dynconv as shipped against an optimised reference."
        )
    return markdown_table(headers, rows), checks + notes


VARIANT_SETS: dict[str, Callable[[int], LoopConfig]] = {
    "base": lambda t: LoopConfig(threads=t),
    "1thread": lambda t: LoopConfig(threads=1),
    "cl": lambda t: LoopConfig(threads=t, channels_last=True),
    "bf16": lambda t: LoopConfig(threads=t, bf16=True),
    "bf16_cl": lambda t: LoopConfig(threads=t, bf16=True, channels_last=True),
    "compile": lambda t: LoopConfig(threads=t, compile=True),
    "compile_bf16_cl": lambda t: LoopConfig(threads=t, bf16=True, channels_last=True, compile=True),
}


def run_variants(args: argparse.Namespace, threads: int, peak: float, peak_bf16: float) -> tuple[str, list]:
    """Plain loop only, one row per (model, option set); speed-up against fp32/NCHW/eager."""
    names = list(VARIANT_SETS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANT_SETS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANT_SETS)}")
    if "base" not in names:
        names.insert(0, "base")
    if threads == 1 and "1thread" in names:
        names.remove("1thread")
    rows, notes = [], []
    for name in args.models:
        macs, source = forward_macs(name, args.num_classes, args.image_size)
        if source != "fvcore":
            notes.append(f"{name}: FLOPs from {source}")
        base_rate = None
        steps = args.steps
        for key in names:
            config = VARIANT_SETS[key](threads)
            print(f"\n== {name}: {config.label()}", flush=True)
            try:
                ref = ReferenceLoop(
                    name,
                    num_classes=args.num_classes,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    config=config,
                )
                warm = ref.warmup(args.warmup, timeout_s=args.compile_timeout if config.compile else None)
                n = steps or ref.steps_for(args.seconds, args.min_steps)
                timing = ref.measure(n)
            except Exception as exc:  # e.g. a compile failure or timeout: record it and go on
                what = "compile failed" if config.compile else "failed"
                rows.append([f"`{name}`", config.label(), f"{what}: {one_line(exc, 100)}", "", "", "", ""])
                torch._dynamo.reset()
                continue
            finally:
                torch.set_num_threads(threads)
            rate = timing.images_per_second
            base_rate = base_rate or rate
            achieved = training_gflops(macs, rate)
            ref_peak = peak_bf16 if config.bf16 else peak
            print(f"   {rate:,.1f} img/s (warm-up {warm:.1f} s, {n} steps)", flush=True)
            rows.append(
                [
                    f"`{name}`",
                    config.label(),
                    f"{rate:,.1f}",
                    f"**{rate / base_rate:.2f}×**",
                    f"{warm:.1f}",
                    _fmt(achieved),
                    f"{achieved / ref_peak:.0%} of {'bf16' if config.bf16 else 'fp32'}" if achieved else "-",
                ]
            )
            del ref
            if config.compile:
                torch._dynamo.reset()
    headers = ["model", "options", "img/s", "vs fp32/NCHW/eager", "warm-up s", "GFLOP/s", "% of peak"]
    return markdown_table(headers, rows, align="llrrrrr"), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--num-classes", type=int, default=10, help="the synthetic set's classes")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: fill --seconds)")
    parser.add_argument("--seconds", type=float, default=20.0, help="target timed seconds per measurement")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing the plain loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    parser.add_argument(
        "--ray-cpus", type=int, default=None, help="ray.init(num_cpus=...) (default: threads)"
    )
    parser.add_argument("--channels-last", action="store_true", help="plain loop: channels_last")
    parser.add_argument("--bf16", action="store_true", help="plain loop: bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    parser.add_argument("--compile-timeout", type=float, default=900.0, help="seconds allowed to warm-up")
    parser.add_argument("--with-augment", action="store_true", help="also dynconv at augment strength 1")
    parser.add_argument(
        "--variants",
        nargs="?",
        const="all",
        default=None,
        help=f"plain loop only: compare option sets (all, or some of {','.join(VARIANT_SETS)})",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18, batch 8, 2 steps")
    parser.add_argument("--write-docs", action="store_true", help=f"write the results into {DOCS}")
    args = parser.parse_args()
    if args.quick:
        if args.write_docs:
            parser.error("--quick is a smoke run; it does not write to the docs")
        args.models = "resnet18" if args.models == ",".join(MODELS) else args.models
        args.batch_size, args.steps, args.warmup = 8, args.steps or 2, 1
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]

    torch.set_float32_matmul_precision("high")  # as dynconv.train.loop.fit does
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    print(f"machine: {machine_info()}\ntorch threads: {threads}", flush=True)
    peak = matmul_peak("cpu", torch.float32, n=1024 if args.quick else 2048, seconds=0.5 if args.quick else 3)
    print(f"fp32 matmul peak: {peak:,.1f} GFLOP/s", flush=True)
    peak_bf16 = None
    if args.variants or args.bf16:
        peak_bf16 = matmul_peak(
            "cpu", torch.bfloat16, n=1024 if args.quick else 2048, seconds=1 if args.quick else 3
        )
        print(f"bf16 matmul peak: {peak_bf16:,.1f} GFLOP/s", flush=True)
    peaks = f"fp32 matmul peak ({threads} thread{'s' if threads > 1 else ''}): {peak:,.1f} GFLOP/s" + (
        f"; bf16: {peak_bf16:,.1f} GFLOP/s" if peak_bf16 else ""
    )

    if args.variants:
        table, notes = run_variants(args, threads, peak, peak_bf16)
        title = VARIANTS_SECTION
        intro = (
            "`benchmarks/train_throughput.py --variants` times the plain PyTorch reference loop "
            "(data in memory, "
            f"batch {args.batch_size}, {args.image_size}×{args.image_size}, SGD) under each speed option, "
            "one after the other in one process, against fp32 / NCHW / eager at the same thread count. "
            "% of peak: achieved FLOP/s (6 × fvcore MACs × img/s) over the measured matmul peak of the "
            "same precision."
        )
    else:
        table, notes = run_comparison(args, threads, peak)
        title = SECTION
        intro = (
            "`benchmarks/train_throughput.py` compares, per model and in one run, (a) a plain PyTorch "
            "training "
            "loop over uint8 data already in memory (normalise, forward, cross-entropy, backward, SGD step) "
            "with (b) dynconv's real worker (`train_worker` → `fit`) under a one-worker Ray Train "
            f"`TorchTrainer`, both at batch {args.batch_size}, {args.image_size}×{args.image_size}, "
            f"{threads} torch thread(s), augmentation and channel drop off. (a) is timed before and after "
            "(b) and averaged; (b) is epoch 2 of 2 of `train_images_per_second` over a train split of "
            "exactly the timed batches. Achieved FLOP/s = 6 × fvcore MACs × img/s (3× the forward pass, "
            "2 FLOPs per multiply-add), against the best rate of a 2048³ fp32 `torch.mm` counted as 2n³; "
            "compute-bound img/s = peak / (6 × MACs)."
        )
    print("\n" + peaks + "\n")
    print(table)
    for note in notes:
        print("- " + note)
    if args.write_docs:
        body = table + "\n\n" + peaks + ".\n" + "".join(f"\n- {n}" for n in notes)
        write_docs_section(docs_section(title, intro, body))


if __name__ == "__main__":
    main()
