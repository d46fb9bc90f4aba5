"""Feeding a model a channel subset and predicting over a split.

How a model sees a subset: a *dynamic* model gets only the subset's channels plus their indices
(`model(x[:, idx], channels=idx)`); a *plain* model gets all three channels with the missing ones
zero-filled after normalisation (= the dataset mean colour), the usual baseline (`model_inputs`, shared
with training's subset validation). On CUDA: bf16 autocast and channels-last, as in training. Never
imports Ray or MLflow.
"""

from __future__ import annotations

import contextlib

import numpy as np

from dynconv.data.channels import model_inputs  # one rule for training's subset validation and here


def _autocast(device):
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward(model, x, subset: str, dynamic: bool):
    import torch

    xin, channels = model_inputs(x, subset, dynamic)
    if x.device.type == "cuda":
        xin = xin.contiguous(memory_format=torch.channels_last)
    with _autocast(x.device):
        return model(xin, channels=channels) if channels is not None else model(xin)


def predict(
    model, images: np.ndarray, labels: np.ndarray, subset: str, dynamic: bool, device, batch_size: int = 256
):
    """(y_pred, top5_hit) numpy arrays over a split, in split order."""
    import torch

    from dynconv.data.augment import normalize

    preds, hits = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x_u8 = torch.from_numpy(np.array(images[start : start + batch_size]))
            y = torch.from_numpy(np.asarray(labels[start : start + batch_size], dtype=np.int64)).to(device)
            logits = forward(model, normalize(x_u8, device), subset, dynamic).float()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            preds.append(topk[:, 0].cpu().numpy())
            hits.append(topk.eq(y[:, None]).any(dim=1).cpu().numpy())
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(preds).astype(np.int64), np.concatenate(hits).astype(bool)
