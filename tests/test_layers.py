"""DynamicConv2D against nn.Conv2d / F.conv2d, its error cases, and the dense and attention blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynconv.layers import RRDB, DenseBlock, DynamicConv2D, SelfAttention2d
from dynconv.layers.dense import ESRGAN_RESIDUAL_SCALE

SUBSETS = {"RGB": (0, 1, 2), "RG": (0, 1), "RB": (0, 2), "GB": (1, 2), "R": (0,), "G": (1,), "B": (2,)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _dyn(rescale: bool = True, bias: bool = True, **kw) -> DynamicConv2D:
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, **kw}
    return DynamicConv2D(3, 8, bias=bias, rescale_missing=rescale, **kw)


def _reference(conv: DynamicConv2D, x: torch.Tensor, idx: tuple[int, ...], rescale: bool) -> torch.Tensor:
    """What the index form must compute: the conv with weight columns `idx`, bias-free part rescaled."""
    out = F.conv2d(x, conv.weight[:, list(idx)], None, conv.stride, conv.padding)
    if rescale and len(idx) < conv.max_in_channels:
        out = out * (conv.max_in_channels / len(idx))
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


# --- DynamicConv2D: equivalences -------------------------------------------------------------------


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize(
    ("k", "stride", "padding", "bias"), [(3, 1, 1, True), (7, 2, 3, False), (1, 1, 0, True)]
)
def test_full_input_equals_conv2d(k: int, stride: int, padding: int, bias: bool, rescale: bool) -> None:
    dyn = DynamicConv2D(3, 8, k, stride, padding, bias=bias, rescale_missing=rescale)
    ref = nn.Conv2d(3, 8, k, stride, padding, bias=bias)
    ref.load_state_dict(dyn.state_dict())
    x = torch.randn(2, 3, 11, 11)
    expected = ref(x)
    torch.testing.assert_close(dyn(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(dyn(x, channels=(0, 1, 2)), expected, rtol=0, atol=0)
    torch.testing.assert_close(dyn(x, channels=torch.tensor([0, 1, 2])), expected, rtol=0, atol=0)


def test_same_init_distribution_as_conv2d() -> None:
    """reset_parameters mirrors nn.Conv2d: same bound for weights and bias."""
    dyn = DynamicConv2D(3, 64, 7)
    ref = nn.Conv2d(3, 64, 7)
    assert dyn.weight.abs().max() <= ref.weight.abs().max() * 1.01
    assert dyn.weight.abs().max() > ref.weight.abs().max() * 0.9
    assert dyn.bias.abs().max() <= 1 / (3 * 49) ** 0.5


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_subset_uses_its_weight_columns(subset: str, rescale: bool) -> None:
    idx = SUBSETS[subset]
    conv = _dyn(rescale)
    x = torch.randn(2, len(idx), 9, 9)
    torch.testing.assert_close(conv(x, channels=idx), _reference(conv, x, idx, rescale))


def test_rb_uses_r_and_b_not_r_and_g() -> None:
    """The seed's bug: an RB input went through the R and G columns."""
    conv = _dyn(rescale=False)
    x = torch.randn(2, 2, 9, 9)
    rb = conv(x, channels=(0, 2))
    rg = conv(x, channels=(0, 1))
    torch.testing.assert_close(rb, _reference(conv, x, (0, 2), False))
    assert not torch.allclose(rb, rg)


def test_none_means_first_slots() -> None:
    conv = _dyn(rescale=True)
    x = torch.randn(2, 2, 9, 9)
    torch.testing.assert_close(conv(x), _reference(conv, x, (0, 1), True))


def test_order_of_indices_is_respected() -> None:
    conv = _dyn(rescale=False)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv(x, channels=(2, 0, 1)), _reference(conv, x, (2, 0, 1), False))
    torch.testing.assert_close(conv(x[:, [2, 0, 1]], channels=(2, 0, 1)), conv(x))


def test_rescale_multiplies_only_the_bias_free_part() -> None:
    conv = _dyn(rescale=True)
    plain = _dyn(rescale=False)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 1, 9, 9)
    bias = conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(conv(x, channels=(1,)) - bias, 3 * (plain(x, channels=(1,)) - bias))


def test_missing_columns_get_no_gradient() -> None:
    conv = _dyn()
    conv(torch.randn(2, 1, 9, 9), channels=(2,)).square().sum().backward()
    assert conv.weight.grad[:, :2].abs().sum() == 0
    assert conv.weight.grad[:, 2].abs().sum() > 0


@pytest.mark.parametrize("rescale", [True, False])
def test_mask_equals_index_form_per_sample(rescale: bool) -> None:
    conv = _dyn(rescale)
    names = list(SUBSETS)
    full = torch.randn(len(names), 3, 9, 9)
    mask = torch.tensor([[i in SUBSETS[n] for i in range(3)] for n in names])
    # Absent slots hold garbage: the mask form must ignore it, as if they were zero-filled.
    out = conv(full, channels=mask)
    for row, name in enumerate(names):
        idx = SUBSETS[name]
        expected = conv(full[row : row + 1, list(idx)], channels=idx)
        torch.testing.assert_close(out[row : row + 1], expected, rtol=1e-5, atol=1e-5)


def test_mask_gradients_match_index_form() -> None:
    conv = _dyn()
    x = torch.randn(2, 3, 9, 9)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    conv(x, channels=mask).sum().backward()
    grad_mask = conv.weight.grad.clone()
    conv.weight.grad = None
    (conv(x[:1, [0, 2]], channels=(0, 2)).sum() + conv(x[1:, [1]], channels=(1,)).sum()).backward()
    torch.testing.assert_close(grad_mask, conv.weight.grad, rtol=1e-5, atol=1e-5)


