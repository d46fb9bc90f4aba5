"""Registered models: `create_model(name, num_classes=50, **kwargs)` and `list_models()`.

Every model's forward is `forward(x, channels=None)`; `model.dynamic` says whether `channels` may
name a subset (dynamic models) or x must carry all `model.max_in_channels` channels (plain models).

`served.ServedClassifier` wraps a trained model for users outside dynconv ([0, 1] images, any channel
subset, normalised inside); `serving.ServedPredictor` answers a served model's requests (pixels or
encoded images, each naming its channels).

Models import torch, `dynconv.layers` and `dynconv.errors` (serving also the image decoder and channel
names of `dynconv.data`); never Ray or MLflow.
"""

# Importing the model modules registers their entry points.
from dynconv.models import resnet, simple_cnn  # noqa: F401
from dynconv.models.registry import (
    ModelArgumentError,
    UnknownModelError,
    create_model,
    list_models,
    register_model,
)
from dynconv.models.resnet import STEMS, ResNet
from dynconv.models.simple_cnn import SimpleCNN

__all__ = [
    "STEMS",
    "ModelArgumentError",
    "ResNet",
    "SimpleCNN",
    "UnknownModelError",
    "create_model",
    "list_models",
    "register_model",
]
