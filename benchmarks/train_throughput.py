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

The shared helpers live in ``benchmarks/common.py``, the two loops in ``benchmarks/loops.py``.

    .venv/bin/python benchmarks/train_throughput.py                # plain vs dynconv, 4 models
    .venv/bin/python benchmarks/train_throughput.py --variants     # what makes the loop faster
    .venv/bin/python benchmarks/train_throughput.py --quick        # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import (
    DOCS,
    docs_section,
    forward_macs,
    machine_info,
    markdown_table,
    matmul_peak,
    one_line,
    start_ray,
    training_gflops,
    usable_cores,
    write_docs_section,
)
from loops import LoopConfig, ReferenceLoop, dynconv_rate, prepare_synthetic_cache, throughput_spec

MODELS = ("resnet18", "resnet18_dynamic", "resnet34", "simple_cnn")
SECTION = "Training throughput (CPU)"
VARIANTS_SECTION = "Training throughput (CPU): speed options"


# ------------------------------------------------------------------------------ runs


def _fmt(x: float | None, spec: str = ",.1f", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _dynconv_rates(name: str, args: argparse.Namespace, threads: int, steps: int, tmp: Path) -> tuple:
    """(dynconv img/s, img/s with augment 1.0 or None) on a cache of exactly the timed batches."""
    data = prepare_synthetic_cache(tmp / name, steps * args.batch_size, args.image_size)
    same = dict(batch_size=args.batch_size, threads=threads, image_size=args.image_size, compile=args.compile)
    dyn = dynconv_rate(throughput_spec(name, **same), data.cache_dir, tmp / "ray_results")
    dyn_rate = dyn["train_images_per_second"]
    print(f"   dynconv: {dyn_rate:,.1f} img/s (epoch 2, {dyn['epoch_seconds']:.1f} s)", flush=True)
    aug_rate = None
    if args.with_augment:
        spec1 = throughput_spec(name, **same, augment=1.0)
        aug_rate = dynconv_rate(spec1, data.cache_dir, tmp / "ray_results")["train_images_per_second"]
        print(f"   dynconv, augment 1.0: {aug_rate:,.1f} img/s", flush=True)
    return dyn_rate, aug_rate


def compare_model(name: str, args: argparse.Namespace, config: LoopConfig, threads: int, tmp: Path) -> dict:
    """Plain loop before, dynconv, plain loop after, for one model: the rates and the FLOP count."""
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
    dyn_rate, aug_rate = _dynconv_rates(name, args, threads, steps, tmp)
    after = ref.measure(steps)
    print(f"   plain (after): {after.images_per_second:,.1f} img/s", flush=True)
    plain = statistics.mean([before.images_per_second, after.images_per_second])
    spread = abs(before.images_per_second - after.images_per_second) / plain
    return dict(
        macs=macs,
        source=source,
        steps=steps,
        plain=plain,
        spread=spread,
        dyn_rate=dyn_rate,
        aug_rate=aug_rate,
    )


def comparison_row(name: str, m: dict, args: argparse.Namespace, peak: float) -> tuple[list, list[str]]:
    """The table row of one model and its pass/miss checks against the targets."""
    macs, plain, dyn_rate = m["macs"], m["plain"], m["dyn_rate"]
    ratio = dyn_rate / plain
    achieved = training_gflops(macs, dyn_rate)
    bound = peak * 1e9 / (6 * macs) if macs else None
    pct = achieved / peak if achieved else None
    row = [
        f"`{name}`",
        _fmt(macs / 1e6 if macs else None, ",.0f"),
        f"{m['steps']} × {args.batch_size}",
        f"{plain:,.1f} (±{m['spread'] / 2:.0%})",
        f"{dyn_rate:,.1f}",
        f"**{ratio:.3f}**",
        *([_fmt(m["aug_rate"])] if args.with_augment else []),
        _fmt(achieved),
        _fmt(bound),
        f"**{pct:.0%}**" if pct is not None else "-",
    ]
    checks = [f"{name}: dynconv/plain = {ratio:.3f} ({'meets' if ratio >= 0.95 else 'misses'} ≥ 0.95)"]
    if name == "resnet18" and pct is not None:
        checks.append(
            f"resnet18: {pct:.0%} of the compute-bound rate ({'meets' if pct >= 0.5 else 'misses'} ≥ 50 %)"
        )
    return row, checks


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
                m = compare_model(name, args, config, threads, Path(tmp))
                row, row_checks = comparison_row(name, m, args, peak)
                rows.append(row)
                checks += row_checks
                if m["source"] != "fvcore":
                    notes.append(f"{name}: FLOPs from {m['source']}")
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
