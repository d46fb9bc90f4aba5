"""`dynconv ui`: the MLflow UI on the study store. Imports nothing from dynconv but `spec` (lazily)."""

from __future__ import annotations

import os
import subprocess
import sys


def serve_ui(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Run the MLflow UI on the study store in the foreground (Ctrl-C stops it)."""
    from dynconv.spec import absolute_tracking_uri

    uri = absolute_tracking_uri(
        tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    )
    print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    subprocess.run(cmd, check=False)
