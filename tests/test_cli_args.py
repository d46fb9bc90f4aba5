"""Every CLI argument validated (issue 15 item 8): bad values end in exit code 2 and one line on stderr.

The table runs `dynconv.cli.main` in-process (argparse rejects the value before any handler runs, so
each case costs milliseconds); two cases also go through a real `dynconv` process. Unexpected
exceptions end in one line plus the path of a log file holding the traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dynconv import cli

RUN_ID = "0123456789abcdef0123456789abcdef"

# (argv, a piece of the one-line message); {spec}, {file}, {missing} are filled in per test.
BAD_ARGS: list[tuple[list[str], str]] = [
    ([], "required: COMMAND"),
    (["nope"], "invalid choice"),
    (["flops", "--image-size", "0"], "between 8 and 256, got 0"),
    (["flops", "--image-size", "-3"], "between 8 and 256, got -3"),
    (["flops", "--image-size", "100000"], "between 8 and 256, got 100000"),
    (["flops", "--image-size", "abc"], "expected an integer, got 'abc'"),
    (["flops", "--image-size", "8.5"], "expected an integer, got '8.5'"),
    (["flops", "--num-classes", "0"], "between 1 and 100000, got 0"),
    (["flops", "--num-classes", "10**9"], "expected an integer"),
    (["flops", "--bogus"], "unrecognized arguments: --bogus"),
    (["data"], "required: DATA_COMMAND"),
    (["data", "prepare", "{missing}"], "does not exist (expected a directory)"),
    (["data", "prepare", "{file}"], "is a file (expected a directory)"),
    (["data", "prepare", "{dir}", "--size", "0"], "between 8 and 1024, got 0"),
    (["data", "prepare", "{dir}", "--size", "99999"], "between 8 and 1024"),
    (["data", "prepare", "{dir}", "--workers", "0"], "between 1 and 512, got 0"),
    (["data", "prepare", "{dir}", "--workers", "many"], "expected an integer"),
    (["data", "prepare", "{dir}", "--cache-dir", "{file}"], "exists and is not a directory"),
    (["data", "synth", "{file}"], "exists and is not a directory"),
    (["data", "synth", "{missing}", "--classes", "1"], "between 2 and"),
    (["data", "synth", "{missing}", "--classes", "1000"], "between 2 and"),
    (["data", "synth", "{missing}", "--per-class", "-1"], "between 3 and 10000"),
    (["data", "synth", "{missing}", "--size", "8"], "between 16 and 1024, got 8"),
    (["data", "synth", "{missing}", "--seed", "-1"], "between 0 and 4294967295"),
    (["data", "synth", "{missing}", "--seed", "x"], "expected an integer"),
    (["tune", "{missing}"], "does not exist (expected a file)"),
    (["tune", "{dir}"], "is a directory (expected a file)"),
    (["tune", "{spec}", "--num-samples", "0"], "between 1 and 100000, got 0"),
    (["tune", "{spec}", "--num-samples", "ten"], "expected an integer"),
    (["tune", "{spec}", "--set", "train.lr"], "expected KEY=VALUE"),
    (["tune", "{spec}", "--set", "=3"], "expected KEY=VALUE"),
    (["tune", "{spec}", "--set", "train..lr=3"], "expected KEY=VALUE"),
    (["tune", "{spec}", "--resume", "latest"], "expected an MLflow run id"),
    (["tune", "{spec}", "--address", ""], "must not be empty"),
    (["ui", "--port", "0"], "between 1 and 65535, got 0"),
    (["ui", "--port", "70000"], "between 1 and 65535, got 70000"),
    (["ui", "--port", "http"], "expected an integer"),
    (["ui", "--host", " "], "must not be empty"),
    (["ui", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    (["evaluate"], "required: study"),
    (["evaluate", "s", "--top-k", "0"], "between 1 and 1000, got 0"),
    (["evaluate", "s", "--top-k", "-1"], "between 1 and 1000"),
    (["evaluate", "s", "--subsets", "RGX"], "unknown channel subset 'RGX'"),
    (["evaluate", "s", "--subsets", "RGB,Q"], "unknown channel subset 'Q'"),
    (["evaluate", "s", "--subsets", ""], "unknown channel subset ''"),
    (["evaluate", "s", "--split", "holdout"], "invalid choice: 'holdout'"),
    (["evaluate", "s", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["evaluate", "s", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    (["report", "--out", "{file}"], "exists and is not a directory"),
    (["report", "--out", "{file}/sub"], "is not a directory"),
    (["report", "--experiment", ""], "must not be empty"),
    (["report", "--tracking-uri", "ftp://host/x"], "unknown scheme 'ftp'"),
    (["rerun", RUN_ID, "--epochs", "0"], "between 1 and 10000, got 0"),
    (["rerun", RUN_ID, "--epochs", "1e3"], "expected an integer"),
    (["rerun", RUN_ID, "--device", "tpu"], "invalid choice: 'tpu'"),
    (["rerun", ""], "must not be empty"),
    (["confirm"], "required: study"),
    (["confirm", "s", "--seeds", "1"], "between 2 and 100, got 1"),
    (["confirm", "s", "--top-k", "0"], "between 1 and 100, got 0"),
    (["confirm", "s", "--seeds", "three"], "expected an integer"),
    (["confirm", "s", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    (["tune", "{spec}", "--warm-start", ""], "must not be empty"),
]


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text("study: s\n")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    return {"spec": str(spec), "file": str(a_file), "dir": str(tmp_path), "missing": str(tmp_path / "nope")}


def _assert_one_line_error(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "expected"), BAD_ARGS, ids=[" ".join(a) or "(none)" for a, _ in BAD_ARGS])
def test_bad_argument_is_one_line_exit_2(argv, expected, paths, capsys) -> None:
    code = cli.main([a.format(**paths) for a in argv])
    out, err = capsys.readouterr()
    _assert_one_line_error(code, err, expected)
    assert out == ""
    assert not Path(paths["missing"]).exists()  # a rejected argument creates nothing


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["flops", "--image-size", "0"], "between 8 and 256"), (["ui", "--port", "70000"], "65535")],
)
def test_bad_argument_in_a_real_process(argv, expected) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dynconv", *argv], capture_output=True, text=True, timeout=120
    )
    _assert_one_line_error(proc.returncode, proc.stderr, expected)


def test_help_exits_0(capsys) -> None:
    assert cli.main(["flops", "--help"]) == 0
    assert "--image-size" in capsys.readouterr().out


def test_unexpected_error_is_one_line_with_a_log(monkeypatch, tmp_path, capsys) -> None:
    def boom(_args) -> None:
        raise RuntimeError("something broke\nover two lines")

    monkeypatch.setenv("DYNCONV_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(cli, "_cmd_flops", boom)
    code = cli.main(["flops"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "RuntimeError: something broke over two lines" in lines[0]
    log = Path(lines[0].rsplit("full traceback: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in boom" in text and "command: " in text
