"""kmnlib.argmax.argmax_last against PyTorch's own arg-max, on inputs built to break it."""
from __future__ import annotations

import pytest
import torch

from kmnlib.argmax import argmax_last

from conftest import hard_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7, 5), (2, 30, 17), (1, 700, 405), (2, 300, 1620)])
def test_equals_torch_first_maximum(shape, dtype):
    x = hard_rows(shape, dtype)
    want = x.max(dim=-1).indices
    assert torch.equal(want, x.argmax(dim=-1))        # the rule both follow: the first maximum
    with torch.inference_mode():
        got = argmax_last(x)
        assert torch.equal(got, want) and got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(argmax_last(x), want)


def test_non_contiguous_and_grad_inputs():
    x = torch.randn(40, 30, generator=torch.Generator().manual_seed(2))
    assert torch.equal(argmax_last(x.t()), x.t().max(dim=-1).indices)     # strided rows
    leaf = x.clone().requires_grad_(True)
    assert torch.equal(argmax_last(leaf), x.max(dim=-1).indices)          # PyTorch's path
    assert torch.equal(argmax_last(x.half()), x.half().max(dim=-1).indices)
