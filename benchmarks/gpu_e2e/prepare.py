"""Prepare the GPU check's wheels on a machine with pip access (run HERE, not on the GPU machine).

The GPU machine (nvidia-h200 image: Python 3.12, torch 2.11, no network) lacks ray, mlflow, optuna,
fvcore, pydantic and their dependencies. This script

1. resolves `ray[default,tune,train]`, mlflow, optuna, pydantic and fvcore's dependencies for CPython 3.12
   on manylinux x86_64 (`pip install --dry-run --report`, no install),
2. downloads the wheels of those the device image does not have (`device_has.txt`), plus FORCE (protobuf:
   Ray's generated code needs a runtime at least as new as its own), minus DROP (not used by a study),
3. builds fvcore's pure-Python wheel here (it is published as an sdist only),
4. repacks the Ray wheel without `ray/jars` (Java), `ray/rllib` and source maps, its three big binaries
   (gcs_server, raylet, _raylet.so) without their static symbol tables (`strip`), and the MLflow wheel
   without its web UI bundle (`mlflow/server/js`: the check uses a SQLite store, no server),
5. checks that the wheels plus the working tree fit in one device call (64 MiB) and prints the sizes
   (measured sizes: docs/benchmarks.md, "GPU checks still to run").

    python3 benchmarks/gpu_e2e/prepare.py            # writes .whl/ at the repository root (git-ignored)

Then on the GPU machine, in one call (see docs/benchmarks.md, "GPU checks still to run"):
    carry [".whl"], command `bash benchmarks/gpu_e2e/run.sh`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIMIT = 64 * 2**20
REQUIREMENTS = [
    "ray[default,tune,train]==2.60.0",
    "mlflow==3.17.2",
    "optuna==5.0.0",
    "pydantic>=2.7,<3",
    "pyyaml>=6",
    # fvcore==0.1.5.post20221221's own dependencies (fvcore itself is built below)
    "yacs>=0.1.6",
    "iopath>=0.1.7",
    "termcolor>=1.1",
    "tabulate",
]
FVCORE = "fvcore==0.1.5.post20221221"
FORCE = {"protobuf"}
# Not needed by a study, and the carry must fit 64 MiB: Ray's pip/uv runtime envs and profiler; mlflow-skinny
# and mlflow-tracing (every file of theirs is also in the mlflow wheel, same version); what only the MLflow
# server, Databricks, Docker or sklearn model logging import.
DROP = {
    "virtualenv", "distlib", "python-discovery", "py-spy",
    "mlflow-skinny", "mlflow-tracing", "databricks-sdk",
    "gunicorn", "huey", "skops", "docker", "graphene", "graphql-core", "graphql-relay",
}  # fmt: skip
PLATFORM = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    *[a for n in ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
                  "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                  "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
                  "manylinux1_x86_64") for a in ("--platform", n)],
]  # fmt: skip
STRIP = {
    "ray": lambda name: name.startswith(("ray/jars/", "ray/rllib/")) or name.endswith(".map"),
    "mlflow": lambda name: name.startswith("mlflow/server/js/"),
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve(tmp: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution the requirements need on the device's Python."""
    report = tmp / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
        "--target", str(tmp / "target"), *PLATFORM, *REQUIREMENTS)  # fmt: skip
    items = json.loads(report.read_text())["install"]
    return [(i["metadata"]["name"], i["metadata"]["version"]) for i in items]


def device_has() -> set[str]:
    lines = (HERE / "device_has.txt").read_text().splitlines()
    return {norm(x) for x in lines if x.strip() and not x.startswith("#")}


def _record_line(name: str, data: bytes) -> str:
    digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def strip_symbols(data: bytes) -> bytes:
    """An ELF binary without its static symbol table (`strip --strip-unneeded`; dynamic symbols stay)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "elf"
        path.write_bytes(data)
        subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
        return path.read_bytes()


def repack(wheel: Path, drop, strip: bool = False) -> tuple[int, int]:
    """Rewrite `wheel` without the members `drop` selects, big ELF files stripped of symbols if `strip`;
    RECORD is regenerated. Returns (old, new) bytes."""
    old = wheel.stat().st_size
    out = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in zin.infolist():
            if info.filename == record_name or drop(info.filename):
                continue
            data = zin.read(info)
            if strip and data[:4] == b"\x7fELF" and len(data) > 5 * 2**20:
                data = strip_symbols(data)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            lines.append(_record_line(info.filename, data))
        lines.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(lines) + "\n")
    out.replace(wheel)
    return old, wheel.stat().st_size


def tree_size() -> int:
    """Bytes of what a device call sends besides the carry: tracked + untracked-not-ignored files."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".whl")
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    for old in args.out.glob("*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        closure = resolve(Path(tmp))
    has = device_has()
    wanted = sorted(
        f"{n}=={v}" for n, v in closure if (norm(n) not in has or norm(n) in FORCE) and norm(n) not in DROP
    )
    pip("download", "--quiet", "--no-deps", *PLATFORM, "-d", str(args.out), *wanted)
    pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(args.out), FVCORE)
    for wheel in sorted(args.out.glob("*.whl")):
        kind = norm(wheel.name.split("-")[0])
        if kind in STRIP:
            old, new = repack(wheel, STRIP[kind], strip=kind == "ray" and shutil.which("strip") is not None)
            print(f"repacked {wheel.name}: {old / 2**20:.1f} -> {new / 2**20:.1f} MiB")
    wheels = sum(w.stat().st_size for w in args.out.glob("*.whl"))
    tree = tree_size()
    n = len(list(args.out.glob("*.whl")))
    print(f"{n} wheels: {wheels / 2**20:.1f} MiB; working tree: {tree / 2**20:.1f} MiB; "
          f"one call carries {(wheels + tree) / 2**20:.1f} of {LIMIT / 2**20:.0f} MiB")  # fmt: skip
    if wheels + tree > LIMIT:
        print("too big for one device call: drop more (DROP / STRIP in this script)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
