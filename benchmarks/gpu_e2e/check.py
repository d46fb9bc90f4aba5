"""The GPU check (issue 10 items 2 and 3): a study end to end through Ray on a GPU, then trial packing.

Part 1, end to end: `dynconv tune tune_jobs/resnet18_dynamic.yaml` as a subprocess, on the embedded
synthetic set (50 classes, 84 px), through Ray Tune + Ray Train (use_gpu, NCCL backend, bf16 on CUDA),
MLflow (parent, one child per trial, evaluation run), evaluation of the best trial on CUDA, to the end.
The spec is the shipped one with --set overrides for one machine: local paths, one DDP worker per trial
(one GPU: two ranks cannot share it) in a TorchTrainer (`resources.ray_train: always`), 2 trials x 2
epochs. Its exit code, summary tables and the MLflow run layout go to the report.

Part 2, packing: the same model and the same total trial-epochs (`--trials` x `--epochs`) at 1, 2, 4, 8
trials per GPU (`resources.gpus_per_worker` 1, 0.5, 0.25, 0.125), one Ray instance, `run_study` in this
process. Per packing: study wall-clock (Tune), aggregate training img/s (all training images / wall-clock,
and per-trial epoch img/s x concurrent trials), peak GPU memory per trial (`peak_gpu_mem_gib`, logged by
the worker), ratio against 1 trial per GPU.

`--cpu` runs the same code on a CPU machine at toy sizes: `gpu: false` for part 1, and a custom Ray
resource `fake_gpu` standing in for the GPU in part 2 (the path tests/test_fractional_gpu.py uses).

    bash benchmarks/gpu_e2e/run.sh                    # on the GPU machine (installs .whl first)
    python benchmarks/gpu_e2e/check.py --cpu --out /tmp/gpu_e2e   # here, a smoke run (~5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "tune_jobs" / "resnet18_dynamic.yaml"
LAYOUT_METRICS = ("best_val_acc", "val_acc", "peak_gpu_mem_gib", "train_images_per_second")
sys.path.insert(0, str(REPO))


def overrides(work: Path, cpu: bool) -> dict[str, Any]:
    """--set values shared by both parts: data, stores and resources for one machine."""
    sets: dict[str, Any] = {
        "data.root": None,
        "data.synthetic.dir": str(work / "synthetic"),
        "data.synthetic.classes": 4 if cpu else 50,
        "data.synthetic.per_class": 30 if cpu else 200,
        "data.synthetic.size": 16 if cpu else 84,
        "data.image_size": 16 if cpu else 84,
        "data.cache_dir": str(work / "cache"),
        "mlflow.tracking_uri": f"sqlite:///{work}/mlflow.db",
        "storage_path": str(work / "ray_results"),
        "resources.driver_resource": None,
        "resources.workers_per_trial": 1,
        "resources.cpus_per_worker": 0.25 if cpu else 1.5,
        "resources.driver_cpus": 0.1 if cpu else 0.25,
        "search.tpe_startup_trials": 2,
        "scheduler.grace_period": 1,
        "train.schedule.warmup_epochs": 0.5,  # the spec's 2 must be < epochs, and these runs are short
    }
    if cpu:
        sets.update({"resources.gpu": False, "resources.gpus_per_worker": None, "model.args.width": 4,
                     "train.batch_size": 16})  # fmt: skip
    return sets


def set_list(sets: dict[str, Any]) -> list[str]:
    """KEY=VALUE strings as `--set` takes them (values in YAML flow style)."""
    import yaml

    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in sets.items()
    ]


def as_args(sets: dict[str, Any]) -> list[str]:
    return [arg for item in set_list(sets) for arg in ("--set", item)]


def run_layout(uri: str, experiment: str) -> list[str]:
    """The MLflow runs the study left: role, name, status, and a few metrics, one line each."""
    from dynconv.tracking.layout import find_runs
    from dynconv.tracking.store import client

    exp = client(uri).get_experiment_by_name(experiment)
    lines = []
    for role in ("study", "trial", "evaluation"):
        for run in find_runs(uri, exp.experiment_id, role=role):
            m = run.data.metrics
            keys = [k for k in LAYOUT_METRICS if k in m]
            facts = ", ".join(f"{k}={m[k]:.4g}" for k in keys)
            lines.append(f"- {role}: `{run.info.run_name}` {run.info.status} {facts}")
    return lines


def end_to_end(work: Path, cpu: bool, out: Path) -> list[str]:
    # ray_train: always - one-worker trials would otherwise train in their Tune actor; the issue asks for
    # TorchTrainer(use_gpu) with an NCCL process group, which one GPU allows only at one rank per trial.
    sets = {
        **overrides(work, cpu),
        "train.epochs": 2,
        "search.num_samples": 2,
        "resources.ray_train": "always",
    }
    cmd = [sys.executable, "-m", "dynconv", "tune", str(SPEC.relative_to(REPO)), *as_args(sets)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    seconds = time.perf_counter() - t0
    (out / "e2e_stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr[-20000:])
    tail = proc.stdout[proc.stdout.find("\ntrial ") :] if "\ntrial " in proc.stdout else proc.stdout[-4000:]
    lines = [
        "### End to end: `dynconv tune` through Ray Tune + Ray Train",
        "",
        "    " + " ".join(c if c != sys.executable else "python3" for c in cmd),
        "",
        f"exit code {proc.returncode}, {seconds:.0f} s wall-clock. Output (summary tables):",
        "",
        *["    " + line for line in tail.strip().splitlines()[-40:]],
        "",
    ]
    if proc.returncode == 0:
        layout = run_layout(sets["mlflow.tracking_uri"], "dynconv-imagenet-mini")
        lines += ["MLflow run layout:", "", *layout, ""]
    else:
        lines += ["stderr (end):", "", *["    " + x for x in proc.stderr.strip().splitlines()[-30:]], ""]
    return lines


def packing_spec(work: Path, cpu: bool, per_gpu: int, trials: int, epochs: int):
    from dynconv.spec import load_spec

    sets = {
        **overrides(work, cpu),
        "resources.gpu": True,
        "resources.gpus_per_worker": 1 if per_gpu == 1 else 1 / per_gpu,
        "train.epochs": epochs,
        "search.num_samples": trials,
        "scheduler.name": "none",
        "evaluate.enabled": False,
        "study": f"packing-{per_gpu}",
        "mlflow.experiment": "gpu-packing",
    }
    return load_spec(SPEC, overrides=set_list(sets))


def packing_row(spec, result, per_gpu: int, base: float | None) -> dict[str, Any]:
    """One table row: wall-clock, per-trial and aggregate training img/s, peak GPU memory per trial."""
    from dynconv.spec.data import prepare_for_spec
    from dynconv.tracking.store import client

    n_train = len(prepare_for_spec(spec, progress=False).split("train"))  # cached: no rebuild
    per_epoch = (n_train // spec.train.batch_size) * spec.train.batch_size  # drop_last, one worker
    wall = result.timings["tune_seconds"]
    aggregate = sum(t.epochs for t in result.trials) * per_epoch / wall
    c = client(result.tracking_uri)
    rates, peaks = [], []
    for trial in result.trials:
        if trial.run_id is None:
            continue
        history = c.get_metric_history(trial.run_id, "train_images_per_second")
        rates += [h.value for h in history[1:] or history]  # epoch 1 includes warm-up
        peak = c.get_run(trial.run_id).data.metrics.get("peak_gpu_mem_gib")
        peaks += [peak] if peak is not None else []
    rates.sort()
    per_trial = rates[len(rates) // 2] if rates else float("nan")
    concurrent = min(per_gpu, len(result.trials))
    return {
        "trials per GPU": per_gpu,
        "gpus_per_worker": f"{spec.resources.gpus:g}",
        "study wall-clock s (Tune)": f"{wall:.0f}",
        "aggregate img/s (all images / wall-clock)": f"{aggregate:,.0f}",
        "ratio vs 1/GPU": "1.00" if base is None else f"{aggregate / base:.2f}",
        "per-trial img/s (median epoch)": f"{per_trial:,.0f}",
        "per-trial x concurrent": f"{per_trial * concurrent:,.0f}",
        "peak GPU mem per trial GiB": f"{max(peaks):.2f}" if peaks else "-",
        "trials finished": sum(t.status == "FINISHED" for t in result.trials),
        "_aggregate": aggregate,
    }


def packing(work: Path, cpu: bool, levels: list[int], trials: int, epochs: int, save) -> list[str]:
    """One study per packing level, one Ray instance; `save(lines)` after each level (kept on a timeout)."""
    import ray

    from dynconv.tune.study import run_study

    gpu_resource = "fake_gpu" if cpu else "GPU"
    ray.init(**({"num_cpus": 2, "resources": {"fake_gpu": 1}} if cpu else {}), logging_level="WARNING")
    rows, base = [], None
    try:
        for k in levels:
            spec = packing_spec(work, cpu, k, trials, epochs)
            result = run_study(spec, gpu_resource=gpu_resource, controller_failure_limit=0)
            row = packing_row(spec, result, k, base)
            base = row.pop("_aggregate") if base is None else base
            row.pop("_aggregate", None)
            rows.append(row)
            print(row, flush=True)
            save(packing_table(rows, trials, epochs))
    finally:
        ray.shutdown()
    return packing_table(rows, trials, epochs)


def packing_table(rows: list[dict[str, Any]], trials: int, epochs: int) -> list[str]:
    head = list(rows[0]) if rows else []
    return [
        f"### Packing: {trials} trials x {epochs} epochs of resnet18_dynamic at each level",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---:" for _ in head) + " |",
        *["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows],
        "",
    ]


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}; {os.cpu_count()} CPUs; Python {platform.python_version()}; "
            f"torch {torch.__version__}; {gpu}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_e2e_out")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_e2e_work"))
    ap.add_argument("--cpu", action="store_true", help="toy sizes, gpu false / fake_gpu: smoke run on a CPU")
    ap.add_argument("--packings", default=None, help="trials per GPU, e.g. 1,2,4,8")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-packing", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in (args.packings or ("1,2,4" if args.cpu else "1,2,4,8")).split(",")]
    trials = args.trials or (4 if args.cpu else 8)
    epochs = args.epochs or (1 if args.cpu else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = [f"## GPU check ({stamp})", "", f"Machine: {machine()}", ""]
    if not args.skip_e2e:
        report += end_to_end(args.work, args.cpu, args.out)
        (args.out / "gpu_e2e.md").write_text("\n".join(report) + "\n")

    def save(lines: list[str]) -> None:
        (args.out / "gpu_e2e.md").write_text("\n".join(report + lines) + "\n")

    if not args.skip_packing:
        report += packing(args.work, args.cpu, levels, trials, epochs, save)
    save([])
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
