"""`ServedPredictor`: the served model answering requests that name the channels they hold.

A request is a batch of images and the channels it carries, in what a client can send without torch:

* pixels: a float array (N, C, H, W) with values in [0, 1] (numpy, nested lists, a torch tensor), its C
  channels named by `channels`, H x W the size the model was trained at;
* encoded images: the bytes of image files (PNG, JPEG, anything Pillow decodes), or their base64 text as
  JSON carries them, in a column `image` of a DataFrame (or a dict's `image` list). Each is decoded and
  resized exactly as training decoded its images (`dynconv.data.decode.decode_image`: EXIF orientation,
  RGB, bilinear resize to the training size), and the model sees the channels `channels` names.

`channels` is a subset name (RGB, RG, RB, GB, R, G, B; `dynconv.data.channels.SUBSETS`) or the slot of
each channel, comma-separated (`"0,2"` = R, B; 0 = R, 1 = G, 2 = B). The answer has one row per image:
the predicted class (`class_index`, `class_name`), its `probability`, and the `top_k` classes with their
probabilities (`top_indices`, `top_classes`, `top_probabilities`), best first. The predicted class is
the one `dynconv evaluate` predicts for the same image and subset: the pixels go through
`ServedClassifier`, which feeds the network as the evaluation does.

What cannot be answered is a `RequestError`: one line saying what is wrong (a channel count that does
not match the named subset, an unknown subset, values outside [0, 1], an image that does not decode, a
wrong size), never a guess. MLflow's pyfunc face (`dynconv.tracking.served_pyfunc`) turns it into an
HTTP 400.

Travels in a served model's code copy (`dynconv.tracking.registry.CODE_COPY`), so it imports nothing of
dynconv but `errors`, `data.channels`, `data.decode` and `models.served`; torch, numpy and Pillow, and
pandas inside the functions that build an answer.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynconv.data.channels import SUBSET_NAMES, SUBSETS
from dynconv.data.decode import decode_image
from dynconv.errors import DynconvError, one_line
from dynconv.models.served import SLOTS, ServedClassifier

IMAGE_COLUMN = "image"
"""The column (or dict key) of encoded images in a request."""
MAX_PIXELS = 50_000_000
"""The largest image a request may hold (width x height): the default decode budget of a study
(`DataSpec.max_pixels`; `tests/test_serving.py` checks they agree). A larger one is refused before it is
decoded."""
MAX_TOP_K = 1000
"""The most classes an answer lists per image (`top_k`; at most the model's classes are listed)."""
BATCH = 256
"""Images per forward pass: a large request is answered in slices of this many."""
_SLOT_LIST = re.compile(r"^\[?\s*\d+(\s*,\s*\d+)*\s*\]?$")


class RequestError(DynconvError):
    """A request the served model cannot answer; the message is one line saying what is wrong."""


def parse_channels(channels: str | Sequence[int]) -> tuple[int, ...]:
    """The slot of each channel a request holds: from a subset name (`"RB"`, any case), a slot list
    (`"0,2"`, `"[0, 2]"`) or a sequence of ints; a `RequestError` for anything else."""
    if isinstance(channels, str):
        text = channels.strip()
        if _SLOT_LIST.match(text):
            return _distinct_slots([int(s) for s in re.findall(r"\d+", text)], channels)
        if text.upper() in SUBSETS:
            return SUBSETS[text.upper()]
        raise RequestError(
            f"unknown channels {channels!r}: name a subset ({', '.join(SUBSET_NAMES)}) or the slot of each "
            "channel, e.g. '0,2' (0=R, 1=G, 2=B)"
        )
    values = list(channels)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise RequestError(f"channels {values!r}: slots are integers (0=R, 1=G, 2=B)")
    return _distinct_slots([int(v) for v in values], channels)


def _distinct_slots(slots: list[int], given: object) -> tuple[int, ...]:
    if not slots or len(set(slots)) != len(slots) or not all(0 <= s < SLOTS for s in slots):
        raise RequestError(f"channels {given!r}: name 1 to 3 distinct slots (0=R, 1=G, 2=B)")
    return tuple(slots)


def channels_name(slots: Sequence[int]) -> str:
    """`(0, 2)` -> `"RB"`: the letters of the slots, in the request's order."""
    return "".join("RGB"[s] for s in slots)


class ServedPredictor:
    """Answers requests (module doc) with a `ServedClassifier` trained at `image_size` x `image_size`.

    `class_names`: the name of each class index (the study's, from the model's metadata); without them a
    class is named by its index.
    """

    def __init__(
        self,
        model: ServedClassifier,
        image_size: int,
        class_names: Sequence[str] | None = None,
        *,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.model = model.eval()
        self.image_size = int(image_size)
        self.num_classes = _num_classes(self.model, self.image_size)
        if class_names is not None and len(class_names) != self.num_classes:
            raise DynconvError(
                f"{len(class_names)} class names for a model of {self.num_classes} classes: the model's "
                "metadata does not belong to it"
            )
        self.class_names = [str(n) for n in class_names] if class_names else None
        self.max_pixels = max_pixels

    def predict(self, data: Any, channels: str | Sequence[int] = "RGB", top_k: int = 5):
        """The answer (a pandas DataFrame, one row per image; module doc) to a request of pixels or
        encoded images (`data`) holding the channels `channels` names."""
        slots = parse_channels(channels)
        k = _top_k(top_k, self.num_classes)
        encoded = _encoded_images(data)
        if encoded is None:
            return self.answer(self._pixels(data, slots), slots, k)
        return self.predict_decoded(self.decode_all(encoded), slots, k)

    def decode_all(self, values: Sequence[bytes | str]) -> np.ndarray:
        """Encoded images (`decode`) as one (N, 3, S, S) uint8 batch."""
        decoded = [self.decode(value, f"image {i}") for i, value in enumerate(values)]
        size = self.image_size
        return np.stack(decoded) if decoded else np.zeros((0, SLOTS, size, size), np.uint8)

    def decode(self, value: bytes | str, what: str = "the image") -> np.ndarray:
        """One encoded image (file bytes, or their base64 text) as training decoded it: (3, S, S) uint8
        RGB at the training size. `what` names it in the error of one that does not decode."""
        from PIL import UnidentifiedImageError

        raw = _image_bytes(value, what)
        try:
            return decode_image(io.BytesIO(raw), self.image_size, self.max_pixels)  # type: ignore[arg-type]
        except UnidentifiedImageError:
            why = f"{len(raw)} bytes in no image format Pillow reads (PNG, JPEG, WebP, TIFF, BMP, ...)"
        except Exception as exc:  # whatever Pillow raises for an image it cannot decode (truncated, ...)
            why = one_line(exc, 160)
        raise RequestError(f"{what} does not decode: {why}")

    def predict_decoded(self, images: np.ndarray, channels: str | Sequence[int], top_k: int = 5):
        """The answer for decoded (N, 3, S, S) uint8 RGB images (`decode`'s) shown as `channels`."""
        slots = parse_channels(channels)
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
        return self.answer(x[:, list(slots)], slots, _top_k(top_k, self.num_classes))

    def answer(self, x: torch.Tensor, slots: tuple[int, ...], k: int):
        """The answer for checked float pixels x (N, len(slots), S, S) in [0, 1]."""
        import pandas as pd

        indices, probabilities = [], []
        with torch.no_grad():
            for start in range(0, x.shape[0], BATCH):
                logits = self.model(x[start : start + BATCH], channels=list(slots)).float()
                top = logits.topk(k, dim=1)  # the evaluation's rule: its first index is the prediction
                indices.append(top.indices)
                probabilities.append(logits.softmax(dim=1).gather(1, top.indices))
        top_indices = torch.cat(indices).tolist() if indices else []
        top_probs = torch.cat(probabilities).tolist() if probabilities else []
        names = [[self.class_name(i) for i in row] for row in top_indices]
        return pd.DataFrame(
            {
                "class_index": pd.Series([row[0] for row in top_indices], dtype="int64"),
                "class_name": pd.Series([row[0] for row in names], dtype="object"),
                "probability": pd.Series([row[0] for row in top_probs], dtype="float64"),
                "top_indices": pd.Series(top_indices, dtype="object"),
                "top_classes": pd.Series(names, dtype="object"),
                "top_probabilities": pd.Series(top_probs, dtype="object"),
            }
        )

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else str(index)

    def _pixels(self, data: Any, slots: tuple[int, ...]) -> torch.Tensor:
        """`data` as a float32 tensor (N, len(slots), S, S) in [0, 1], or the `RequestError` saying why
        it is not one."""
        try:
            x = data.detach().cpu() if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
        except (TypeError, ValueError) as exc:
            raise RequestError(
                f"pixels are not a rectangular numeric array ({one_line(exc, 120)}): send floats "
                f"(N, C, H, W) in [0, 1], or encoded images in a column {IMAGE_COLUMN!r}"
            ) from None
        if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in _INTEGER_TYPES):
            raise RequestError(
                f"pixels of type {str(x.dtype).removeprefix('torch.')}: send floats (N, C, H, W) in [0, 1], "
                f"or encoded images in a column {IMAGE_COLUMN!r}"
            )
        size, name = self.image_size, channels_name(slots)
        if x.dim() != 4:
            raise RequestError(
                f"pixels of shape {tuple(x.shape)}: expected (N, C, H, W) = (N, {len(slots)}, {size}, {size})"
            )
        if x.shape[1] != len(slots):
            raise RequestError(
                f"channels {name!r} names {len(slots)} channel{'s' * (len(slots) > 1)}, the pixels hold "
                f"{x.shape[1]} (shape {tuple(x.shape)}): send only the channels named, in their order"
            )
        if tuple(x.shape[2:]) != (size, size):
            raise RequestError(
                f"images of {x.shape[2]}x{x.shape[3]} pixels: the model takes {size}x{size}, the size it was "
                "trained at (encoded images are resized to it)"
            )
        x = x.float()
        if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
            finite = x[torch.isfinite(x)]
            low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 0.0)
            nan = ", some not finite" if finite.numel() < x.numel() else ""
            raise RequestError(
                f"pixel values outside [0, 1] (min {low:.4g}, max {high:.4g}{nan}): send floats in [0, 1], "
                "e.g. 8-bit pixels divided by 255"
            )
        return x


