"""Winograd F(4×4, 3×3) convolutions (kmnlib.model.winograd) against a float64 direct convolution,
and where they stand aside. Through the whole network on real frames: tests/test_optimisations.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kmnlib.model import winograd
from kmnlib.model.winograd import WinogradConv2d, eligible, winograd_conv3x3, winograd_convolutions


def _case(n: int, c: int, k: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
    bias = torch.randn(k, generator=g)
    return x, weight, bias


@pytest.mark.parametrize("n,c,k,h,w", [(1, 32, 48, 16, 24),   # whole tiles
                                       (2, 24, 8, 13, 7),     # batch 2, partial tiles, H > W
                                       (1, 3, 5, 1, 1),       # smaller than one tile
                                       (1, 64, 64, 30, 54)])  # a 1/16 grid of a 480p frame
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_the_float64_convolution(n, c, k, h, w, with_bias) -> None:
    x, weight, bias = _case(n, c, k, h, w)
    bias = bias if with_bias else None
    ref = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    out = winograd_conv3x3(x, weight, bias)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    # F(4,3)'s transforms cost precision: ~1e-5 of the output's scale (a direct float32 conv ~1e-6)
    assert (out.double() - ref).abs().max() <= 5e-5 * ref.abs().max()
    cl = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), weight, bias)
    assert torch.equal(cl, out)                      # the input's layout does not matter


def test_strips_cover_every_tile_row(monkeypatch) -> None:
    x, weight, bias = _case(2, 16, 16, 22, 18, seed=1)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    monkeypatch.setattr(winograd, "STRIP_BYTES", 1)  # one tile row per strip: 6 strips
    monkeypatch.setattr(winograd, "MIN_STRIP_TILES", 1)
    out = winograd_conv3x3(x, weight, bias)
    assert (out.double() - ref).abs().max() <= 5e-5 * ref.abs().max()


def test_which_convolutions_are_converted() -> None:
    plain = nn.Conv2d(128, 128, 3, padding=1)
    assert eligible(plain, min_channels=128)
    assert not eligible(nn.Conv2d(64, 128, 3, padding=1), min_channels=128)   # too thin
    assert not eligible(nn.Conv2d(256, 2, 3, padding=1), min_channels=128)    # e.g. the mask head
    for other in (nn.Conv2d(128, 128, 3, padding=1, stride=2), nn.Conv2d(128, 128, 1),
                  nn.Conv2d(128, 128, 3, padding=2, dilation=2), nn.Conv2d(128, 128, 3, padding=0),
                  nn.Conv2d(128, 128, 3, padding=1, groups=128),
                  nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect")):
        assert not eligible(other, min_channels=1)
        with pytest.raises(ValueError, match="not a 3x3, stride-1, padding-1"):
            WinogradConv2d.from_conv(other)
    with pytest.raises(ValueError, match=r"must be \(K, 4, 3, 3\)"):
        winograd_conv3x3(torch.zeros(1, 4, 8, 8), torch.zeros(2, 3, 3, 3))


def test_converted_model_shares_parameters_and_state_dict() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                          nn.Conv2d(128, 2, 3, padding=1))
    fast = winograd_convolutions(model)
    assert [type(m) for m in fast] == [nn.Conv2d, nn.ReLU, WinogradConv2d, nn.Conv2d]
    assert type(model[2]) is nn.Conv2d                # the original is left as it was
    assert fast.state_dict().keys() == model.state_dict().keys()
    assert torch.equal(fast[2].weight, model[2].weight)
    x = torch.randn(1, 8, 20, 12)
    with torch.no_grad():
        a, b = model(x), fast(x)
    assert 0 < (a - b).abs().max() <= 5e-5 * a.abs().max()   # a different computation, same result


def test_stands_aside_under_autocast_and_for_other_dtypes() -> None:
    conv = nn.Conv2d(128, 128, 3, padding=1)
    fast = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 128, 8, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), conv(x))          # bf16 autocast: the direct (AMX) convolution
    with torch.no_grad():
        assert torch.equal(fast.double()(x.double()), conv.double()(x.double()))
        assert not torch.equal(fast.float()(x), conv.float()(x))   # float32 on CPU: Winograd
