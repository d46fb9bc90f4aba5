"""Serving benchmark (run by hand): the registered champion answering through `mlflow models serve`,
beside the in-process forward of the same model.

Each preset's model (`PRESETS`: the quickstart's narrow dynamic ResNet-18 at 32 px, the seed's at 84 px;
random weights, which cost what trained ones cost) is logged and registered in a temporary sqlite store
exactly as a study registers its champion (`dynconv.tracking.registry`), then served by the real `mlflow
models serve -m models:/bench@champion --env-manager local` (1 uvicorn worker) on a free port. Timed, each
as latency at batch 1 (median and 90th percentile over the requests) and throughput at batch 64:

* forward: `ServedClassifier(x, channels=...)` under `torch.no_grad` in this process (the floor);
* pyfunc: `mlflow.pyfunc.load_model(...).predict(data, params={"channels": ...})` in this process
  (request checks, decoding, the answer's DataFrame);
* HTTP: POST /invocations to the server from this process, the JSON body encoded once beforehand
  (the server's JSON parsing, the scoring server, the answer's JSON).

Each for pixels (floats in [0, 1], as JSON for HTTP) and encoded JPEGs of the synthetic set (base64 for
HTTP), on the channels RB. The client shares the machine's cores with the server, as a local client would.

    flock /tmp/dynconv-tests.lock env PYTHONPATH=. .venv/bin/python benchmarks/serving.py   # ~2 min, 2 cores
    ... benchmarks/serving.py --presets quickstart   # only the quickstart's model (~20 s)
    ... benchmarks/serving.py --write-docs       # replaces the "Serving" section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import docs_section, markdown_table, usable_cores, write_docs_section

CHANNELS = "RB"
SLOTS = [0, 2]


def register_model(root: Path, name: str, args: dict[str, Any], classes: int, size: int) -> str:
    """A fresh model registered as `bench@champion` in a sqlite store under `root`; the store's URI."""
    from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
    from dynconv.models import create_model
    from dynconv.models.served import ServedClassifier
    from dynconv.tracking.layout import ensure_experiment
    from dynconv.tracking.registry import log_served_model, register_champion
    from dynconv.tracking.store import client

    uri = f"sqlite:///{root}/mlflow.db"
    torch.manual_seed(0)
    served = ServedClassifier(create_model(name, num_classes=classes, **args), IMAGENET_MEAN, IMAGENET_STD)
    run_id = client(uri).create_run(ensure_experiment(uri, "bench")).info.run_id
    names = [f"class_{k}" for k in range(classes)]
    model_uri = log_served_model(uri, run_id, served.eval(), image_size=size, metadata={"class_names": names})
    register_champion(
        uri, "bench", model_uri, study="bench", source_run_id=run_id, alias="champion", score=0.0,
        test_set_id="bench",
    )  # fmt: skip
    return uri


