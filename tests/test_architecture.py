"""The layering of docs/architecture.md, checked on the source (ast, no imports; costs milliseconds).

MLflow is imported only inside `dynconv/tracking/`; the Ray-free layers (basics, spec, training loop,
evaluation of a model) import nothing from Ray, Optuna or MLflow, lazily or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dynconv"
RAY_FREE = (
    "errors.py",
    "stats.py",
    "plots.py",
    "layers",
    "models",
    "data",
    "spec.py",
    "spec_sections.py",
    "spec_checks.py",
    "flops.py",
    "datasets.py",
    "metrics.py",
    "train/subset_val.py",
    "tune/pareto.py",
    "tune/ranking.py",
    "train/loop.py",
    "train/session.py",
    "train/optim.py",
    "evaluation/results.py",
    "evaluation/predict.py",
    "evaluation/speed.py",
    "evaluation/model.py",
    "evaluation/tables.py",
)


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_tracking_imports_mlflow() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "mlflow" in imported_roots(p) and p.relative_to(PACKAGE).parts[0] != "tracking"
    ]
    assert offenders == []


def test_models_data_and_evaluation_know_nothing_of_ray_or_mlflow() -> None:
    files = [
        p
        for name in RAY_FREE
        for p in ([PACKAGE / name] if name.endswith(".py") else (PACKAGE / name).rglob("*.py"))
    ]
    assert len(files) > len(RAY_FREE)
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(imported_roots(p) & {"ray", "optuna", "mlflow"}) for p in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
