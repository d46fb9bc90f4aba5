"""The model registry and every registered model over its channel subsets (built small: fast on CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynconv.errors import DynconvError
from dynconv.layers import DynamicConv2D
from dynconv.models import STEMS, ModelArgumentError, UnknownModelError, create_model, list_models

SUBSETS = {"RGB": (0, 1, 2), "RG": (0, 1), "RB": (0, 2), "GB": (1, 2), "R": (0,), "G": (1,), "B": (2,)}
NUM_CLASSES = 5
IMAGE = 32


def _small_kwargs(name: str) -> dict[str, Any]:
    """Shrink what is expensive by default; ResNets at 32×32 are already cheap."""
    return {"width": 32, "growth": 8} if name.startswith("simple_cnn") else {"width": 8}


def _build(name: str, **kwargs: Any) -> nn.Module:
    return create_model(name, num_classes=NUM_CLASSES, **{**_small_kwargs(name), **kwargs})


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in list_models():
        dynamic = _build(name).dynamic
        cases += [(name, subset) for subset in (SUBSETS if dynamic else ["RGB"])]
    return cases


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_lists_the_required_models() -> None:
    required = {"resnet18", "resnet34", "resnet18_dynamic", "resnet34_dynamic", "simple_cnn"}
    assert required <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_lists_names() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet19'.*resnet18, .*simple_cnn") as info:
        create_model("resnet19")
    assert isinstance(info.value, ValueError) and isinstance(info.value, DynconvError)


def test_unknown_kwarg_names_the_model() -> None:
    with pytest.raises(ModelArgumentError, match=r"model 'resnet18'.*wdith") as info:
        create_model("resnet18", wdith=3)
    assert isinstance(info.value, TypeError) and isinstance(info.value, DynconvError)


def test_unknown_stem() -> None:
    with pytest.raises(ValueError, match="unknown stem 'cifar'; choose one of imagenet, small, seed"):
        create_model("resnet18_dynamic", stem="cifar")


def test_model_args_rebuild_the_model() -> None:
    model = create_model("simple_cnn_dynamic", num_classes=7, width=16, growth=4, dynamic_rescale=False)
    assert model.model_args == {
        "name": "simple_cnn_dynamic",
        "num_classes": 7,
        "width": 16,
        "growth": 4,
        "dynamic_rescale": False,
    }
    rebuilt = create_model(**model.model_args)
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture
    assert not rebuilt.dense.conv.rescale_missing


@pytest.mark.parametrize(("name", "subset"), _cases())
def test_forward_backward(name: str, subset: str) -> None:
    model = _build(name)
    model.train()
    idx = SUBSETS[subset]
    x = torch.randn(2, len(idx), IMAGE, IMAGE)
    for module in model.modules():  # γ = 0 at init would cut the attention convs off from the loss
        if hasattr(module, "gamma"):
            nn.init.constant_(module.gamma, 0.5)
    out = model(x, channels=idx) if model.dynamic else model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", list_models())
def test_model_attributes(name: str) -> None:
    model = _build(name)
    assert model.dynamic == name.endswith("_dynamic")
    assert model.max_in_channels == 3
    assert any(isinstance(m, DynamicConv2D) for m in model.modules()) == model.dynamic


@pytest.mark.parametrize("name", [n for n in list_models() if not n.endswith("_dynamic")])
def test_plain_models_require_three_channels(name: str) -> None:
    model = _build(name).eval()
    with pytest.raises(ValueError, match=r"expects exactly 3 input channels.*zero-fill"):
        model(torch.randn(1, 2, IMAGE, IMAGE))
    x = torch.randn(1, 3, IMAGE, IMAGE)
    with pytest.raises(ValueError, match=r"cannot use channel subset \(0, 2\).*zero-fill"):
        model(x, channels=(0, 2))
    with pytest.raises(ValueError, match="takes no channel mask"):
        model(x, channels=torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(model(x, channels=(0, 1, 2)), model(x))


@pytest.mark.parametrize(
    ("plain", "dynamic", "kwargs"),
    [("resnet18", "resnet18_dynamic", {"stem": stem}) for stem in STEMS]
    + [("simple_cnn", "simple_cnn_dynamic", {}), ("simple_cnn", "simple_cnn_dynamic", {"dense_padding": 1})],
)
def test_dynamic_model_on_rgb_equals_plain_model(plain: str, dynamic: str, kwargs: dict[str, Any]) -> None:
    """The dynamic variant is the plain model with only the stem conv swapped: same weights, same output."""
    dyn = _build(dynamic, **kwargs).eval()
    ref = _build(plain, **kwargs).eval()
    ref.load_state_dict(dyn.state_dict())
    x = torch.randn(2, 3, IMAGE, IMAGE)
    torch.testing.assert_close(dyn(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize(("stem", "size"), [("imagenet", 21), ("small", 84), ("seed", 40)])
def test_stem_geometry_at_84(stem: str, size: int) -> None:
    for name in ("resnet18", "resnet18_dynamic"):
        model = create_model(name, stem=stem)
        spec = STEMS[stem]
        assert model.stem.conv.kernel_size == (spec.kernel_size,) * 2
        with torch.no_grad():
            out = model.maxpool(model.stem(torch.zeros(1, 3, 84, 84)))
        assert out.shape == (1, 64, size, size)


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("_dynamic")])
def test_mask_form_equals_index_form_per_sample(name: str) -> None:
    model = _build(name).eval()  # eval: BatchNorm treats samples independently
    names = list(SUBSETS)
    full = torch.randn(len(names), 3, IMAGE, IMAGE)
    mask = torch.tensor([[i in SUBSETS[n] for i in range(3)] for n in names])
    with torch.no_grad():
        out = model(full, channels=mask)
        for row, subset in enumerate(names):
            idx = SUBSETS[subset]
            expected = model(full[row : row + 1, list(idx)], channels=idx)
            torch.testing.assert_close(out[row : row + 1], expected, rtol=1e-4, atol=1e-4)


def test_dynamic_rescale_is_passed_to_the_stem() -> None:
    assert create_model("resnet18_dynamic").stem.conv.rescale_missing
    assert not create_model("resnet34_dynamic", dynamic_rescale=False).stem.conv.rescale_missing


def test_simple_cnn_defaults_are_the_seeds() -> None:
    model = create_model("simple_cnn")
    assert model.dense.conv.kernel_size == (5, 5) and model.dense.conv.out_channels == 512
    assert [layer.conv.out_channels for layer in model.rrdb.layers] == [32, 32, 32]
    assert all(layer.conv.kernel_size == (3, 3) for layer in model.rrdb.layers)
    assert model.rrdb.fuse.out_channels == 512
    assert model.attn.value.out_channels == 512 and model.attn.query.out_channels == 64
    assert model.dropout.p == 0.5 and model.fc.out_features == 50


def test_resnet_depths() -> None:
    def blocks(model: nn.Module) -> list[int]:
        return [len(getattr(model, f"layer{i}")) for i in range(1, 5)]

    assert blocks(create_model("resnet18")) == [2, 2, 2, 2]
    assert blocks(create_model("resnet34_dynamic")) == [3, 4, 6, 3]
