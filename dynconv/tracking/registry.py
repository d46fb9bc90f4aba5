"""A study's champion in MLflow's Model Registry: the served model logged into a run, its registration
under the study's name with the `champion` / `candidate` alias, and a registered version read back.

What a registered version is, so a user can load it with torch and mlflow alone (see
docs/registry.md): a `dynconv.models.served.ServedClassifier` pickled by `mlflow.pytorch` with the part of
dynconv it loads with (`CODE_COPY`) as its `code_paths`, and the caller's metadata (channel slots,
normalisation, per-subset accuracies, study, test set, class names) with the training image size. Two
faces: `mlflow.pytorch.load_model("models:/<name>@champion")` is the torch module (`channels=`), and its
`python_function` flavor is `dynconv.tracking.served_pyfunc` (`mlflow.pyfunc.load_model`, `mlflow models
serve`: pixels or encoded images, `params={"channels": "RB"}`, classes named in the answer), whose
signature it carries. Pickle, not MLflow's default `pt2` export: an exported graph is traced for one
channel count and takes no `channels=` argument.

Who holds an alias (`register_champion`): the registered model belongs to one study (its
`dynconv.study` tag) and holds only versions dynconv registered for it; one version per source run (a
resumed study reuses it); an alias moves to a new version only if no version holds it, the holder was
scored on another test set, or the new score beats the holder's (higher is better). Every store failure,
a store without a registry among them, is one `DynconvError` line: the caller prints it and goes on.

Writes go through an `MlflowClient` bound to the study's store, with explicit run ids: the model is
saved to a temporary folder (`mlflow.pytorch.save_model`), uploaded into a logged model created in the
run's experiment, and registered from that logged model's artifact location. No process-wide MLflow
setting, environment variable or `sys.path` is changed around a call (`mlflow.pytorch.log_model` and a
`models:/<id>` registration source would read MLflow's global tracking URI).

Imports `dynconv.errors` and `dynconv.tracking`; `mlflow` and torch inside functions only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dynconv.errors import DynconvError, Fault, one_line
from dynconv.tracking import retry as tracking_retry
from dynconv.tracking.layout import (
    REGISTRY_ALIASES,
    SERVED_MODEL,
    TAG_SCORE,
    TAG_SOURCE_RUN,
    TAG_STUDY,
    TAG_TEST_SET,
)
from dynconv.tracking.store import client, masked, store_errors

if TYPE_CHECKING:
    from dynconv.models.served import ServedClassifier

PACKAGE = Path(__file__).resolve().parents[1]
CODE_COPY = (
    "__init__.py",
    "errors.py",
    "layers",
    "models",
    "data/__init__.py",
    "data/channels.py",
    "data/decode.py",
    "tracking/__init__.py",
    "tracking/served_pyfunc.py",
)
"""What of `dynconv/` a served model needs to load and answer: the model classes, the request handling
(`models/serving.py`: subset names, decoding as training did), the pyfunc loader, and what they import
(`tests/test_registry.py` checks that this is closed under imports)."""
NO_REGISTRY = frozenset({"ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_IMPLEMENTED"})
"""MLflow error codes of a store without a model registry: a server that does not serve the registry
API (HTTP 404), a registry URI MLflow has no store for, an endpoint the server leaves out."""
_MODEL_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class RegistryOutcome:
    """What `register_champion` did: the version registered (or reused), the alias, whether the alias
    now points at it because of this call, and one line saying so and why."""

    version: str
    alias: str
    moved: bool
    message: str


class RegisteredVersion(NamedTuple):
    """A registered model version: its number, the run it was registered from, its tags."""

    version: str
    source_run_id: str
    tags: dict[str, str]


def log_served_model(
    uri: str, run_id: str, model: ServedClassifier, *, image_size: int, metadata: dict[str, Any]
) -> str:
    """Log `model` (a CPU copy, in eval mode) into run `run_id` as MLflow model "model", loadable where
    dynconv is not installed; returns its URI (`models:/<model id>`), what `register_champion` takes.

    `metadata` (channel slots, normalisation, accuracies, study, test set, `class_names`: the caller's)
    is stored in the model's MLmodel file with `image_size`, the size the pyfunc face takes pixels at and
    resizes encoded images to; the input example is one (1, 3, image_size, image_size) image in [0, 1].
    Class names that do not number the model's classes, or a store that fails, are one `DynconvError`
    line.
    """
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus

    from dynconv.tracking import served_pyfunc

    served = copy.deepcopy(model).cpu().eval()
    example, num_classes = _example(served, image_size)
    metadata = _served_metadata(metadata, image_size, num_classes)
    with _store_calls(uri, f"logging the served model into run {run_id}"):
        c = client(uri)
        experiment_id = tracking_retry.call(c.get_run, run_id).info.experiment_id
        logged = tracking_retry.call(
            c.create_logged_model, experiment_id, name=SERVED_MODEL, source_run_id=run_id
        )
        with tempfile.TemporaryDirectory(prefix="dynconv-code-") as tmp:
            saved = Path(tmp) / SERVED_MODEL
            mlflow.pytorch.save_model(
                served,
                str(saved),
                code_paths=[_package_copy(Path(tmp))],
                signature=served_pyfunc.signature(),
                input_example=example,
                metadata=metadata,
                pip_requirements=_requirements(),
                serialization_format="pickle",
            )
            _answer_through_pyfunc_face(saved)
            tracking_retry.call(c.log_model_artifacts, logged.model_id, str(saved))
        tracking_retry.call(c.finalize_logged_model, logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"


def _requirements() -> list[str]:
    """What a fresh environment needs to load and serve the model: mlflow's pytorch defaults (torch,
    cloudpickle; MLflow adds itself) and Pillow, which decodes encoded images."""
    import mlflow.pytorch
    import PIL

    return [*mlflow.pytorch.get_default_pip_requirements(), f"pillow=={PIL.__version__}"]


def _example(served: ServedClassifier, image_size: int):
    """(input example, number of classes) of a served model: one RGB image in [0, 1], what both faces
    take (the torch module as `x`, the pyfunc face as pixels)."""
    import torch

    example = torch.rand((1, 3, image_size, image_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        num_classes = int(served(example).shape[1])
    return example.numpy(), num_classes


def _served_metadata(metadata: dict[str, Any], image_size: int, num_classes: int) -> dict[str, Any]:
    """The caller's metadata with the training `image_size`; its `class_names`, when given, checked to
    name each of the model's classes once."""
    names = metadata.get("class_names")
    if names is not None and (len(names) != num_classes or len(set(map(str, names))) != len(names)):
        raise DynconvError(
            f"class_names {list(names)[:5]}... names {len(names)} classes, the model scores {num_classes}: "
            "give one distinct name per class, in label order"
        )
    return {**metadata, "image_size": int(image_size)}


