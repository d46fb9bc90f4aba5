"""Whether a Ray cluster answers at `--address`, asked before a study does any work.

`ray.init(address=...)` retries a cluster that is not there for as long as it runs ("Failed to connect
to GCS" every 5 s), and a head started with token authentication, joined without `RAY_AUTH_MODE=token`,
gives twenty InvalidAuthToken warnings and then a ConnectionError that blames the network. So a study
first connects to the head's port (bounded, `PROBE_TIMEOUT_S`), then asks its GCS one question in a
child process (bounded too; the child's stderr holds Ray's C++ warnings, which stay off the console):
the answer is Ray's own `AuthenticationError` when the token is missing or wrong.

The GCS client used for that question is Ray's private `ray._raylet.GcsClient` (no public API asks a
cluster without joining it); Ray is pinned, and a Ray without it skips the question, not the study.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from dynconv.errors import AuthRefused, DynconvError

PROBE_TIMEOUT_S = 5.0
_LOCAL = (None, "", "local")
_ASK = """
import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1]).internal_kv_get(b"session_name", namespace=None, timeout=3)
except AuthenticationError:
    sys.exit(3)
"""


def check_ray_address(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A one-line error unless a Ray cluster answers at `address` and accepts this driver's token;
    nothing for a local Ray (None, "local")."""
    if address in _LOCAL:
        return
    target = _current_cluster() if address == "auto" else address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise DynconvError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise DynconvError(
            f"no Ray cluster answers at {host}:{port} ({err.strerror or type(err).__name__}): start it "
            "(`ray start --head`), check the address, or drop --address for a local Ray"
        ) from None
    if not address.startswith("ray://"):  # a Ray Client server is not a GCS: the port answering will do
        _check_token(f"{host}:{port}", timeout_s)


def _current_cluster() -> str:
    """The address `auto` means: $RAY_ADDRESS, else the cluster `ray start` recorded on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"].removeprefix("ray://")
    recorded = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        address = recorded.read_text().strip()
    except OSError:
        address = ""
    if not address:
        raise DynconvError(
            "--address auto: no Ray cluster was started on this machine (`ray start --head` records "
            f"one in {recorded}) and RAY_ADDRESS is not set; give --address HOST:PORT, or drop it"
        )
    return address


def _check_token(address: str, timeout_s: float) -> None:
    """`AuthRefused` when the head at `address` refuses this driver's token (or its lack of one)."""
    try:
        asked = subprocess.run(
            [sys.executable, "-c", _ASK, address],
            capture_output=True,
            timeout=timeout_s + 5,  # the child's own Python and Ray import
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DynconvError(
            f"something answers at {address}, but not as a Ray cluster's head (its GCS did not answer "
            f"within {timeout_s + 5:.0f} s): check the port (the head's --port, 6379 by default)"
        ) from None
    if asked.returncode != 3:
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise AuthRefused(
            f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token, with "
            "the head's token in ~/.ray/auth_token (where `ray start --head` wrote it), in the file "
            "RAY_AUTH_TOKEN_PATH names, or in RAY_AUTH_TOKEN"
        )
    raise AuthRefused(
        f"the Ray cluster at {address} refused this driver's token: copy the head's ~/.ray/auth_token "
        "here, or set RAY_AUTH_TOKEN to it"
    )
