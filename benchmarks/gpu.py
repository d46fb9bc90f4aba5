"""GPU benchmark, prepared for a CUDA machine (run by hand, not a timed test): training and inference images/s
per model at 84x84, and one trial of a study through Ray Train end to end.

Part 1 needs only torch and this repository (``dynconv.models``, ``dynconv.data.augment``): per model,
a plain training loop (``benchmarks/loops.py``'s ``ReferenceLoop``: uint8 batches in pinned host
memory, copied to the GPU, normalised, ``BatchAugment(1.0)`` on the GPU, forward, cross-entropy, backward,
SGD step) at batch 256 in

    fp32                              (TF32 matmuls, as ``fit`` sets float32_matmul_precision "high")
    bf16 autocast + channels_last     (what dynconv's loop does on CUDA)
    bf16 + channels_last + torch.compile   (``--compile-models``; warm-up under ``--compile-timeout``)

plus inference (eval, no autograd, bf16 + channels_last) and augmentation alone, with peak memory and the
share of the measured matmul peak (bf16 and TF32 ``torch.mm``, 2n^3 FLOPs; training FLOPs = 6 x fvcore
MACs, or torch's FLOP counter / 2 when fvcore is missing).

Part 2 runs ``tune_jobs/resnet18_dynamic.yaml`` as a one-trial, one-GPU study (``run_study``: Ray Tune,
Ray Train, MLflow, channel-subset evaluation) on the synthetic dataset at 84 px, when ray, mlflow, optuna,
fvcore and pydantic are importable; otherwise the same training through ``fit`` with a ``LocalSession``
(needs pydantic and PyYAML), otherwise it says what is missing and skips.

A short table comes last; it is also written, as a docs/benchmarks.md section, to ``$OUT/gpu_results.md``
when ``OUT`` is set (``--insert-docs FILE`` later puts such a file into docs/benchmarks.md).

    PYTHONPATH=. python3 benchmarks/gpu.py                        # ~4 min on one H200
    PYTHONPATH=. python3 benchmarks/gpu.py --quick                # smoke run on the CPU (~1 min)
    .venv/bin/python benchmarks/gpu.py --insert-docs gpu_results.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    REPO,
    augment_rate,
    docs_section,
    forward_macs,
    have,
    machine_info,
    markdown_table,
    matmul_peak,
    one_line,
    peak_memory_gib,
    reset_memory,
    training_gflops,
    usable_cores,
    write_docs_section,
)
from loops import LoopConfig, ReferenceLoop

SECTION = "Training throughput on a GPU"
MODELS = ("resnet18", "resnet18_dynamic", "resnet34", "simple_cnn")
STUDY_SPEC = REPO / "tune_jobs" / "resnet18_dynamic.yaml"
STUDY_NEEDS = ("ray", "mlflow", "optuna", "fvcore", "pydantic", "yaml", "numpy", "PIL")
LOCAL_NEEDS = ("pydantic", "yaml", "numpy", "PIL")


def measure_model(name: str, args: argparse.Namespace, device: torch.device, peaks: dict) -> list[dict]:
    """One row per configuration of `name` (training, then inference on the eager bf16 loop)."""
    macs, source = forward_macs(name, args.num_classes, args.image_size)
    configs = [
        ("fp32", LoopConfig(augment=1.0)),
        ("bf16 + channels_last", LoopConfig(bf16=True, channels_last=True, augment=1.0)),
    ]
    if name in args.compile_models:
        configs.append(
            (
                "bf16 + channels_last + compile",
                LoopConfig(bf16=True, channels_last=True, compile=True, augment=1.0),
            )
        )
    rows = []
    for label, config in configs:
        row: dict[str, Any] = {"model": name, "options": label, "macs": macs, "flops_source": source}
        inference: dict[str, Any] | None = None
        batch = args.batch_size
        while True:
            row["batch"] = batch
            reset_memory(device)
            ref = None
            try:
                print(f"== {name}: {label}, batch {batch}", flush=True)
                ref = ReferenceLoop(
                    name,
                    num_classes=args.num_classes,
                    image_size=args.image_size,
                    batch_size=batch,
                    device=device,
                    config=config,
                )
                row["warmup_s"] = ref.warmup(
                    args.warmup, timeout_s=args.compile_timeout if config.compile else None
                )
                steps = max(args.steps, ref.steps_for(args.min_seconds, args.steps))
                timing = ref.measure(steps)
                row["img_s"] = timing.images_per_second
                row["mem_gib"] = peak_memory_gib(device)
                print(f"   {timing.images_per_second:,.0f} img/s over {steps} steps", flush=True)
                if label == "bf16 + channels_last":
                    reset_memory(device)
                    inf = ref.measure_inference(max(args.steps, 2 * steps))
                    inference = {
                        "model": name,
                        "options": "inference, bf16 + channels_last",
                        "batch": batch,
                        "img_s": inf.images_per_second,
                        "mem_gib": peak_memory_gib(device),
                        "inference": True,
                    }
                break
            except torch.cuda.OutOfMemoryError:
                ref = None
                reset_memory(device)
                if batch <= 8:
                    row["error"] = "out of memory"
                    break
                print(f"   out of memory at batch {batch}; retrying at {batch // 2}", flush=True)
                batch //= 2
            except Exception as exc:  # a failed compile (or timeout) is a result, not a crash
                row["error"] = ("compile failed: " if config.compile else "failed: ") + one_line(exc, 120)
                print("   " + row["error"], flush=True)
                break
            finally:
                ref = None
                if config.compile:
                    torch._dynamo.reset()
        rows += [row] + ([inference] if inference else [])
    for row in rows:
        if row.get("img_s") and macs:
            fwd_only = row.get("inference")
            gflops = (2 * macs * row["img_s"] / 1e9) if fwd_only else training_gflops(macs, row["img_s"])
            kind = "fp32" if row["options"] == "fp32" else "bf16"
            row["gflops"] = gflops
            row["pct_peak"] = gflops / peaks[kind] if peaks.get(kind) else None
            row["peak_kind"] = kind
    return rows


def study_e2e(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Part 2: one trial of resnet18_dynamic.yaml on the synthetic set, through Ray Train if possible."""
    missing = [m for m in STUDY_NEEDS if not have(m)]
    local_missing = [m for m in LOCAL_NEEDS if not have(m)]
    if local_missing:
        return {"status": f"skipped: {', '.join(missing)} not installed on this machine"}
    from dynconv.spec import load_spec

    gpu = device.type == "cuda"
    overrides = [
        "study=gpu-e2e",
        "data.root=null",
        "data.cache_dir=null",
        f"data.image_size={args.image_size}",
        f"data.synthetic={{dir: {workdir / 'synthetic'}, classes: 10, per_class: {args.study_per_class}, "
        f"size: {max(args.image_size, 32)}, seed: 0}}",
        f"train.epochs={args.study_epochs}",
        "train.schedule.warmup_epochs=1",
        f"train.batch_size={args.batch_size}",
        "search.num_samples=1",
        "scheduler.name=none",
        "resources.workers_per_trial=1",
        f"resources.cpus_per_worker={max(1, min(8, usable_cores() - 1))}",
        f"resources.gpu={'true' if gpu else 'false'}",
        "resources.driver_resource=null",
        "resources.driver_cpus=0.5",
        f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "mlflow.experiment=gpu-e2e",
        f"storage_path={workdir / 'ray_results'}",
        *(["evaluate.subsets=[RGB,R]"] if args.quick else []),
    ]
    spec = load_spec(STUDY_SPEC, overrides=overrides)
    out: dict[str, Any] = {
        "model": spec.model.name,
        "batch": spec.train.batch_size,
        "epochs": spec.train.epochs,
    }
    t0 = time.perf_counter()
    if not missing:
        from dynconv.tracking.store import client
        from dynconv.tune.study import run_study

        result = run_study(spec, address="local")
        out["wall_s"] = time.perf_counter() - t0
        import ray

        ray.shutdown()
        where = "1 GPU" if gpu else "CPU"
        out["status"] = f"ran: run_study → Ray Tune → Ray Train (1 worker, {where}) → MLflow, evaluation"
        out["timings"] = dict(result.timings)
        trial = result.trials[0] if result.trials else None
        if trial is None or trial.run_id is None:
            out["status"] += "; no trial result"
            return out
        c = client(result.tracking_uri)
        hist = sorted(c.get_metric_history(trial.run_id, "train_images_per_second"), key=lambda m: m.step)
        out["img_s"] = hist[-1].value if hist else None
        out["val_acc"] = trial.value  # last value of the ranked metric (val_acc here)
        out["trial_status"] = trial.status
        return out
    from dynconv.spec.data import prepare_for_spec
    from dynconv.train.loop import fit
    from dynconv.train.session import LocalSession

    spec = spec.resolved()
    data = prepare_for_spec(spec, progress=False)
    torch.set_num_threads(max(1, min(8, usable_cores())))
    session = LocalSession(device=device)
    metrics = fit(spec, session, data)
    out["wall_s"] = time.perf_counter() - t0
    out["status"] = (
        f"Ray path skipped: {', '.join(missing)} not installed on this machine; "
        "ran the same worker loop through dynconv.train.loop.fit with LocalSession instead"
    )
    out["img_s"] = metrics.get("train_images_per_second")
    out["val_acc"] = session.history[-1]["val_acc"]  # the last epoch's, as the Ray path reports
    return out


