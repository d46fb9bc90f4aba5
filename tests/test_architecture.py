"""The layering of docs/architecture.md, checked on the source (ast, no imports; costs milliseconds).

Every module imports only from its own layer and the layers before it (`LAYERS`, the table of
docs/architecture.md); MLflow is imported only inside `dynconv/tracking/`; the Ray-free layers (basics,
spec, training loop, evaluation of a model) import nothing from Ray, Optuna or MLflow, lazily or not;
`dynconv/` holds at most six modules besides its packages; no module imports another's `_private` names.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dynconv"
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("basics", ("errors", "stats", "plots", "environment", "layers", "models", "data")),
    ("spec and FLOPs", ("spec", "flops")),
    ("training", ("train",)),
    ("evaluation of a model", ("evaluation",)),
    ("tracking", ("tracking",)),
    ("orchestration", ("train.ray_session", "tune", "report", "rerun")),
    ("edge", ("cli", "__main__")),
)
"""Lowest first; a module belongs to the layer of its longest matching prefix (`train.ray_session` is
orchestration, the rest of `train` is training)."""
RAY_FREE = (
    "errors.py",
    "stats.py",
    "plots.py",
    "environment.py",
    "layers",
    "models",
    "data",
    "spec",
    "flops.py",
    "train/subset_val.py",
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


def _layer(module: str) -> int:
    """Index in LAYERS of a dotted module name below `dynconv` (`tune.study`)."""
    best = max(
        ((i, len(prefix)) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
         if module == prefix or module.startswith(prefix + ".")),
        key=lambda hit: hit[1],
        default=None,
    )  # fmt: skip
    assert best is not None, f"dynconv.{module} is in no layer of LAYERS"
    return best[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _dynconv_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every `dynconv` import in `path`, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dynconv":
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "dynconv"]
    return out


def test_every_module_imports_only_its_own_layer_and_the_ones_before_it() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        own = _module_name(path)
        if not own:
            continue
        for module, names in _dynconv_imports(path):
            base = module.removeprefix("dynconv").lstrip(".")
            targets = [f"{base}.{n}".lstrip(".") for n in names] if names else [base]
            for target in targets:
                try:
                    layer = _layer(target)
                except AssertionError:  # a name defined in a module, not a submodule
                    layer = _layer(target.rsplit(".", 1)[0])
                if layer > _layer(own):
                    offenders.append(f"{own} ({LAYERS[_layer(own)][0]}) -> {target} ({LAYERS[layer][0]})")
    assert offenders == []


def test_the_package_top_holds_concepts_not_loose_modules() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= 6, loose


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{_module_name(path)}: from {module} import {name}"
        for path in PACKAGE.rglob("*.py")
        for module, names in _dynconv_imports(path)
        for name in names
        if name.startswith("_")
    ]
    assert offenders == []


def test_tag_names_live_in_tracking_layout_only() -> None:
    """A `dynconv.*` MLflow tag name is a constant of `tracking/layout.py`; everyone else imports it, so
    that one place says what a run carries (module paths such as `dynconv.tune.study` are not tags)."""
    packages = {p.stem for p in PACKAGE.iterdir() if p.is_dir() or p.suffix == ".py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "tracking" / "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            name = node.value
            if name.startswith("dynconv.") and name.count(".") == 1 and name.split(".")[1] not in packages:
                offenders.append(f"{_module_name(path)}: {name!r}")
    assert offenders == []


def test_the_evaluation_of_a_model_knows_no_study() -> None:
    """`evaluation/` takes a model and data and returns an `Evaluation`: which of a study's checkpoints
    to evaluate, and recording what it found, are the study's (`tune/study_evaluation.py`)."""
    offenders = [
        f"{_module_name(path)}: {module}"
        for path in (PACKAGE / "evaluation").rglob("*.py")
        for module, _ in _dynconv_imports(path)
        if module.split(".")[1:2] in (["tune"], ["tracking"])
    ]
    assert offenders == []


MUTATORS = frozenset(
    {"pop", "popitem", "update", "setdefault", "clear", "insert", "append", "extend", "remove"}
)


def test_no_module_changes_global_state_around_a_call() -> None:
    """Configuration is passed, not ambient: no module but `environment.py` writes `os.environ`, and none
    changes `sys.path` or MLflow's process-wide tracking URI (which also writes MLFLOW_TRACKING_URI)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "environment.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                owner, method = ast.unparse(node.func.value), node.func.attr
                bad = method == "set_tracking_uri" or (
                    owner in ("os.environ", "sys.path") and method in MUTATORS
                )
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                target = " ".join(ast.unparse(t) for t in targets)
                bad = "os.environ[" in target or "sys.path" in target
            else:
                bad = False
            if bad:
                offenders.append(f"{_module_name(path)}:{node.lineno}: {target}")
    assert offenders == []
