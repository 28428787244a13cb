"""Every optimisation that changes the computation gives the same outputs on real frames:
BatchNorm folded vs not, channels-last vs contiguous weights, Winograd vs direct convolutions
(probabilities within 1e-4);
bf16 autocast is opt-in and only close (its accuracy on DAVIS is in benchmarks/README.md)."""
from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch

from kmnlib.checkpoints import load_model, save_checkpoint
from kmnlib.config import MINI, PAPER, TEST
from kmnlib.data import DAVISDataset, frames_to_tensor
from kmnlib.inference import segment_video
from kmnlib.model import build_model
from kmnlib.model.fold import fold_batchnorm
from kmnlib.model.ops import resize_frames, resize_labels
from kmnlib.model.prepare import prepare_for_inference
from kmnlib.model.winograd import MIN_CHANNELS, WinogradConv2d, winograd_convolutions

CONFIGS = {"lite0": MINI.model, "resnet50": replace(PAPER.model, pretrained=False)}


@pytest.fixture(scope="module")
def clip(davis_root):
    seq = DAVISDataset(davis_root, "2016", "val", "480p")["blackswan"]
    frames = resize_frames(frames_to_tensor(seq.load_frames(range(6))), 160)
    mask = resize_labels(torch.from_numpy(seq.load_mask(0)).long(), tuple(frames.shape[-2:]))
    return frames, mask


def _model(name: str, memory_format: str = "channels_last") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(replace(CONFIGS[name], memory_format=memory_format)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has work to do
        g = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.5, 2.0, generator=g))
    return model


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.mark.parametrize("name", list(CONFIGS))
def test_folded_batchnorm_gives_the_same_probabilities(clip, name) -> None:
    frames, mask = clip
    model = _model(name)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    for sigma in (None, 3.5):
        a, _ = segment_video(model, frames, mask, sigma=sigma, mem_every=5)
        b, _ = segment_video(folded, frames, mask, sigma=sigma, mem_every=5)
        assert (a - b).abs().max() <= 1e-4
        assert (a[1:] - a[1:].mean()).abs().max() > 1e-3  # the outputs are not trivial


@pytest.mark.parametrize("name", list(CONFIGS))
def test_channels_last_gives_the_same_probabilities(clip, name) -> None:
    frames, mask = clip
    cl = _model(name, "channels_last")
    plain = _model(name, "contiguous")
    plain.load_state_dict(cl.state_dict())
    assert cl.query_encoder.trunk.stem_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.query_encoder.trunk.stem_conv.weight.is_contiguous(
        memory_format=torch.channels_last)
    a, _ = segment_video(cl, frames, mask, sigma=3.5, mem_every=5)
    b, _ = segment_video(plain, frames, mask, sigma=3.5, mem_every=5)
    assert (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_winograd_gives_the_same_probabilities(clip, name) -> None:
    frames, mask = clip
    direct = fold_batchnorm(_model(name))
    # The mini widths are below MIN_CHANNELS (where Winograd loses here): convert every width.
    fast = winograd_convolutions(direct, min_channels=MIN_CHANNELS if name == "resnet50" else 1)
    converted = sum(isinstance(m, WinogradConv2d) for m in fast.modules())
    assert converted >= (30 if name == "resnet50" else 10)
    assert not any(isinstance(m, WinogradConv2d) for m in direct.modules())
    for sigma in (None, 3.5):
        a, _ = segment_video(direct, frames, mask, sigma=sigma, mem_every=5)
        b, _ = segment_video(fast, frames, mask, sigma=sigma, mem_every=5)
        assert 0 < (a - b).abs().max() <= 1e-4      # another computation, the same probabilities


def test_prepare_for_inference_applies_what_the_config_asks() -> None:
    model = _model("resnet50")
    both = prepare_for_inference(model, PAPER.inference)
    assert not both.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in both.modules())
    assert any(isinstance(m, WinogradConv2d) for m in both.modules())
    neither = prepare_for_inference(model, replace(PAPER.inference, fold_batchnorm=False,
                                                   winograd=False))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in neither.modules())
    assert not any(isinstance(m, WinogradConv2d) for m in neither.modules())
    assert not any(isinstance(m, WinogradConv2d) for m in model.modules())   # original untouched
    assert both.state_dict().keys() == fold_batchnorm(model).state_dict().keys()


def test_bf16_autocast_is_close_but_not_equal(clip) -> None:
    frames, mask = clip
    model = fold_batchnorm(_model("lite0"))
    a, la = segment_video(model, frames, mask, sigma=3.5, mem_every=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b, lb = segment_video(model, frames, mask, sigma=3.5, mem_every=5)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-4          # it is a different computation …
    assert (la == lb).float().mean() > 0.97    # … whose labels mostly agree


def test_prepare_for_inference_in_place_keeps_one_network() -> None:
    model = _model("resnet50")
    expected = prepare_for_inference(model, PAPER.inference)
    same = prepare_for_inference(model, PAPER.inference, in_place=True)
    assert same is model and not same.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(expected.encode_query(x)[1], same.encode_query(x)[1])


def _has(model: torch.nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def test_load_model_is_prepared_for_inference_unless_asked_otherwise(clip, tmp_path) -> None:
    # The test widths with a decoder wide enough for Winograd (MIN_CHANNELS), no ImageNet file.
    cfg = replace(TEST.model, decoder_dim=MIN_CHANNELS, pretrained=False)
    torch.manual_seed(0)
    trained = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has work to do
        for m in trained.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    path = save_checkpoint(tmp_path / "net.pt", {"model": trained.state_dict(),
                                                 "profile": {"model": asdict(cfg)}})
    fast = load_model(path)                    # the documented path: the fast network
    raw = load_model(path, inference=None)     # the network as trained
    assert not fast.training and not raw.training
    assert not _has(fast, torch.nn.BatchNorm2d) and _has(fast, WinogradConv2d)
    assert _has(raw, torch.nn.BatchNorm2d) and not _has(raw, WinogradConv2d)
    assert raw.state_dict().keys() == trained.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(),
                                                 trained.state_dict().values()))
    folded = load_model(path, inference=replace(PAPER.inference, winograd=False))  # as asked
    assert not _has(folded, torch.nn.BatchNorm2d) and not _has(folded, WinogradConv2d)
    frames, mask = clip
    a, _ = segment_video(raw, frames[:3], mask, sigma=3.5, mem_every=5)
    b, _ = segment_video(fast, frames[:3], mask, sigma=3.5, mem_every=5)
    assert (a - b).abs().max() <= 1e-4
