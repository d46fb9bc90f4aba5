"""Which study fills which column of the seed's tables: `Role`s, the seed's own numbers, `pick_roles`.

By the study spec's `model.name` and `model.args.stem` (`models.resnet.DEFAULT_STEM` when unset), the
most recently started study of each kind (never the best on the test set: choosing by test accuracy
would bias the comparison).
Plain data; imports nothing from dynconv but the record type (for annotations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynconv.report.records import EvalRecord

TARGET_RATIO = 0.90  # the seed's Part II goal: reach 90 % of ResNet-34's accuracy

# The seed's reported numbers (percent; FLOPs as printed), shown beside ours for reference.
SEED_TABLE1 = {
    "accuracy": (54.22, 53.56, 52.00, 54.22, 50.00, 52.67, 52.00),
    "precision": (56.11, 53.97, 52.44, 56.55, 51.50, 54.41, 54.26),
    "recall": (54.22, 53.56, 52.00, 54.22, 50.00, 52.67, 52.00),
    "f1": (53.69, 52.56, 50.86, 54.08, 48.99, 51.93, 51.44),
}
SEED_TABLE2 = {"dynamic": (54.22, 926_579_712), "plain": (38.44, 296_456_064)}
SEED_TABLE3 = {"simple_cnn": (46.89, 7_697_151_972), "resnet34": (55.11, 612_876_800)}


@dataclass(frozen=True)
class Role:
    """A kind of study the tables need: which model and stem, and which spec produces it."""

    key: str
    title: str
    model: str
    stem: str | None
    spec_file: str


ROLES: dict[str, Role] = {
    r.key: r
    for r in (
        Role(
            "dyn_imagenet",
            "ResNet-18 + DynamicConv2D (ImageNet stem)",
            "resnet18_dynamic",
            "imagenet",
            "tune_jobs/resnet18_dynamic.yaml",
        ),
        Role(
            "plain_imagenet", "ResNet-18 (ImageNet stem)", "resnet18", "imagenet", "tune_jobs/resnet18.yaml"
        ),
        Role(
            "dyn_small",
            "ResNet-18 + DynamicConv2D (small stem)",
            "resnet18_dynamic",
            "small",
            "tune_jobs/resnet18_dynamic_small.yaml",
        ),
        Role("plain_small", "ResNet-18 (small stem)", "resnet18", "small", "tune_jobs/resnet18_small.yaml"),
        Role(
            "dyn_seed",
            "ResNet-18 + DynamicConv2D (seed stem, 7x7 stride 1)",
            "resnet18_dynamic",
            "seed",
            "a spec with model resnet18_dynamic, args {stem: seed}",
        ),
        Role(
            "plain_seed",
            "ResNet-18 (seed stem, 7x7 stride 1)",
            "resnet18",
            "seed",
            "a spec with model resnet18, args {stem: seed}",
        ),
        Role(
            "simple_cnn",
            "5-layer CNN",
            "simple_cnn",
            None,
            "a spec with model simple_cnn (e.g. tune_jobs/simple_cnn.yaml)",
        ),
        Role("resnet34", "ResNet-34", "resnet34", None, "tune_jobs/resnet34.yaml"),
    )
}
TABLE1_PREFERENCE = ("dyn_imagenet", "dyn_seed", "dyn_small")
TABLE2_COLUMNS = ("dyn_imagenet", "plain_imagenet", "dyn_small", "plain_small", "dyn_seed", "plain_seed")
TABLE2_OPTIONAL = ("dyn_seed", "plain_seed")  # shown only when run
TABLE2_PAIRS = (
    ("DynamicConv2D, same ImageNet stem", "dyn_imagenet", "plain_imagenet"),
    ("DynamicConv2D, same small stem (ablation)", "dyn_small", "plain_small"),
    ("DynamicConv2D, same seed stem", "dyn_seed", "plain_seed"),
    ("Stem (small vs ImageNet), dynamic conv", "dyn_small", "dyn_imagenet"),
    ("Stem (small vs ImageNet), plain conv", "plain_small", "plain_imagenet"),
    ("The seed's comparison: stem and conv changed together", "dyn_seed", "plain_imagenet"),
)


def role_of(record: EvalRecord) -> str | None:
    """Which table column a record fills (None: shown only in the overview and the Pareto plot)."""
    for role in ROLES.values():
        if record.model == role.model and (role.stem is None or record.stem == role.stem):
            return role.key
    return None


def pick_roles(records: Sequence[EvalRecord]) -> dict[str, EvalRecord]:
    """The newest study of each kind (records arrive newest first)."""
    chosen: dict[str, EvalRecord] = {}
    for rec in records:
        key = role_of(rec)
        if key is not None and key not in chosen:
            chosen[key] = rec
    return chosen