def _answer_through_pyfunc_face(saved: Path) -> None:
    """Point the `python_function` flavor of the model saved at `saved` at `served_pyfunc`, which answers
    requests naming their channels; the `pytorch` flavor, which `mlflow.pytorch.load_model` reads, stays
    as `mlflow.pytorch.save_model` wrote it."""
    from mlflow.models import Model

    from dynconv.tracking.served_pyfunc import LOADER_MODULE

    mlmodel = Model.load(str(saved / "MLmodel"))
    mlmodel.flavors["python_function"]["loader_module"] = LOADER_MODULE
    mlmodel.save(str(saved / "MLmodel"))


def _package_copy(root: Path) -> str:
    """`root/dynconv`: a copy of the files of `CODE_COPY`, the package a served model loads with."""
    target = root / "dynconv"
    target.mkdir()
    for name in CODE_COPY:
        source = PACKAGE / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return str(target)


def served_model_of_run(uri: str, run_id: str) -> str | None:
    """The URI of the served model already logged into run `run_id` (a resumed study logs it once), or
    None."""
    with _store_calls(uri, f"looking up the served model of run {run_id}"):
        c = client(uri)
        experiment_id = tracking_retry.call(c.get_run, run_id).info.experiment_id
        found = tracking_retry.call(
            c.search_logged_models, [experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
    ready = [m for m in found if m.name == SERVED_MODEL and str(m.status).endswith("READY")]
    return f"models:/{ready[0].model_id}" if ready else None


class _NotPt2Advice(logging.Filter):
    """Pickle is chosen on purpose (module doc): MLflow's warning that recommends `pt2` is not for us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


logging.getLogger("mlflow.pytorch").addFilter(_NotPt2Advice())


def register_champion(
    uri: str,
    name: str,
    model_uri: str,
    *,
    study: str,
    source_run_id: str,
    alias: str,
    score: float,
    test_set_id: str,
) -> RegistryOutcome:
    """Register `model_uri` as a version of registered model `name` (study `study`'s) and move `alias`
    to it when it earns it (module doc); one version per `source_run_id`, reused when called again.

    `score` is the ranked metric's mean, oriented so that higher is better; `test_set_id` says what it
    was measured on (scores on different test sets do not compare).
    """
    if alias not in REGISTRY_ALIASES:
        raise DynconvError(f"alias {alias!r}: a study moves only {' or '.join(REGISTRY_ALIASES)}")
    if not math.isfinite(score):
        raise DynconvError(f"registered model {name!r}: score {score} is not a finite number")
    if "'" in name:
        raise DynconvError(f"registered model name {name!r}: quotes are not allowed")
    with _store_calls(uri, f"registering {alias} of {name!r}"):
        c = client(uri)
        aliases = _own_registered_model(c, name, study).aliases
        tags = {TAG_STUDY: study, TAG_SOURCE_RUN: source_run_id, TAG_SCORE: repr(float(score))}
        version, reused = _version_for_run(c, name, model_uri, {**tags, TAG_TEST_SET: test_set_id})
        outcome = _place_alias(c, name, alias, version, aliases.get(alias), score, test_set_id)
    if reused:
        return replace(outcome, message=f"reused version {version} (same source run); {outcome.message}")
    return outcome


def _own_registered_model(c: Any, name: str, study: str) -> Any:
    """Registered model `name`, created for `study` when missing; a one-line refusal when it belongs to
    another study or holds versions dynconv did not register for this one."""
    try:
        registered = tracking_retry.call(c.get_registered_model, name)
    except store_errors() as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
        registered = _create_registered_model(c, name, study)
    owner = registered.tags.get(TAG_STUDY)
    if owner != study:
        whose = f"study {owner!r}" if owner else "no dynconv study (no dynconv.study tag)"
        raise DynconvError(
            f"registered model {name!r} belongs to {whose}, not study {study!r}; register under another name"
        )
    foreign = [v.version for v in _versions(c, name) if v.tags.get(TAG_STUDY) != study]
    if foreign:
        raise DynconvError(
            f"registered model {name!r} holds versions {', '.join(map(str, foreign))} not registered by "
            f"dynconv for study {study!r}; register under another name"
        )
    return registered


def _create_registered_model(c: Any, name: str, study: str) -> Any:
    """A new registered model tagged with its study (or the one another process just created)."""
    try:
        return tracking_retry.call(
            c.create_registered_model,
            name,
            tags={TAG_STUDY: study},
            description=f"dynconv study {study}: its champion and candidate models",
        )
    except store_errors() as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        return tracking_retry.call(c.get_registered_model, name)


def _versions(c: Any, name: str) -> list[Any]:
    """Every version of registered model `name`, oldest first."""
    found = tracking_retry.call(c.search_model_versions, f"name = '{name}'")
    return sorted((v for v in found if v.name == name), key=lambda v: int(v.version))


def _version_for_run(c: Any, name: str, model_uri: str, tags: dict[str, str]) -> tuple[str, bool]:
    """(version, reused): the version registered from `tags`' source run, else a new one of
    `model_uri`. A reused version's score and test set tags are brought up to the ones given."""
    run_id = tags[TAG_SOURCE_RUN]
    same_run = [v for v in _versions(c, name) if v.tags.get(TAG_SOURCE_RUN) == run_id]
    if same_run:
        version = same_run[0]
        for key in (TAG_SCORE, TAG_TEST_SET):
            if version.tags.get(key) != tags[key]:
                tracking_retry.call(c.set_model_version_tag, name, version.version, key, tags[key])
        return str(version.version), True
    model_id = _logged_model_id(model_uri)
    # The logged model's artifact location, not its `models:/<id>` URI: MLflow's sqlite registry
    # resolves that URI through its process-wide tracking URI, not through this client's.
    source = tracking_retry.call(c.get_logged_model, model_id).artifact_location if model_id else model_uri
    from dynconv.tracking.served_pyfunc import usage

    description = usage(name) if model_id else None
    created = tracking_retry.call(
        c.create_model_version,
        name,
        source,
        run_id=run_id,
        tags=tags,
        description=description,
        model_id=model_id,
    )
    return str(created.version), False


def _logged_model_id(model_uri: str) -> str | None:
    """The logged model id of a `models:/<model id>` URI (what `log_served_model` returns), else None."""
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and "/" not in rest and "@" not in rest else None


def _place_alias(
    c: Any, name: str, alias: str, version: str, holder: Any, score: float, test_set_id: str
) -> RegistryOutcome:
    """Move `alias` to `version` unless its `holder` (a version number, or None) keeps it (module doc)."""
    what = f"registered model {name!r}"
    if holder is not None and str(holder) == version:
        return RegistryOutcome(version, alias, False, f"version {version} of {what} already holds {alias}")
    if holder is None:
        why = "no version held it"
    else:
        held = tracking_retry.call(c.get_model_version, name, str(holder))
        held_score, held_set = _score(held), held.tags.get(TAG_TEST_SET)
        if held_set != test_set_id:
            why = (
                f"version {holder} held it, scored on test set {held_set}, this one on {test_set_id}: "
                "scores on different test sets do not compare"
            )
        elif held_score is None or score > held_score:
            why = f"its score {score:.6g} beats version {holder}'s {_shown(held_score)}"
        else:
            return RegistryOutcome(
                version,
                alias,
                False,
                f"version {holder} of {what} keeps {alias}: its score {held_score:.6g} is not beaten by "
                f"version {version}'s {score:.6g}",
            )
    tracking_retry.call(c.set_registered_model_alias, name, alias, version)
    return RegistryOutcome(version, alias, True, f"version {version} of {what} is now {alias}: {why}")


def _score(version: Any) -> float | None:
    """A version's `dynconv.score` tag as a number (None: missing or not a finite number)."""
    try:
        value = float(version.tags.get(TAG_SCORE, "nan"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _shown(score: float | None) -> str:
    return "no score" if score is None else f"{score:.6g}"


def study_versions(uri: str, name: str, study: str) -> list[RegisteredVersion]:
    """The versions of registered model `name` that dynconv registered for `study`, oldest first (none
    when there is no such model): what a later confirmation of the study reuses, one per configuration.
    A failed store call is one `DynconvError` line."""
    if "'" in name:
        return []  # no such name: `register_champion` refuses quotes
    with _store_calls(uri, f"reading the versions of registered model {name!r}"):
        found = [v for v in _versions(client(uri), name) if v.tags.get(TAG_STUDY) == study]
    return [
        RegisteredVersion(str(v.version), v.tags.get(TAG_SOURCE_RUN) or v.run_id, dict(v.tags)) for v in found
    ]


def registered_version(uri: str, model_ref: str) -> RegisteredVersion:
    """The version `models:/<name>@<alias>` or `models:/<name>/<version>` names, with the run it was
    registered from (its `dynconv.source_run_id` tag, else MLflow's run id); one-line errors."""
    version = _model_version(uri, model_ref)
    source_run = version.tags.get(TAG_SOURCE_RUN) or version.run_id
    if not source_run:
        raise DynconvError(f"{model_ref} (version {version.version}) records no source run")
    return RegisteredVersion(str(version.version), source_run, dict(version.tags))


def download_served_model(uri: str, model_ref: str, dst: Path) -> Path:
    """The MLflow model of the registered version `model_ref` names (`registered_version`'s forms),
    downloaded into the folder `dst` through the study's store (`dynconv predict` loads it from there
    with `served_pyfunc.load_predictor`); one-line errors."""
    import mlflow.artifacts

    version = _model_version(uri, model_ref)
    with _store_calls(uri, f"downloading {model_ref} (version {version.version})"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(dst), tracking_uri=uri
        )
    if not (Path(local) / "MLmodel").is_file():
        raise DynconvError(
            f"{model_ref} (version {version.version}) holds no MLflow model at {version.source}"
        )
    return Path(local)


def _model_version(uri: str, model_ref: str) -> Any:
    """MLflow's model version `model_ref` names, or a one-line error saying it names none."""
    match = _MODEL_REF.match(model_ref)
    if match is None:
        raise DynconvError(
            f"{model_ref!r} is no registered model: use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    name, alias, number = match["name"], match["alias"], match["version"]
    with _store_calls(uri, f"reading {model_ref}"):
        c = client(uri)
        try:
            if alias is not None:
                return tracking_retry.call(c.get_model_version_by_alias, name, alias)
            return tracking_retry.call(c.get_model_version, name, number)
        except store_errors() as exc:
            if getattr(exc, "error_code", None) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise DynconvError(
                f"{model_ref}: no such registered model version ({one_line(exc, 200)})"
            ) from None


@contextlib.contextmanager
def _store_calls(uri: str, what: str) -> Iterator[None]:
    """Turn a failed store call in the block into one `DynconvError` line saying what failed, and
    whether the store has no model registry at all."""
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        yield
    except store_errors() as exc:
        reason = masked(one_line(exc, 200))
        if isinstance(exc, Fault):  # a full disk, a gone store: the fault's own line says it
            raise
        if getattr(exc, "error_code", None) in NO_REGISTRY or isinstance(
            exc, UnsupportedModelRegistryStoreURIException
        ):
            raise DynconvError(
                f"{what}: the MLflow store {masked(uri)} has no model registry ({reason})"
            ) from None
        raise DynconvError(f"{what}: the MLflow store {masked(uri)} refused ({reason})") from None
