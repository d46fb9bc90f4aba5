"""The confirmed champion into MLflow's Model Registry: the configuration's representative seed run (the
one closest to its mean) is logged as an MLflow model that needs nothing of dynconv to load
(`dynconv.models.served.ServedClassifier`: [0, 1] images, any 1-3 channel slots) and registered under
the study's name, `@champion` on a significant verdict and `@candidate` otherwise
(`dynconv.tracking.registry` places the alias: a later study moves it only by beating the holder on the
same test set).
"""

from __future__ import annotations

from typing import Any

from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.evaluation.model import served_from_checkpoint
from dynconv.spec import JobSpec
from dynconv.tracking.artifacts import load_checkpoint
from dynconv.tracking.find import get_run
from dynconv.tracking.layout import TAG_TEST_SET
from dynconv.tracking.registry import log_served_model, register_champion, served_model_of_run
from dynconv.tune.champion import Verdict


def model_metadata(
    spec: JobSpec, verdict: Verdict, test_set: str, class_names: list[str] | None = None
) -> dict[str, Any]:
    """What a user of the registered model needs to feed it, read its answers and know how good it is."""
    c = verdict.champion
    score = c.score()
    return {
        "study": spec.study,
        "model": spec.model.name,
        "model_args": dict(spec.model.args),
        "input": "float32 (N, C, H, W) in [0, 1], C = 1..3; forward(x, channels=[slots]) names the slots",
        "channel_slots": {"R": 0, "G": 1, "B": 2},
        "default_channels": "the first C slots (R; R, G; R, G, B)",
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "applied_by_model": True},
        "image_size": spec.data.image_size,
        "ranked_metric": verdict.metric,
        "confirmed": {"mean": score.mean, "low": score.low, "high": score.high, "seeds": score.n},
        "test_accuracy": dict(c.representative().test_acc),  # this model's own, per subset
        "confirmed_test_accuracy": {s: c.test(s)._asdict() for s in c.subsets()},  # over the seeds
        "test_set": test_set,
        "verdict": verdict.one_line(),
        **({"class_names": list(class_names)} if class_names else {}),
    }


def register_champion_run(
    uri: str, spec: JobSpec, verdict: Verdict, class_names: list[str] | None = None
) -> str:
    """Log and register the champion (its answers naming `class_names`, the dataset's classes); its
    one line (the version, the alias and whether it moved)."""
    run_id = verdict.champion.representative().run_id
    test_set = get_run(uri, run_id).data.tags.get(TAG_TEST_SET, "")
    model_uri = served_model_of_run(uri, run_id)
    if model_uri is None:
        served = served_from_checkpoint(load_checkpoint(uri, run_id), run_id)
        metadata = model_metadata(spec, verdict, test_set, class_names)
        model_uri = log_served_model(uri, run_id, served, image_size=spec.data.image_size, metadata=metadata)
    outcome = register_champion(
        uri,
        spec.study,
        model_uri,
        study=spec.study,
        source_run_id=run_id,
        alias=verdict.alias,
        score=verdict.oriented_score(),
        test_set_id=test_set,
    )
    return f"registry: {outcome.message}"