def _f(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render(rows: list[dict], peaks: dict, aug: float, e2e: dict, args: argparse.Namespace) -> tuple[str, str]:
    """(detail, short): markdown for the details and the short table printed last."""
    detail_rows = []
    for r in rows:
        mem = _f(r.get("mem_gib"), ".1f")
        pct = f"{r['pct_peak']:.0%} of {r['peak_kind']}" if r.get("pct_peak") else "-"
        rate = r.get("error") or _f(r.get("img_s"))
        detail_rows.append(
            [
                f"`{r['model']}`",
                r["options"],
                str(r["batch"]),
                rate,
                _f(r.get("gflops")),
                pct,
                mem,
                _f(r.get("warmup_s"), ".1f"),
            ]
        )
    detail = markdown_table(
        ["model", "options", "batch", "img/s", "GFLOP/s", "% of matmul peak", "peak mem GiB", "warm-up s"],
        detail_rows,
        align="llrrrrrr",
    )
    by = {(r["model"], r["options"]): r for r in rows}

    def cell(model: str, options: str) -> str:
        r = by.get((model, options))
        if r is None:
            return "-"
        return r.get("error", "").split(":")[0] or _f(r.get("img_s"))

    short_rows = []
    for model in args.models:
        short_rows.append(
            [
                f"`{model}`",
                cell(model, "fp32"),
                cell(model, "bf16 + channels_last"),
                cell(model, "bf16 + channels_last + compile"),
                cell(model, "inference, bf16 + channels_last"),
            ]
        )
    short = markdown_table(
        ["model", "train fp32", "train bf16 + CL", "train bf16 + CL + compile", "inference bf16 + CL"],
        short_rows,
    )
    lines = [
        f"images/s at {args.image_size}×{args.image_size}, batch {args.batch_size}, "
        f"{args.num_classes} classes, training includes `BatchAugment(1.0)` on the {args.device}; "
        f"matmul peak: bf16 {_f(peaks.get('bf16'))} GFLOP/s, fp32/TF32 {_f(peaks.get('fp32'))} GFLOP/s; "
        f"normalise + `BatchAugment(1.0)` alone: {_f(aug)} img/s",
    ]
    e2e_line = f"end to end ({e2e.get('model', 'resnet18_dynamic')}): {e2e['status']}"
    if e2e.get("img_s"):
        e2e_line += (
            f"; dynconv loop {e2e['img_s']:,.0f} img/s "
            f"(last of {e2e['epochs']} epochs, batch {e2e['batch']}), "
            f"last val acc {_f(e2e.get('val_acc'), '.3f')}, wall-clock {e2e['wall_s']:.0f} s"
        )
        same = "bf16 + channels_last" if args.device == "cuda" else "fp32"  # what dynconv's loop does there
        plain = by.get((e2e["model"], same))
        if plain and plain.get("img_s") and plain["batch"] == e2e["batch"]:
            e2e_line += (
                f"; plain loop ({same}): {plain['img_s']:,.0f} img/s → "
                f"ratio {e2e['img_s'] / plain['img_s']:.2f} "
                "(the trial adds channel drop 0.3 and its own augmentation strength; the ratio is indicative)"
            )
        if e2e.get("timings"):
            t = e2e["timings"]
            e2e_line += "; phases: " + ", ".join(
                f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in t.items()
            )
    lines.append(e2e_line)
    return detail + "\n\n" + "\n".join("- " + s for s in lines), short + "\n\n- " + e2e_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--num-classes", type=int, default=50, help="ImageNet-mini's 50 classes")
    parser.add_argument(
        "--compile-models", default="resnet18,simple_cnn", help="models also run compiled ('' = none)"
    )
    parser.add_argument(
        "--compile-timeout", type=float, default=150.0, help="seconds allowed for a compile warm-up"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="at least this many timed steps")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="and at least this long")
    parser.add_argument("--study-epochs", type=int, default=3)
    parser.add_argument(
        "--study-per-class", type=int, default=300, help="synthetic images per class (10 classes)"
    )
    parser.add_argument("--no-study", action="store_true", help="skip part 2")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run on the CPU: 32 px, batch 4, 2 steps")
    parser.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    parser.add_argument(
        "--insert-docs", type=Path, default=None, help="put a saved gpu_results.md into the docs"
    )
    args = parser.parse_args()
    if args.insert_docs:
        write_docs_section(args.insert_docs.read_text(encoding="utf-8"))
        return
    if args.quick:
        if args.write_docs:
            parser.error("--quick is a smoke run; it does not write to the docs")
        args.device = args.device or "cpu"
        args.image_size, args.batch_size, args.steps, args.warmup, args.min_seconds = 32, 4, 2, 1, 0.0
        args.num_classes, args.study_epochs, args.study_per_class = 10, 2, 20
        if args.compile_models == parser.get_default("compile_models"):
            args.compile_models = ""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --quick (or --device cpu) for a CPU smoke run")
    args.models = [m for m in args.models.split(",") if m]
    args.compile_models = [m for m in args.compile_models.split(",") if m]
    device = torch.device(args.device)
    if args.quick:
        torch.set_num_threads(1)  # a smoke run on a shared CPU: stay out of the way
    torch.set_float32_matmul_precision("high")  # as dynconv.train.loop.fit does
    t_start = time.perf_counter()
    print(f"machine: {machine_info()}", flush=True)
    print("importable: " + ", ".join(f"{m} {'yes' if have(m) else 'NO'}" for m in STUDY_NEEDS), flush=True)

    n = 8192 if device.type == "cuda" else 512
    peaks = {
        "bf16": matmul_peak(device, torch.bfloat16, n=n, seconds=1.0 if not args.quick else 0.2),
        "fp32": matmul_peak(device, torch.float32, n=n, seconds=1.0 if not args.quick else 0.2),
    }
    print(
        f"matmul peak: bf16 {peaks['bf16']:,.0f} GFLOP/s, fp32/TF32 {peaks['fp32']:,.0f} GFLOP/s", flush=True
    )
    aug = augment_rate(args.batch_size, args.image_size, device, seconds=1.0 if not args.quick else 0.2)
    print(f"normalize + BatchAugment(1.0) alone: {aug:,.0f} img/s", flush=True)

    rows: list[dict] = []
    for name in args.models:
        rows += measure_model(name, args, device, peaks)

    e2e: dict[str, Any] = {"status": "skipped (--no-study)"}
    if not args.no_study:
        with tempfile.TemporaryDirectory(prefix="dynconv_gpu_") as tmp:
            try:
                e2e = study_e2e(args, device, Path(tmp))
            except Exception as exc:  # report, don't lose part 1
                e2e = {"status": f"failed: {one_line(exc, 300)}"}

    detail, short = render(rows, peaks, aug, e2e, args)
    total = time.perf_counter() - t_start
    print("\n" + detail + f"\n\n(total {total:.0f} s)\n\n" + short)
    intro = (
        "`benchmarks/gpu.py`: per model, a plain PyTorch training loop (uint8 batches from pinned host "
        "memory, normalise + `BatchAugment(1.0)` on the GPU, forward, backward, SGD) in fp32, bf16 autocast "
        "+ channels_last (what dynconv's loop does on CUDA) and with `torch.compile`; inference; then a "
        "one-trial study of `tune_jobs/resnet18_dynamic.yaml` on the synthetic set through Ray Train end "
        "to end. Training GFLOP/s = 6 × fvcore MACs × img/s (inference: 2 ×), against a measured "
        "`torch.mm` peak."
    )
    section = docs_section(SECTION, intro, short + "\n\nDetails:\n\n" + detail)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_results.md"
        out.write_text(section, encoding="utf-8")
        print(f"\nwrote {out}")
    if args.write_docs:
        write_docs_section(section)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
