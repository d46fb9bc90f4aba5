"""The served model's pyfunc face: what `mlflow.pyfunc.load_model` and `mlflow models serve` call.

A registered model is logged by `mlflow.pytorch` (`dynconv.tracking.registry.log_served_model`), and its
MLmodel's `python_function` flavor names this module as its loader: `_load_pyfunc` loads the pickled
`ServedClassifier` through `mlflow.pytorch` and answers with a `ServedPredictor`
(`dynconv.models.serving`), so one logged model has both faces:

* `mlflow.pytorch.load_model(uri)`: the torch module, `model(x, channels=[0, 2])` (unchanged);
* `mlflow.pyfunc.load_model(uri).predict(data, params={"channels": "RB", "top_k": 5})` and
  `mlflow models serve`: pixels (N, C, H, W) in [0, 1] or encoded images in a column `image`, the
  channels as an inference parameter; a DataFrame answer naming the classes.

The signature (`signature`) has no input schema, on purpose: MLflow would hold every request to one
schema, a tensor or a table, and a request may be either; the predictor checks what it gets and says in
one line what is wrong. Its params are `channels` (string, default "RGB") and `top_k` (integer, default
5); its outputs are the answer's columns.

A request the model cannot answer raises `RequestRefused`, an `MlflowException` with error code
INVALID_PARAMETER_VALUE: the scoring server answers it with HTTP 400, and its message stays the one line
the predictor wrote (the server would otherwise rewrite it as "Failed to predict data '<the whole
request>'" over several lines).

Travels in a served model's code copy (`registry.CODE_COPY`): imports mlflow, torch and
`dynconv.models.serving` only, nothing else of `dynconv.tracking`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from dynconv.models.serving import RequestError, ServedPredictor

LOADER_MODULE = __name__
"""What the MLmodel's `python_function` flavor names as its `loader_module`."""
PARAMS = (("channels", "string", "RGB"), ("top_k", "long", 5))
"""The inference parameters: (name, MLflow type, default)."""


class RequestRefused(MlflowException):
    """A request the served model cannot answer: HTTP 400 with the predictor's one line as its message.

    MLflow's scoring server assigns `message` again after catching it (prefixing the whole request, over
    several lines); only the first assignment, the constructor's, is kept.
    """

    def __init__(self, line: str) -> None:
        super().__init__(line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        self.__dict__.setdefault("_line", value)


class ServedPyfunc:
    """The pyfunc model implementation: `predict(data, params)` of a `ServedPredictor`."""

    def __init__(self, predictor: ServedPredictor) -> None:
        self.predictor = predictor

    def predict(self, data: Any, params: dict[str, Any] | None = None):
        params = params or {}
        defaults = {name: default for name, _, default in PARAMS}
        try:
            return self.predictor.predict(
                data,
                channels=params.get("channels", defaults["channels"]),
                top_k=params.get("top_k", defaults["top_k"]),
            )
        except RequestError as exc:
            raise RequestRefused(str(exc)) from None

    def get_raw_model(self):
        """The `ServedClassifier` it answers with (`PyFuncModel.get_raw_model()`)."""
        return self.predictor.model


def load_predictor(model_dir: str | Path) -> ServedPredictor:
    """The `ServedPredictor` of a served model saved at `model_dir` (a local MLflow model folder): the
    pickled classifier, the training size and class names from its metadata."""
    import mlflow.pytorch
    from mlflow.models import Model

    model_dir = Path(model_dir)
    metadata = Model.load(str(model_dir / "MLmodel")).metadata or {}
    served = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
    return ServedPredictor(served.cpu().eval(), int(metadata["image_size"]), metadata.get("class_names"))


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ServedPyfunc:
    """MLflow's loader entry point: `data_path` is the model's `data/` folder (the pytorch flavor's)."""
    return ServedPyfunc(load_predictor(Path(data_path).parent))


def usage(name: str) -> str:
    """How to call registered model `name` through its pyfunc face, in markdown: a registered version's
    description, since MLflow's UI shows a signature's inputs and outputs but not its params."""
    params = "; ".join(f"`{n}` ({kind}, default {default!r})" for n, kind, default in PARAMS)
    return (
        f"Serve: `mlflow models serve -m models:/{name}@champion --env-manager local`, then POST "
        "/invocations "
        '`{"inputs": PIXELS, "params": {"channels": "RB"}}` (PIXELS: floats (N, C, H, W) in [0, 1] at the '
        'training size, C the channels named) or `{"dataframe_split": {"columns": ["image"], "data": '
        '[[BASE64_PNG_OR_JPEG]]}, "params": {"channels": "B"}}`. '
        f"Params: {params}; `channels` is a subset name (RGB, RG, RB, GB, R, G, B) or slots such as 0,2 "
        "(0=R, 1=G, 2=B). Answer: class_index, class_name, probability and the top_k classes. "
        "See dynconv's docs/registry.md."
    )


def signature():
    """The served model's signature: no input schema (module doc), the answer's columns, the params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    outputs = Schema(
        [
            ColSpec(DataType.long, "class_index"),
            ColSpec(DataType.string, "class_name"),
            ColSpec(DataType.double, "probability"),
            ColSpec(Array(DataType.long), "top_indices"),
            ColSpec(Array(DataType.string), "top_classes"),
            ColSpec(Array(DataType.double), "top_probabilities"),
        ]
    )
    params = ParamSchema([ParamSpec(name, kind, default) for name, kind, default in PARAMS])
    return ModelSignature(inputs=None, outputs=outputs, params=params)
