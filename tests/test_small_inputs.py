"""Issue 28 item 6, "the small ones": inputs that went through silently or with a misleading word, each
now one line (or a counted skip, or correct output). The rows of docs/reliability.md's "Issue 28: small
inputs" name these tests."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageFile
from torch import nn

from dynconv.cli import main
from dynconv.data.cache import prepare
from dynconv.data.sources import DataError, load_source
from dynconv.errors import DynconvError
from dynconv.spec import DataSpec, parse_spec
from tests.conftest import tiny_spec_dict


def _image(path: Path, size: tuple[int, int] = (12, 10), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path, fmt)


def _dataset(root: Path, lists: dict[str, str] | None = None, encoding: str = "utf-8") -> Path:
    """2 classes, 2 train / 1 val / 1 test images of 12x10 px; `lists` overrides some split lists."""
    for cls in ("a", "b"):
        for i in range(2):
            _image(root / "images" / cls / f"{i}.png")
    texts = {
        "train": "images/a/0.png 0\nimages/b/0.png 1\n",
        "val": "images/a/1.png 0\n",
        "test": "images/b/1.png 1\n",
        **(lists or {}),
    }
    for split, text in texts.items():
        (root / f"{split}.txt").write_text(text, encoding=encoding)
    return root


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The one `dynconv: error:` line of the CLI's stderr (which also holds the decoding progress bar,
    redrawn with carriage returns), with no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("dynconv")]
    assert len(lines) == 1 and lines[0].startswith("dynconv: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ 1. labels: ASCII digits only


@pytest.mark.parametrize(
    "label",
    ["0_2", "+1", "\u0661", "\uff11", "1.0"],
    ids=["underscore", "plus", "arabic-indic", "fullwidth", "float"],
)
def test_a_label_not_in_ascii_digits_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, label: str
) -> None:
    """`int()` read `0_2` as 2, `+1` and `١` (Arabic-Indic one) and `１` (fullwidth one) as 1."""
    root = _dataset(tmp_path, {"train": f"images/a/0.png 0\nimages/b/0.png {label}\n"})
    assert main(["data", "prepare", str(root), "--size", "8", "--workers", "1"]) == 2
    line = _one_error_line(capsys)
    assert f"{root}/train.txt:2: label {label!r} is not an integer: labels are written in digits 0-9" in line
    assert not (root / ".dynconv_cache").exists()


# ----------------------------------------------------------------- 2. a byte-order mark is dropped


def test_a_byte_order_mark_at_the_head_of_a_list_is_ignored(tmp_path: Path) -> None:
    """A list saved "UTF-8 with BOM" (Notepad) made its first image `\\ufeffimages/a/0.png`: not found."""
    root = _dataset(tmp_path, encoding="utf-8-sig")
    (root / "classes.txt").write_text("ant\nbee\n", encoding="utf-8-sig")
    source = load_source(root)
    assert [e.rel for e in source.splits["train"]] == ["images/a/0.png", "images/b/0.png"]
    assert source.class_names == ["ant", "bee"]
    data = prepare(root, size=8, workers=1, progress=False)
    assert data.manifest()["splits"]["train"]["count"] == 2


# -------------------------------------------------------------------------- 3. the pixel budget


def _with_big_image(root: Path, size: tuple[int, int] = (40, 30), fmt: str | None = None) -> Path:
    """The dataset with a third training image, `images/a/big.png` of `size` (1200 px by default)."""
    _dataset(root, {"train": "images/a/0.png 0\nimages/b/0.png 1\nimages/a/big.png 0\n"})
    _image(root / "images" / "a" / "big.png", size, fmt)
    return root


def test_an_image_above_the_pixel_budget_is_one_line_and_never_decoded(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _with_big_image(tmp_path)
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self):  # decoding happens in this process with --workers 1
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    argv = ["data", "prepare", str(root), "--size", "8", "--workers", "1", "--max-pixels", "1000"]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"dynconv: error: cannot read image {root}/images/a/big.png (train.txt:3): ")
    assert "too large to decode: 40x30 (1200 pixels) would take about 12.0 kB of memory" in line
    assert "above the budget of 1000 pixels (data.max_pixels, or --max-pixels)" in line
    assert (40, 30) not in loaded and (12, 10) in loaded


def test_an_image_above_the_budget_is_a_counted_skip_with_skip_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _with_big_image(tmp_path)
    argv = [
        "data",
        "prepare",
        str(root),
        "--size",
        "8",
        "--workers",
        "1",
        "--max-pixels",
        "1000",
        "--skip-bad",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "  skipped images/a/big.png: too large to decode: 40x30 (1200 pixels)" in out
    manifest = json.loads((root / ".dynconv_cache" / "size8" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 2 and manifest["splits"]["train"]["skipped"] == 1
    assert manifest["max_pixels"] == 1000


def test_the_pixel_budget_flows_from_the_spec_and_defaults_there(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`data.max_pixels` reaches the decoder through `prepare_for_spec`; its one default (the spec's)
    is what `data prepare` uses without `--max-pixels`, and what its help says."""
    from dynconv.spec.data import prepare_for_spec

    root = _with_big_image(tmp_path / "data")
    spec = parse_spec(tiny_spec_dict(tmp_path, root, data={"max_pixels": 1000}))
    with pytest.raises(DataError, match=r"big\.png \(train\.txt:3\): too large to decode: 40x30"):
        prepare_for_spec(spec, progress=False)
    with pytest.raises(DynconvError, match=r"data\.max_pixels: Input should be greater than or equal to 1"):
        parse_spec(tiny_spec_dict(tmp_path, root, data={"max_pixels": 0}))

    default = DataSpec().max_pixels
    assert default == 50_000_000
    assert main(["data", "prepare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: the spec's data.max_pixels default, {default})" in text
    assert main(["data", "prepare", str(root), "--size", "8", "--workers", "1"]) == 0  # 1200 px pass
    capsys.readouterr()


def test_a_jpeg_is_held_to_the_budget_at_the_scale_it_is_decoded_at(tmp_path: Path) -> None:
    """A 400x400 JPEG decoded for 8 px is read at 1/8 scale (`Image.draft`): 50x50 = 2500 pixels."""
    root = _with_big_image(tmp_path, size=(400, 400), fmt="JPEG")
    data = prepare(root, size=8, workers=1, progress=False, max_pixels=2500)
    assert data.manifest()["splits"]["train"]["count"] == 3
    with pytest.raises(DataError, match=r"too large to decode: 50x50 \(2500 pixels\)"):
        prepare(root, size=8, workers=1, progress=False, max_pixels=2499, cache_dir=tmp_path / "other")


def test_a_cache_that_skipped_images_under_a_smaller_budget_is_rebuilt_under_a_larger_one(
    tmp_path: Path,
) -> None:
    root = _with_big_image(tmp_path)
    small = prepare(root, size=8, workers=1, progress=False, skip_bad=True, max_pixels=1000)
    assert small.manifest()["splits"]["train"]["skipped"] == 1
    again = prepare(root, size=8, workers=1, progress=False, skip_bad=True, max_pixels=1000)
    assert again.manifest()["created"] == small.manifest()["created"]  # reused
    larger = prepare(root, size=8, workers=1, progress=False, skip_bad=True, max_pixels=2000)
    assert larger.manifest()["splits"]["train"]["count"] == 3  # rebuilt: the big image fits now
    smaller = prepare(root, size=8, workers=1, progress=False, max_pixels=1000)
    assert smaller.manifest()["splits"]["train"]["count"] == 3  # decoded already: reused as is


# -------------------------------------------------------------------------- 4. the served model


def _served():
    from dynconv.models.served import ServedClassifier

    plain = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    return ServedClassifier(plain, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()


@pytest.mark.parametrize("channels", [[0.9], [1.0], ["0"], [True]], ids=["0.9", "1.0", "string", "bool"])
def test_the_served_model_refuses_a_slot_that_is_not_an_integer(channels: list) -> None:
    """`channels=[0.9]` was truncated to slot 0 (R) without a word."""
    with pytest.raises(ValueError, match=r"not an integer slot \(0=R, 1=G, 2=B\)") as info:
        _served()(torch.rand(2, 1, 8, 8), channels=channels)
    assert "\n" not in str(info.value)


def test_the_served_model_takes_integer_slots_of_any_integer_type() -> None:
    import numpy as np

    served, x = _served(), torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        want = served(x, channels=[0, 2])
        for channels in (np.array([0, 2]), torch.tensor([0, 2]), (np.int64(0), 2)):
            assert torch.equal(served(x, channels=channels), want)


@pytest.mark.parametrize(
    "scale, low", [(255.0, 0.0), (1.0, -0.5), (float("nan"), 0.0)], ids=["0-255", "negative", "nan"]
)
def test_the_served_model_refuses_values_outside_0_1(scale: float, low: float) -> None:
    """0-255 floats gave confident logits of nothing; values in [0, 1] (ends included) pass."""
    served = _served()
    x = torch.rand(2, 3, 8, 8) * scale + low
    with pytest.raises(
        ValueError, match=r"x holds values outside \[0, 1\] \(min .*, max .*\): .* divided by 255"
    ):
        served(x)
    with torch.no_grad():
        assert served(torch.cat([torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)])).shape == (2, 2)


# ------------------------------------------------------------ 5. rerun of a run in MLflow's trash


def test_rerun_of_a_champion_whose_source_run_is_in_the_trash_says_how_to_restore_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from dynconv.tracking.layout import ensure_experiment
    from dynconv.tracking.registry import register_champion
    from dynconv.tracking.store import client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = ensure_experiment(uri, "trash")
    run_id = client(uri).create_run(experiment_id).info.run_id
    register_champion(
        uri, "S", f"runs:/{run_id}/model", study="S", source_run_id=run_id, alias="champion", score=0.5,
        test_set_id="t",
    )  # fmt: skip
    client(uri).delete_run(run_id)
    assert main(["rerun", "models:/S@champion", "--tracking-uri", uri]) == 2
    line = _one_error_line(capsys)
    assert line == (
        f"dynconv: error: run {run_id} (what models:/S@champion names) is in MLflow's trash (deleted); "
        f"restore it first: MLFLOW_TRACKING_URI={uri} mlflow runs restore --run-id {run_id}"
    )
    client(uri).delete_experiment(experiment_id)  # its runs go to the trash with it
    assert main(["rerun", "models:/S@champion", "--tracking-uri", uri]) == 2
    assert _one_error_line(capsys).endswith(f"mlflow experiments restore --experiment-id {experiment_id}")


# ---------------------------------------------------- 6. nothing to evaluate is not worth a retry


def _study_with_one_trial(tmp_path: Path, dataset: Path, outcome: str, status: str):
    """A study run (spec, store) holding one trial run closed `status` with `dynconv.outcome=outcome`,
    no metric and no checkpoint, as the recorder leaves a trial that diverged in its first epoch."""
    from dynconv.tracking.layout import (
        TAG_OUTCOME,
        end_run,
        ensure_child_run,
        ensure_experiment,
        set_tags,
        start_study_run,
    )

    spec = parse_spec(tiny_spec_dict(tmp_path, dataset))
    uri = spec.tracking_uri()
    experiment_id = ensure_experiment(uri, spec.experiment)
    parent = start_study_run(uri, experiment_id, spec.study, {})
    trial, _ = ensure_child_run(uri, experiment_id, parent, "trial", "t0", "trial-0")
    set_tags(uri, trial, {TAG_OUTCOME: outcome})
    end_run(uri, trial, status)
    from dynconv.tune.study_result import TrialSummary  # the driver's row of it: no value, so unranked

    row = TrialSummary("t0", {}, None, 1, outcome.upper(), trial)
    return spec, SimpleNamespace(tracking_uri=uri, parent_run_id=parent, trials=[row])


def _dynconv_lines(capsys: pytest.CaptureFixture) -> list[str]:
    """dynconv's lines on stderr (MLflow logs its own when it creates a store)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("dynconv")]


def test_a_study_whose_only_trial_diverged_says_why_nothing_is_evaluated_and_suggests_no_retry(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    from dynconv.tune.study_evaluation import evaluate_study

    spec, result = _study_with_one_trial(tmp_path, tiny_dataset, "diverged", "FAILED")
    evaluations, problem = evaluate_study(spec, result)
    assert evaluations == [] and problem is None  # nothing is missing: there was nothing to evaluate
    assert _dynconv_lines(capsys) == [
        "dynconv: evaluation skipped: study 'tiny' has no finished trial with a checkpoint "
        "(1 diverged without checkpoint); nothing to evaluate"
    ]


def test_an_evaluation_that_may_succeed_later_still_suggests_the_retry(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynconv.tune import study_evaluation as evaluation_study

    spec, result = _study_with_one_trial(tmp_path, tiny_dataset, "finished", "FINISHED")

    def unreachable(uri: str, run_id: str):
        raise DynconvError(f"cannot read run {run_id} from {uri} (connection refused)")

    monkeypatch.setattr(evaluation_study, "get_run", unreachable)
    evaluations, problem = evaluation_study.evaluate_study(spec, result)
    assert evaluations == [] and problem is not None and "connection refused" in problem
    [err] = _dynconv_lines(capsys)
    assert err.startswith("dynconv: evaluation skipped: cannot read run ")
    assert err.endswith("(connection refused); retry with: dynconv evaluate tiny")


# ------------------------------------------------------------- 7. a local Ray leaves 8265 alone


@pytest.mark.parametrize("verbose", [False, True])
def test_a_study_starts_its_local_ray_with_the_dashboard_on_a_port_the_os_picks(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool
) -> None:
    """`ray.init(dashboard_port=None)` took 8265 whenever it was free; 0 lets the OS pick a free port
    (checked against a real Ray 2.60: the dashboard and the state API answer on it, 8265 stays free).
    The dashboard is not switched off: Ray Train needs it to release the resources of stopped trials."""
    import ray

    from dynconv.tune import study

    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(address_info={"session_dir": str(tmp_path / "session")}, dashboard_url="")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    spec = parse_spec(tiny_spec_dict(tmp_path, tiny_dataset))
    for address in (None, "local"):
        study._init_ray(spec, address, verbose)
    assert [c["dashboard_port"] for c in calls] == [0, 0]
    assert all(c.get("include_dashboard", True) is not False for c in calls)
