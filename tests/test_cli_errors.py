"""No tracebacks, no side effects from read-only commands (issue 16 item 3).

Each bad input of the issue's audit that used to end in a traceback, create files or hang is run
through `dynconv.cli.main` (in-process) and must end in one line on stderr with exit code 2, leaving
nothing behind. ~15 s in all (one MLflow sqlite store is created for the temp-dir check).
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from dynconv import cli
from dynconv.data.sources import DataError, load_source
from tests.conftest import tiny_spec_dict


def _one_line(capsys, code: int, expected: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def spec_file(tmp_path: Path, tiny_dataset: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path, tiny_dataset)))
    return path


def test_non_utf8_spec(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"study: x\n\xff\xfe: 1\n")
    _one_line(capsys, cli.main(["tune", str(bad)]), "bad.yaml: not UTF-8 text")


def test_set_with_broken_yaml_value(spec_file, capsys) -> None:
    code = cli.main(["tune", str(spec_file), "--set", "train.lr=[0.1"])
    _one_line(capsys, code, "--set 'train.lr=[0.1': the value is not valid YAML")


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["train.lr=.inf"], "tiny.yaml: train.lr: Input should be a finite number"),
        (["train.epochs=1000000000"], "tiny.yaml: train.epochs: Input should be less than or equal to 10000"),
        (["train.lr=0.01"], "tiny.yaml: train.lr=0.01 is set but search.space.lr searches it"),
    ],
    ids=["non-finite", "beyond a bound", "searched and set"],
)
def test_bad_spec_values_fail_before_the_cache_is_built(spec_file, tmp_path, capsys, sets, expected) -> None:
    code = cli.main(["tune", str(spec_file), *(a for s in sets for a in ("--set", s))])
    _one_line(capsys, code, expected)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ray_results").exists()


def test_repeated_key_in_a_spec_file(spec_file, capsys) -> None:
    text = spec_file.read_text()
    spec_file.write_text(text + "study: renamed\n")
    line = len(text.splitlines()) + 1
    code = cli.main(["tune", str(spec_file)])
    _one_line(capsys, code, f"tiny.yaml: line {line}: duplicate key study (first on line ")


def test_unknown_tracking_scheme_fails_before_the_cache_is_built(spec_file, tmp_path, capsys) -> None:
    code = cli.main(["tune", str(spec_file), "--set", "mlflow.tracking_uri=bogus://x"])
    _one_line(capsys, code, "unknown scheme 'bogus'")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(
    "command", [["evaluate", "tiny"], ["rerun", "tiny"], ["confirm", "tiny"], ["report"]]
)
def test_read_only_commands_never_create_a_store(command, tmp_path, monkeypatch, capsys) -> None:
    db = tmp_path / "no" / "such" / "mlflow.db"
    code = cli.main([*command, "--tracking-uri", f"sqlite:///{db}"])
    _one_line(capsys, code, f"no MLflow store at {db}")
    assert not (tmp_path / "no").exists()
    monkeypatch.chdir(tmp_path)  # the default store ./mlflow.db, missing
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _one_line(capsys, cli.main(command), "no MLflow store at")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_report_out_naming_a_file(tmp_path, capsys) -> None:
    existing = tmp_path / "report.md"
    existing.write_text("keep me")
    _one_line(capsys, cli.main(["report", "--out", str(existing)]), "exists and is not a directory")
    assert existing.read_text() == "keep me"


def test_down_tracking_server_fails_fast(capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code = cli.main(["evaluate", "tiny", "--tracking-uri", f"http://127.0.0.1:{port}"])
    _one_line(capsys, code, "is unreachable")
    assert time.perf_counter() - t0 < 15


def test_ui_port_out_of_range(capsys) -> None:
    _one_line(capsys, cli.main(["ui", "--port", "70000"]), "between 1 and 65535")


def _txt_dataset(root: Path, test_lines: str) -> Path:
    root.mkdir()
    (root / "train.txt").write_text("a/1.jpg 0\nb/2.jpg 1\n")
    (root / "val.txt").write_text("a/3.jpg 0\n")
    (root / "test.txt").write_text(test_lines)
    return root


def test_label_out_of_range_names_the_test_line(tmp_path) -> None:
    root = _txt_dataset(tmp_path / "ds", "a/4.jpg 0\nb/5.jpg 2\n")
    expected = r"test\.txt:2: label 2 is out of range \(the train split has labels 0\.\.1\)"
    with pytest.raises(DataError, match=expected):
        load_source(root)


def test_symlink_out_of_the_root_is_refused(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    root = _txt_dataset(tmp_path / "ds", "a/4.jpg 0\nlinks/leak.jpg 1\n")
    (root / "links").mkdir()
    (root / "links" / "leak.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(
        DataError, match=r"test\.txt:2: links/leak\.jpg resolves to .*outside the dataset root"
    ):
        load_source(root)
    (root / "links" / "leak.jpg").unlink()
    (root / "links").rmdir()
    (root / "links").symlink_to(outside)  # a linked directory is caught too
    with pytest.raises(DataError, match="outside the dataset root"):
        load_source(root)
    (root / "links").unlink()
    (root / "links").mkdir()
    (root / "links" / "leak.jpg").symlink_to(root / "a" / "1.jpg")  # a link inside the root is fine
    assert len(load_source(root).splits["test"]) == 2


def test_no_temp_directory_outlives_a_study_run(tmp_path, tiny_dataset, monkeypatch) -> None:
    from dynconv.spec import parse_spec
    from dynconv.tracking.layout import ensure_experiment
    from dynconv.tracking.store import client
    from dynconv.tune.parent_run import open_parent_run

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    spec = parse_spec(tiny_spec_dict(tmp_path, tiny_dataset)).resolved()
    uri = spec.tracking_uri()
    exp = ensure_experiment(uri, spec.experiment)
    parent, _, _ = open_parent_run(spec, uri, exp, resume=False)
    assert [a.path for a in client(uri).list_artifacts(parent)] == ["spec.yaml"]
    assert list((tmp_path / "tmp").glob("dynconv_spec_*")) == []


@pytest.mark.parametrize("skip_bad", [False, True], ids=["one line", "--skip-bad counts it"])
def test_a_symlink_loop_in_the_data_is_an_unreadable_image(tiny_dataset, tmp_path, capsys, skip_bad) -> None:
    """`ln -s x x` listed as an image (and a loop that is not listed, in the root and a class folder):
    Python's `resolve` raised RuntimeError in the root check; now it is an unreadable image like any."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns(".dynconv_cache"))
    listed = (root / "train.txt").read_text().split()[0]
    (root / listed).unlink()
    (root / listed).symlink_to((root / listed).name)
    (root / "loop").symlink_to("loop")
    (root / listed).parent.joinpath("loop").symlink_to("loop")
    args = ["data", "prepare", str(root), "--size", "16", "--workers", "1"] + ["--skip-bad"] * skip_bad
    code = cli.main(args)
    if not skip_bad:  # stderr also holds the decoding progress bar
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert f"cannot read image {root / listed} (train.txt:1): a symlink loop" in err.splitlines()[-1]
    else:
        assert code == 0
        assert f"skipped {listed}: a symlink loop" in capsys.readouterr().out


def test_a_spec_path_that_is_a_symlink_loop_is_one_line(spec_file, tmp_path, capsys) -> None:
    (tmp_path / "loop").symlink_to("loop")
    code = cli.main(["tune", str(spec_file), "--set", f"data.root={tmp_path / 'loop'}"])
    _one_line(capsys, code, f"data.root: {tmp_path / 'loop'} is a symlink loop")