def jpegs(root: Path, size: int, count: int) -> list[bytes]:
    """`count` JPEG files of the synthetic set at `size` px, as bytes."""
    from dynconv.data.synth import write_synthetic

    folder = write_synthetic(root / "synthetic", classes=2, per_class=max(8, count // 2 + 1), size=size)
    return [p.read_bytes() for p in sorted((folder / "images").rglob("*.jpg"))[:count]]


class Server:
    """`mlflow models serve` of `models:/bench@champion` on a free port, stopped with its process group."""

    def __init__(self, uri: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bench@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"mlflow models serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        self.start_s = time.perf_counter() - started

    def post(self, body: bytes) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def timed(call: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of each of `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def row(path: str, form: str, batch: int, seconds: list[float]) -> list[str]:
    """A table row: latency median and p90 (ms), images/s at the median."""
    median, p90 = float(np.median(seconds)), float(np.percentile(seconds, 90))
    return [path, form, str(batch), f"{median * 1e3:.1f}", f"{p90 * 1e3:.1f}", f"{batch / median:.0f}"]


def measure(uri: str, files: list[bytes], size: int, repeats: int) -> tuple[list[list[str]], float]:
    """Every (path, input form, batch) of the module doc; the rows and the server's start-up seconds."""
    import mlflow.pyfunc
    import pandas as pd

    from dynconv.tracking.registry import download_served_model

    rng = np.random.default_rng(0)
    pixels = {b: rng.random((b, len(SLOTS), size, size), dtype=np.float32) for b in (1, 64)}
    encoded = {b: [files[i % len(files)] for i in range(b)] for b in (1, 64)}
    params = {"channels": CHANNELS}
    with tempfile.TemporaryDirectory(prefix="dynconv-bench-model-") as tmp:
        pyfunc = mlflow.pyfunc.load_model(
            str(download_served_model(uri, "models:/bench@champion", Path(tmp)))
        )
    served = pyfunc.get_raw_model()  # the ServedClassifier the pyfunc face answers with
    rows = []
    for b in (1, 64):
        x = torch.from_numpy(pixels[b])
        n = repeats if b == 1 else max(3, repeats // 5)
        with torch.no_grad():
            rows.append(
                row("forward (in process)", "pixels", b, timed(lambda x=x: served(x, channels=SLOTS), n))
            )
        rows.append(
            row("pyfunc predict", "pixels", b, timed(lambda b=b: pyfunc.predict(pixels[b], params), n))
        )
        frame = pd.DataFrame({"image": encoded[b]})
        rows.append(row("pyfunc predict", "JPEG", b, timed(lambda f=frame: pyfunc.predict(f, params), n)))
    server = Server(uri)
    try:
        for b in (1, 64):
            n = repeats if b == 1 else max(3, repeats // 5)
            by_pixels = json.dumps({"inputs": pixels[b].tolist(), "params": params}).encode()
            b64 = [[base64.b64encode(f).decode()] for f in encoded[b]]
            by_jpeg = json.dumps(
                {"dataframe_split": {"columns": ["image"], "data": b64}, "params": params}
            ).encode()
            rows.append(
                row("HTTP /invocations", "pixels (JSON)", b, timed(lambda d=by_pixels: server.post(d), n))
            )
            rows.append(
                row(
                    "HTTP /invocations",
                    "JPEG (base64)",
                    b,
                    timed(lambda d=by_jpeg: server.post(d), n),
                )
            )
    finally:
        server.stop()
    return sorted(rows, key=lambda r: (int(r[2]), r[0] != "forward (in process)")), server.start_s


PRESETS = {
    "quickstart": ("resnet18_dynamic", {"stem": "small", "width": 16}, 10, 32),
    "seed": ("resnet18_dynamic", {"stem": "imagenet"}, 50, 84),
}
"""(model, arguments, classes, image size): the quickstart's champion, and the seed's ImageNet-mini model."""


def run_preset(preset: str, repeats: int) -> str:
    """The table of one preset, with a line saying what was served and how long the server took to start."""
    name, model_args, classes, size = PRESETS[preset]
    with tempfile.TemporaryDirectory(prefix="dynconv-bench-serving-") as tmp:
        uri = register_model(Path(tmp), name, model_args, classes, size)
        rows, start_s = measure(uri, jpegs(Path(tmp), size, 64), size, repeats)
    table = markdown_table(
        ["path", "input", "batch", "latency ms (median)", "p90 ms", "img/s"], rows, "lllrrr"
    )
    return (
        f"**{preset}**: {name} {model_args}, {classes} classes, {size}x{size} px; the server was up "
        f"{start_s:.1f} s after `mlflow models serve` started.\n\n{table}\n\n{reading(rows, size)}\n"
    )


def reading(rows: list[list[str]], size: int) -> str:
    """One sentence on a preset's table: what HTTP adds at batch 1, what the server keeps at batch 64."""
    by_key = {(r[0].split()[0], r[1].split()[0], int(r[2])): r for r in rows}

    def ms(path: str, form: str, batch: int) -> float:
        return float(by_key[path, form, batch][3])

    def ips(path: str, form: str, batch: int) -> float:
        return float(by_key[path, form, batch][5])

    floats = 64 * len(SLOTS) * size * size
    return (
        f"Reading: at batch 1 a request through the server takes {ms('HTTP', 'JPEG', 1):.1f} ms for a "
        f"JPEG, {ms('HTTP', 'JPEG', 1) - ms('forward', 'pixels', 1):.1f} ms more than the forward alone; "
        f"at batch 64 the server scores {ips('HTTP', 'JPEG', 64):.0f} JPEG img/s "
        f"({ips('HTTP', 'JPEG', 64) / ips('forward', 'pixels', 64):.0%} of the in-process forward) but "
        f"only {ips('HTTP', 'pixels', 64):.0f} img/s given pixels, whose JSON ({floats:,} floats) it "
        "parses first: send encoded images."
    )


def main() -> None:
    from dynconv.environment import set_library_environment

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="quickstart,seed", help=f"comma-separated, of {', '.join(PRESETS)}")
    ap.add_argument("--repeats", type=int, default=50, help="requests timed at batch 1 (a fifth at batch 64)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    set_library_environment()
    torch.set_num_threads(usable_cores())
    tables = []
    for preset in args.presets.split(","):
        tables.append(run_preset(preset.strip(), args.repeats))
        print(tables[-1], flush=True)
    if args.write_docs:
        intro = (
            "The registered champion answering requests (issue 30). Each model (random weights, which cost "
            "what trained ones cost) is registered as a study registers its champion, served by `mlflow "
            "models serve --env-manager local` (1 uvicorn worker) and called from the same machine, beside "
            f"the same model in this process; channels {CHANNELS} in every request. Latency: median and "
            "90th percentile of the requests; img/s: batch / median latency. forward: the "
            "`ServedClassifier` alone; pyfunc predict: `mlflow.pyfunc.load_model(...).predict(data, "
            "params=...)` in process (checks, decoding, the answer's DataFrame); HTTP: POST /invocations, "
            "the JSON body encoded beforehand. Run under the test lock on a machine shared with other "
            f"work (load average {os.getloadavg()[0]:.1f} at the end): differences within about 20 % are "
            "noise."
        )
        write_docs_section(docs_section("Serving", intro, "\n".join(tables)))


if __name__ == "__main__":
    main()