_INTEGER_TYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _num_classes(model: ServedClassifier, image_size: int) -> int:
    """The number of classes `model` scores (one forward pass of a blank image)."""
    with torch.no_grad():
        return int(model(torch.zeros(1, SLOTS, image_size, image_size)).shape[1])


def _top_k(top_k: object, num_classes: int) -> int:
    """`top_k` checked (a positive integer), at most the number of classes."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
        raise RequestError(f"top_k {top_k!r}: expected an integer from 1 to {MAX_TOP_K}")
    return min(int(top_k), num_classes)


def _encoded_images(data: Any) -> list[Any] | None:
    """The encoded images of a request (its `image` column or key, or a list of bytes), or None when
    it holds pixels; a `RequestError` for a table without the column."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        if IMAGE_COLUMN not in data.columns:
            raise RequestError(
                f"a table request needs a column {IMAGE_COLUMN!r} of encoded images (file bytes or their "
                f"base64 text), got columns {[str(c) for c in data.columns]}; pixels go as an array "
                "(N, C, H, W)"
            )
        return list(data[IMAGE_COLUMN])
    if isinstance(data, dict):
        if IMAGE_COLUMN not in data:
            raise RequestError(
                f"a request of named inputs needs {IMAGE_COLUMN!r}, got {sorted(map(str, data))}"
            )
        return list(np.atleast_1d(np.asarray(data[IMAGE_COLUMN], dtype=object)))
    if isinstance(data, (list, tuple)) and data and all(isinstance(v, (bytes, str)) for v in data):
        return list(data)
    if isinstance(data, np.ndarray) and data.dtype.kind in "OSU" and data.ndim == 1:
        return list(data)
    return None


def _image_bytes(value: object, what: str) -> bytes:
    """The bytes of an encoded image (`what`): as given, or decoded from base64 text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                f"{what} is text but not base64 ({value[:20]!r}...): send the file's bytes base64-encoded"
            ) from None
    raise RequestError(f"{what} is a {type(value).__name__}: send the file's bytes, base64-encoded")