# --- DynamicConv2D: errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels_in_x", "channels", "match"),
    [
        (0, None, "zero channels"),
        (4, None, "only max_in_channels=3"),
        (2, (0,), "names 1 slots but the input has 2"),
        (1, (0, 1), "names 2 slots but the input has 1"),
        (2, (1, 1), "duplicate"),
        (2, (0, 3), "out-of-range"),
        (1, (-1,), "out-of-range"),
        (2, ("R", "B"), "integer slot indices"),
        (1, (True,), "not booleans"),
        (1, torch.tensor([0.0]), "1-D integer tensor"),
    ],
)
def test_index_form_errors(channels_in_x: int, channels: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _dyn()(torch.randn(1, channels_in_x, 5, 5), channels=channels)


def test_non_4d_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="4-D input"):
        _dyn()(torch.randn(3, 5, 5))


def test_mask_errors() -> None:
    conv = _dyn()
    with pytest.raises(ValueError, match=r"shape \(B, max_in_channels\)"):
        conv(torch.randn(2, 3, 5, 5), channels=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="must carry all 3 slots"):
        conv(torch.randn(2, 2, 5, 5), channels=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"rows \[1\] select zero channels"):
        conv(torch.randn(2, 3, 5, 5), channels=torch.tensor([[True, False, False], [False, False, False]]))


def test_constructor_rejects_empty_layer() -> None:
    with pytest.raises(ValueError, match="max_in_channels >= 1"):
        DynamicConv2D(0, 8, 3)


# --- DenseBlock and RRDB ---------------------------------------------------------------------------


def test_dense_block_is_conv_bn_relu_same_padding() -> None:
    block = DenseBlock(3, 6, kernel_size=5)
    assert isinstance(block.conv, nn.Conv2d) and block.conv.bias is None
    assert isinstance(block.bn, nn.BatchNorm2d) and isinstance(block.act, nn.ReLU)
    block.eval()
    x = torch.randn(2, 3, 10, 10)
    out = block(x)
    assert out.shape == (2, 6, 10, 10) and out.min() >= 0
    torch.testing.assert_close(out, F.relu(block.bn(block.conv(x))))


def test_dense_block_channels_need_dynamic() -> None:
    with pytest.raises(ValueError, match="dynamic=True"):
        DenseBlock(3, 4)(torch.randn(1, 3, 4, 4), channels=(0, 1, 2))
    dyn = DenseBlock(3, 4, dynamic=True, rescale_missing=False)
    assert isinstance(dyn.conv, DynamicConv2D) and not dyn.conv.rescale_missing
    assert dyn(torch.randn(1, 2, 4, 4), channels=(0, 2)).shape == (1, 4, 4, 4)


def test_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        DenseBlock(3, 4, activation="gelu")


def test_rrdb_structure_and_residual() -> None:
    block = RRDB(16, growth=4)
    assert [layer.conv.in_channels for layer in block.layers] == [16, 20, 24]
    assert block.fuse.in_channels == 28 and block.fuse.out_channels == 16 and block.fuse.kernel_size == (1, 1)
    x = torch.randn(2, 16, 6, 6)
    assert block(x).shape == x.shape
    nn.init.zeros_(block.fuse.weight)
    nn.init.zeros_(block.fuse.bias)
    torch.testing.assert_close(block(x), x)  # a zero branch leaves the input untouched


def test_rrdb_residual_scale() -> None:
    seed_style = RRDB(8, growth=4).eval()
    scaled = RRDB(8, growth=4, residual_scale=ESRGAN_RESIDUAL_SCALE).eval()
    scaled.load_state_dict(seed_style.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(scaled(x) - x, 0.2 * (seed_style(x) - x))


def test_rrdb_esrgan_settings() -> None:
    block = RRDB.esrgan(8, growth=4)
    assert block.residual_scale == 0.2 and len(block.layers) == 4 and block.fuse.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert all(isinstance(layer.act, nn.LeakyReLU) for layer in block.layers)
    assert block.layers[0].act.negative_slope == 0.2 and isinstance(block.fuse_act, nn.Identity)
    assert block(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)


# --- SelfAttention2d -------------------------------------------------------------------------------


def test_self_attention_is_identity_at_init() -> None:
    attn = SelfAttention2d(16)
    assert attn.gamma.item() == 0
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(attn(x), x, rtol=0, atol=0)


def test_self_attention_projections() -> None:
    attn = SelfAttention2d(64)
    assert attn.query.out_channels == attn.key.out_channels == 8 and attn.value.out_channels == 64
    assert SelfAttention2d(64, reduction=4).query.out_channels == 16


@pytest.mark.parametrize("scaled", [True, False])
def test_self_attention_matches_sagan_formula(scaled: bool) -> None:
    attn = SelfAttention2d(16, scaled=scaled)
    with torch.no_grad():
        attn.gamma.fill_(0.7)
    x = torch.randn(2, 16, 3, 5)
    n = 15
    q, k, v = (m(x).reshape(2, -1, n) for m in (attn.query, attn.key, attn.value))
    logits = torch.einsum("bci,bcj->bij", q, k) / (16**0.5 if scaled else 1.0)
    weights = logits.softmax(dim=-1)  # weights[b, i, j]: how much position i attends to j
    expected = x + 0.7 * torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape)
    torch.testing.assert_close(attn(x), expected)


def test_self_attention_gamma_learns_from_zero() -> None:
    attn = SelfAttention2d(16)
    attn(torch.randn(2, 16, 4, 4)).square().sum().backward()
    assert attn.gamma.grad is not None and attn.gamma.grad.abs().item() > 0
