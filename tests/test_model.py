"""The network (kmnlib.model): shapes, local ImageNet weights, BN freezing, padding, soft aggregation."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kmnlib.config import IMAGENET_MEAN, IMAGENET_STD, PAPER, TEST, ModelConfig
from kmnlib.memory import memory_read
from kmnlib.model import KMN, build_model, pad_divide_by, soft_aggregate, unpad
from kmnlib.model.backbones import (INPUT_NORMALISATION, RESNET50_ENV, build_trunk,
                                    input_normalisation, lite0_default_weights,
                                    lite0_timm_state_dict)
from kmnlib.training.batches import clip_fill

LITE0 = TEST.model  # ImageNet Lite0 from the installed package, tiny heads
R50 = replace(PAPER.model, pretrained=False, weights=None)  # STM widths, random init (no file here)


@pytest.fixture(scope="module")
def models() -> dict[str, KMN]:
    torch.manual_seed(0)
    return {"efficientnet_lite0": build_model(LITE0).eval(), "resnet50": build_model(R50).eval()}


def _masks(n: int, h: int, w: int) -> torch.Tensor:
    """n disjoint rectangles as (n,H,W) float masks."""
    m = torch.zeros(n, h, w)
    for i in range(n):
        m[i, h // 8: h // 2, (i * w) // n: ((i + 1) * w) // n] = 1
    return m


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50"])
@pytest.mark.parametrize("h,w,n", [(64, 96, 1), (64, 96, 3), (96, 160, 2)])
def test_shapes(models: dict[str, KMN], backbone: str, h: int, w: int, n: int) -> None:
    model = models[backbone]
    cfg = model.cfg
    c4, c8, _ = model.query_encoder.trunk.channels
    torch.manual_seed(1)
    frame = torch.rand(1, 3, h, w)
    masks = _masks(n, h, w)
    other = (masks.sum(0, keepdim=True) - masks).clamp(0, 1)
    with torch.no_grad():
        key, value = model.encode_memory(frame.expand(n, -1, -1, -1), masks, other)
        qk, qv, f8, f4 = model.encode_query(frame)
        mem_k = torch.stack([key, key], dim=2)  # T = 2 memory frames
        mem_v = torch.stack([value, value], dim=2)
        probs = model.segment(qk, qv, f8, f4, mem_k, mem_v, sigma=7.0)
        logits = model.decode(memory_read(mem_k, mem_v, qk.expand(n, -1, -1, -1), sigma=7.0), qv.expand(n, -1, -1, -1),
                              f8.expand(n, -1, -1, -1), f4.expand(n, -1, -1, -1))
    assert key.shape == (n, cfg.key_dim, h // 16, w // 16)
    assert value.shape == (n, cfg.value_dim, h // 16, w // 16)
    assert (model.key_dim, model.value_dim) == (cfg.key_dim, cfg.value_dim)
    assert qk.shape == (1, cfg.key_dim, h // 16, w // 16) and qv.shape == (1, cfg.value_dim, h // 16, w // 16)
    assert f8.shape == (1, c8, h // 8, w // 8) and f4.shape == (1, c4, h // 4, w // 4)
    assert logits.shape == (n, 2, h, w)
    assert probs.shape == (n, h, w)
    assert torch.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    # segment() is softmax(decode(memory_read(...)))[:, 1] with the query broadcast to N.
    torch.testing.assert_close(probs, F.softmax(logits, dim=1)[:, 1])


def test_backbone_widths(models: dict[str, KMN]) -> None:
    assert models["resnet50"].query_encoder.trunk.channels == (256, 512, 1024)
    assert models["efficientnet_lite0"].query_encoder.trunk.channels == (24, 40, 112)
    assert models["resnet50"].memory_encoder.conv_mask.weight.shape == (64, 1, 7, 7)
    assert models["efficientnet_lite0"].memory_encoder.conv_other.weight.shape == (32, 1, 3, 3)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50"])
def test_memory_encoder_uses_both_masks(models: dict[str, KMN], backbone: str) -> None:
    model = models[backbone]
    frame = torch.rand(1, 3, 64, 64)
    m = _masks(1, 64, 64)
    zero = torch.zeros_like(m)
    with torch.no_grad():
        base = model.encode_memory(frame, zero, zero)[1]
        with_mask = model.encode_memory(frame, m, zero)[1]
        with_other = model.encode_memory(frame, zero, m)[1]
    assert not torch.allclose(base, with_mask) and not torch.allclose(base, with_other)
    assert not torch.allclose(with_mask, with_other)  # two distinct branches


def test_segment_objects_are_independent(models: dict[str, KMN]) -> None:
    """N objects in one batch give the same result as N separate single-object calls."""
    model = models["efficientnet_lite0"]
    torch.manual_seed(2)
    frame, query = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    masks = _masks(3, 64, 96)
    other = (masks.sum(0, keepdim=True) - masks).clamp(0, 1)
    with torch.no_grad():
        k, v = model.encode_memory(frame.expand(3, -1, -1, -1), masks, other)
        q = model.encode_query(query)
        together = model.segment(*q, k[:, :, None], v[:, :, None], sigma=None)
        alone = torch.cat([model.segment(*q, k[i:i + 1, :, None], v[i:i + 1, :, None], sigma=None)
                           for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])  # the memories differ, so do the answers


def test_bad_inputs_fail_clearly(models: dict[str, KMN]) -> None:
    model = models["efficientnet_lite0"]
    with pytest.raises(ValueError, match="multiple of 16"):
        model.encode_query(torch.rand(1, 3, 60, 96))
    with pytest.raises(ValueError, match=r"\(B,H,W\)"):
        model.encode_memory(torch.rand(2, 3, 64, 64), torch.zeros(1, 64, 64), torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="backbone"):
        build_model(ModelConfig(backbone="vgg16"))


# --- local ImageNet weights ----------------------------------------------------------------------

def test_lite0_weights_map_onto_timm_and_classify_a_cat() -> None:
    import timm
    from skimage.data import chelsea

    path = lite0_default_weights()
    src = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    mapped = lite0_timm_state_dict(path, net.state_dict())
    # Every checkpoint tensor lands, each exactly once, on a timm tensor of the same shape.
    assert list(mapped) == list(net.state_dict())
    assert len(mapped) == len(src)
    for (_, a), (_, b) in zip(src.items(), mapped.items()):
        assert a is b or torch.equal(a, b)
    net.load_state_dict(mapped, strict=True)

    img = torch.from_numpy(chelsea()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False)
    mean, std = input_normalisation("efficientnet_lite0")
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        top = int(net(x).argmax())
    assert 281 <= top <= 285, f"Chelsea classified as ImageNet class {top}, not a cat (281-285)"


def _stem_variance_ratio(trunk, frames: torch.Tensor, mean, std) -> float:
    """Median over channels of (batch variance of the stem BatchNorm's input on ``frames``) /
    (its frozen running variance): 1 when the input is what the weights were trained on."""
    x = (frames - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        y = trunk.stem_conv(x)
    return float((y.var(dim=(0, 2, 3)) / trunk.bn1.running_var).median())


def _real_frames(davis_root) -> torch.Tensor:
    from kmnlib.data import DAVISDataset, frames_to_tensor

    ds = DAVISDataset(davis_root, "2016", "val", "480p")
    return torch.cat([frames_to_tensor(ds[n].load_frames([0, len(ds[n]) // 2]))
                      for n in ds.names[::4]])


def test_input_normalisation_matches_the_stem_statistics_on_real_frames(davis_root) -> None:
    """Each backbone whose real ImageNet weights are on this machine sees, through its own input
    normalisation, stem activations with the variance its frozen BatchNorm expects (factor 2)."""
    frames = _real_frames(davis_root)
    checked = []
    for backbone in INPUT_NORMALISATION:
        cfg = ModelConfig(backbone=backbone)
        try:
            trunk = build_trunk(cfg).eval()
        except FileNotFoundError:  # ResNet-50 weights are a local file a user provides
            continue
        mean, std = input_normalisation(backbone)
        ratio = _stem_variance_ratio(trunk, frames, mean, std)
        assert 0.5 <= ratio <= 2.0, (backbone, ratio)
        checked.append(backbone)
        # The wrong statistics are detectable: Lite0 with ImageNet's is ~3x off.
        if backbone == "efficientnet_lite0":
            assert _stem_variance_ratio(trunk, frames, IMAGENET_MEAN, IMAGENET_STD) > 2.5
    assert "efficientnet_lite0" in checked


def test_encoders_normalise_as_the_backbone_expects(models: dict[str, KMN]) -> None:
    for backbone, model in models.items():
        mean, std = input_normalisation(backbone)
        for enc in (model.memory_encoder, model.query_encoder):
            assert enc.normalise.mean.flatten().tolist() == pytest.approx(list(mean))
            assert enc.normalise.std.flatten().tolist() == pytest.approx(list(std))
        # The Hide-and-Seek / border fill is that mean: normalised, it is exactly "nothing" (0).
        fill = torch.tensor(clip_fill(PAPER if backbone == "resnet50" else TEST)).view(1, 3, 1, 1)
        assert torch.equal(model.query_encoder.normalise(fill), torch.zeros(1, 3, 1, 1))
    assert input_normalisation("resnet50") == (IMAGENET_MEAN, IMAGENET_STD)  # STM checkpoints


def test_lite0_trunks_carry_the_imagenet_weights(models: dict[str, KMN]) -> None:
    src = torch.load(lite0_default_weights(), map_location="cpu", weights_only=True)
    model = models["efficientnet_lite0"]
    for enc in (model.memory_encoder, model.query_encoder):
        assert torch.equal(enc.trunk.conv_stem.weight, src["_conv_stem.weight"])
        assert torch.equal(enc.trunk.bn1.running_var, src["_bn0.running_var"])
    # Last kept block (stride 16, 112 ch): lukemelas block index 10 is timm's blocks[4][2].
    assert torch.equal(model.query_encoder.trunk.blocks[4][2].conv_pwl.weight,
                       src["_blocks.10._project_conv.weight"])


def test_lite0_weights_bad_file(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match=str(bad)):
        lite0_timm_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(replace(LITE0, weights=str(tmp_path / "nope.pth")))


def test_resnet50_missing_weights_error(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(RESNET50_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        build_model(ModelConfig(backbone="resnet50", pretrained=True))
    msg = str(err.value)
    for needed in ("resnet50-0676ba61.pth", "IMAGENET1K_V1", RESNET50_ENV, "ModelConfig.weights",
                   "Nothing is downloaded"):
        assert needed in msg
    missing = tmp_path / "resnet50-0676ba61.pth"
    monkeypatch.setenv(RESNET50_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_model(ModelConfig(backbone="resnet50", pretrained=True))
    missing.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(missing)):
        build_model(ModelConfig(backbone="resnet50", pretrained=True))


def test_resnet50_weights_file_is_used(monkeypatch, tmp_path) -> None:
    """A torchvision-format ResNet-50 state dict (here random, saved by the test) lands in both trunks."""
    import torchvision

    torch.manual_seed(3)
    ref = torchvision.models.resnet50(weights=None)
    ref.layer3[5].bn3.running_mean.uniform_()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(ref.state_dict(), path)
    monkeypatch.setenv(RESNET50_ENV, str(path))
    # Contiguous layout: channels-last changes float rounding (tests/test_optimisations.py).
    model = build_model(replace(PAPER.model, pretrained=True, weights=None,
                                memory_format="contiguous"))
    for enc in (model.memory_encoder, model.query_encoder):
        assert torch.equal(enc.trunk.conv1.weight, ref.conv1.weight)
        assert torch.equal(enc.trunk.layer3[5].bn3.running_mean, ref.layer3[5].bn3.running_mean)
    # The query trunk is exactly torchvision's ResNet-50 up to layer3.
    ref.eval()
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        r = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        expected = ref.layer3(ref.layer2(ref.layer1(r)))
        torch.testing.assert_close(model.query_encoder.trunk(x)[0], expected)


# --- BatchNorm freezing ---------------------------------------------------------------------------

def test_freeze_bn_survives_train() -> None:
    model = build_model(LITE0)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns
    model.train()
    assert all(m.training for m in bns)
    model.freeze_bn()
    assert model.training and not any(m.training for m in bns)
    model.eval()
    model.train()
    assert model.training and model.decoder.training and not any(m.training for m in bns)
    # Running statistics really stay put during a training-mode forward pass.
    before = bns[0].running_mean.clone()
    model.encode_query(torch.rand(2, 3, 64, 64))
    assert torch.equal(bns[0].running_mean, before)


# --- padding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(480, 854), (240, 427), (17, 31), (64, 96)])
def test_pad_unpad_round_trip(h: int, w: int) -> None:
    x = torch.rand(2, 3, h, w) + 1  # strictly positive, so zeros mark the padding
    padded, pad = pad_divide_by(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert padded.shape[-2] - h < 16 and padded.shape[-1] - w < 16
    lw, uw, lh, uh = pad
    assert lw + uw == padded.shape[-1] - w and lh + uh == padded.shape[-2] - h
    assert lh == (padded.shape[-2] - h) // 2 and lw == (padded.shape[-1] - w) // 2  # extra pixel after
    assert torch.equal(padded[..., lh:lh + h, lw:lw + w], x)
    assert float(padded.sum()) == pytest.approx(float(x.sum()), rel=1e-6)  # padding is zeros
    assert torch.equal(unpad(padded, pad), x)


def test_pad_placement_and_integer_maps() -> None:
    labels = torch.ones(17, 31, dtype=torch.uint8)
    padded, pad = pad_divide_by(labels, 16)
    assert pad == (0, 1, 7, 8)  # 31→32: nothing left, 1 right; 17→32: 7 top, 8 bottom
    rows, cols = padded.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (7, 23, 0, 30)
    assert padded.dtype == torch.uint8
    same, none = pad_divide_by(torch.rand(3, 32, 48))
    assert none == (0, 0, 0, 0) and same.shape == (3, 32, 48)


# --- soft aggregation ----------------------------------------------------------------------------

def test_soft_aggregate_properties() -> None:
    gen = torch.Generator().manual_seed(4)
    ps = torch.rand(3, 8, 9, generator=gen) * 0.98 + 0.01
    logits = soft_aggregate(ps)
    assert logits.shape == (4, 8, 9)
    merged = F.softmax(logits, dim=0)
    torch.testing.assert_close(merged.sum(0), torch.ones(8, 9))
    # Before normalisation each channel's odds are the stacked probabilities: sigmoid(logit) = p.
    torch.testing.assert_close(torch.sigmoid(logits[0]), torch.prod(1 - ps, dim=0))
    torch.testing.assert_close(torch.sigmoid(logits[1:]), ps)
    # Batched variant: objects on dim -3.
    batched = soft_aggregate(torch.stack([ps, ps.flip(0)]))
    assert batched.shape == (2, 4, 8, 9)
    torch.testing.assert_close(batched[0], logits)


def test_soft_aggregate_single_object_is_two_way_logit() -> None:
    p = torch.linspace(0.001, 0.999, 50).view(1, 5, 10)
    logits = soft_aggregate(p)
    torch.testing.assert_close(logits[1], torch.log(p[0] / (1 - p[0])))
    torch.testing.assert_close(logits[0], -logits[1])
    # so the 2-way merge ranks pixels exactly as p does (fg wins iff p > 0.5)
    assert torch.equal(F.softmax(logits, 0).argmax(0) == 1, p[0] > 0.5)


def test_soft_aggregate_monotone_and_clamped() -> None:
    base = torch.tensor([0.3, 0.6]).view(2, 1, 1)
    prev = None
    for p0 in np.linspace(0.05, 0.95, 10):
        ps = base.clone()
        ps[0] = float(p0)
        merged = F.softmax(soft_aggregate(ps), dim=0)[:, 0, 0]
        if prev is not None:
            assert merged[1] > prev[1]  # raising p_1 raises object 1's share
            assert merged[0] < prev[0]  # and lowers the background's
        prev = merged
    certain = soft_aggregate(torch.tensor([[[0.0, 1.0]]]))
    assert torch.isfinite(certain).all()
    with pytest.raises(ValueError, match="soft_aggregate"):
        soft_aggregate(torch.rand(5, 5))
