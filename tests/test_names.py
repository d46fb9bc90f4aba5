"""Unambiguous names (issue 16 item 4): a name matching several study runs is an error listing run ids.

`--resume`, `evaluate NAME` and `rerun NAME` used to take the newest run of that name; run ids always
work; Tune directories of two studies started in the same second differ. One sqlite store for the
module (~10 s).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dynconv import cli
from dynconv.errors import DynconvError
from dynconv.tracking.find import one_study_run
from dynconv.tracking.layout import ensure_experiment, start_study_run
from tests.conftest import tiny_spec_dict


def _fake(run_id: str, name: str = "s-1") -> SimpleNamespace:
    info = SimpleNamespace(run_id=run_id, run_name=name, status="FINISHED", start_time=0)
    return SimpleNamespace(info=info, data=SimpleNamespace(tags={"dynconv.run_name": name}))


def test_one_study_run_rule() -> None:
    a, b = _fake("a" * 32, "s-1"), _fake("b" * 32, "s-2")
    assert one_study_run([a], "s", "pick") is a
    assert one_study_run([a, a], "s", "pick") is a  # one run found by two tags counts once
    with pytest.raises(DynconvError, match=r"'s' matches 2 study runs, pick: a{32} \(s-1, .*; b{32} \(s-2"):
        one_study_run([a, b], "s", "pick")


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory, tiny_dataset) -> dict:
    """Two study runs of study 'twin' (as after two fresh `dynconv tune` of one spec), one of 'solo'."""
    from dynconv.spec import parse_spec
    from dynconv.tune.parent_run import open_parent_run

    tmp = tmp_path_factory.mktemp("names")
    data = tiny_spec_dict(tmp, tiny_dataset, study="twin")
    (tmp / "twin.yaml").write_text(yaml.safe_dump(data))
    spec = parse_spec(data).resolved()
    uri = spec.tracking_uri()
    exp = ensure_experiment(uri, spec.experiment)
    opened = [open_parent_run(spec, uri, exp, resume=False) for _ in range(2)]  # within a second
    for _, _, tune_path in opened:
        Path(tune_path).mkdir(parents=True)
    solo = start_study_run(uri, exp, "solo", {})
    return {"tmp": tmp, "spec": spec, "uri": uri, "exp": exp, "runs": opened, "solo": solo}


def test_two_studies_in_one_second_get_distinct_tune_directories(twin_store) -> None:
    (_, name_a, path_a), (_, name_b, path_b) = twin_store["runs"]
    assert name_a != name_b and path_a != path_b
    assert name_a.startswith("twin-") and name_b.startswith("twin-")


def test_find_study_run_refuses_an_ambiguous_name(twin_store) -> None:
    from dynconv.tracking.find import find_study_run

    uri = twin_store["uri"]
    ids = [r[0] for r in twin_store["runs"]]
    with pytest.raises(DynconvError, match="'twin' matches 2 study runs") as err:
        find_study_run(uri, "twin")
    assert all(i in str(err.value) for i in ids)
    assert find_study_run(uri, ids[1]).info.run_id == ids[1]  # a run id always works
    assert find_study_run(uri, twin_store["runs"][0][1]).info.run_id == ids[0]  # so does the run name
    assert find_study_run(uri, "solo").info.run_id == twin_store["solo"]  # a unique name still works


@pytest.mark.parametrize("command", ["evaluate", "rerun", "confirm"])
def test_cli_lists_the_run_ids(command, twin_store, capsys) -> None:
    code = cli.main([command, "twin", "--tracking-uri", twin_store["uri"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "matches 2 study runs, name one by its run id instead" in err
    assert all(r[0] in err for r in twin_store["runs"])


def test_resume_refuses_an_ambiguous_name_and_takes_a_run_id(twin_store) -> None:
    from dynconv.tune.parent_run import open_parent_run

    spec, uri, exp = twin_store["spec"], twin_store["uri"], twin_store["exp"]
    with pytest.raises(DynconvError, match="matches 2 study runs, choose one with --resume RUN_ID"):
        open_parent_run(spec, uri, exp, resume=True)
    parent, run_name, tune_path = twin_store["runs"][0]
    assert open_parent_run(spec, uri, exp, resume=parent) == (parent, run_name, tune_path)
    with pytest.raises(DynconvError, match="no earlier study named 'twin' with run id"):
        open_parent_run(spec, uri, exp, resume=twin_store["solo"])


def test_cli_resume_of_an_ambiguous_name_fails_before_the_data_cache(twin_store, capsys) -> None:
    code = cli.main(["tune", str(twin_store["tmp"] / "twin.yaml"), "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "matches 2 study runs, choose one with --resume RUN_ID" in err
    assert not (twin_store["tmp"] / "cache").exists()
