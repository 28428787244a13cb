"""Official STM checkpoint layout ↔ KMN: key table, strict loading, exact output reproduction."""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision

import kmnlib
from kmnlib.config import PAPER
from kmnlib.memory import memory_read
from kmnlib.model import KMN, build_model
from kmnlib.model.stm_checkpoint import load_stm_checkpoint, stm_model_config, to_stm_state_dict
from kmnlib.model.winograd import WinogradConv2d


@pytest.fixture(scope="module")
def source() -> KMN:
    """A random-init ResNet-50 KMN whose BN statistics are randomised too, so that a mis-mapped
    BN buffer (all 0/1 in a fresh model) would change the outputs."""
    torch.manual_seed(0)
    model = build_model(stm_model_config())
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def stm_state(source: KMN) -> "OrderedDict[str, torch.Tensor]":
    return to_stm_state_dict(source, data_parallel=True)


def _official_keys() -> set[str]:
    """The official STM state-dict keys, written out from its model description (not from our table)."""
    resnet = torchvision.models.resnet50(weights=None).state_dict()
    keys: set[str] = set()
    for enc in ("Encoder_M", "Encoder_Q"):
        keys |= {f"{enc}.{k}" for k in resnet if k.startswith(("conv1.", "bn1."))}
        for ours, theirs in (("layer1.", "res2."), ("layer2.", "res3."), ("layer3.", "res4.")):
            keys |= {f"{enc}.{theirs}{k[len(ours):]}" for k in resnet if k.startswith(ours)}
        keys |= {f"{enc}.mean", f"{enc}.std"}
    keys |= {"Encoder_M.conv1_m.weight", "Encoder_M.conv1_o.weight"}
    for kv in ("KV_M_r4", "KV_Q_r4"):
        keys |= {f"{kv}.{c}.{p}" for c in ("Key", "Value") for p in ("weight", "bias")}

    def res(prefix: str) -> set[str]:
        return {f"{prefix}.{c}.{p}" for c in ("conv1", "conv2") for p in ("weight", "bias")}

    keys |= {f"Decoder.{c}.{p}" for c in ("convFM", "pred2") for p in ("weight", "bias")}
    keys |= res("Decoder.ResMM")
    for rf in ("Decoder.RF3", "Decoder.RF2"):
        keys |= {f"{rf}.convFS.weight", f"{rf}.convFS.bias"} | res(f"{rf}.ResFS") | res(f"{rf}.ResMM")
    return keys


def test_layout_matches_official_stm(source: KMN) -> None:
    state = to_stm_state_dict(source)
    assert set(state) == _official_keys()
    shapes = {"Encoder_M.conv1_m.weight": (64, 1, 7, 7), "Encoder_M.conv1_o.weight": (64, 1, 7, 7),
              "Encoder_Q.res4.5.conv3.weight": (1024, 256, 1, 1), "KV_M_r4.Key.weight": (128, 1024, 3, 3),
              "KV_Q_r4.Value.weight": (512, 1024, 3, 3), "Decoder.convFM.weight": (256, 1024, 3, 3),
              "Decoder.RF3.convFS.weight": (256, 512, 3, 3), "Decoder.RF2.convFS.weight": (256, 256, 3, 3),
              "Decoder.pred2.weight": (2, 256, 3, 3), "Encoder_M.mean": (1, 3, 1, 1)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert all(k.startswith("module.") for k in to_stm_state_dict(source, data_parallel=True))


def _run(model: KMN) -> torch.Tensor:
    """Memorise one frame with 2 objects, segment another (kernel read), return probabilities."""
    gen = torch.Generator().manual_seed(1)
    frame, query = torch.rand(1, 3, 64, 80, generator=gen), torch.rand(1, 3, 64, 80, generator=gen)
    masks = torch.zeros(2, 64, 80)
    masks[0, 8:40, 4:30] = 1
    masks[1, 20:60, 40:76] = 1
    with torch.no_grad():
        k, v = model.encode_memory(frame.expand(2, -1, -1, -1), masks, masks.flip(0))
        return model.segment(*model.encode_query(query), k[:, :, None], v[:, :, None], sigma=7.0)


@pytest.mark.parametrize("data_parallel", [True, False])
def test_round_trip_reproduces_outputs_exactly(source: KMN, data_parallel: bool, tmp_path) -> None:
    path = tmp_path / "STM_weights.pth"
    torch.save(to_stm_state_dict(source, data_parallel=data_parallel), path)
    loaded = kmnlib.load_stm_checkpoint(path, inference=None)   # the raw network
    assert not loaded.training and loaded.cfg.backbone == "resnet50"
    for (k1, a), (k2, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(a, b), k1
    assert torch.equal(_run(loaded), _run(source))
    # The inverse gives back the very same official-layout dict.
    again = to_stm_state_dict(loaded, data_parallel=data_parallel)
    original = torch.load(path, weights_only=True)
    assert list(again) == list(original)
    assert all(torch.equal(again[k], original[k]) for k in original)


def _has(model: torch.nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def test_default_load_is_prepared_for_inference(source: KMN, stm_state) -> None:
    fast = load_stm_checkpoint(stm_state)                      # the documented path
    raw = load_stm_checkpoint(stm_state, inference=None)
    assert not fast.training and not raw.training
    assert not _has(fast, torch.nn.BatchNorm2d) and _has(fast, WinogradConv2d)
    assert _has(raw, torch.nn.BatchNorm2d) and not _has(raw, WinogradConv2d)
    # The switches of the config given are honoured: folded only.
    folded = load_stm_checkpoint(stm_state, inference=replace(PAPER.inference, winograd=False))
    assert not _has(folded, torch.nn.BatchNorm2d) and not _has(folded, WinogradConv2d)
    # Another computation, the same probabilities (tests/test_optimisations.py's bound).
    assert (_run(fast) - _run(source)).abs().max() <= 1e-4


def _official_stm_probs(state: dict[str, torch.Tensor], frame: torch.Tensor, masks: torch.Tensor,
                       other: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """STM's forward written out from its paper/model description, reading weights by their official
    names only — an independent check that our modules mean what the official keys mean."""
    def conv(x: torch.Tensor, name: str, **kw) -> torch.Tensor:
        return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), **kw)

    def encoder(enc: str, x: torch.Tensor, m: torch.Tensor | None = None, o: torch.Tensor | None = None):
        net = torchvision.models.resnet50(weights=None).eval()
        renames = {"res2.": "layer1.", "res3.": "layer2.", "res4.": "layer3."}
        sub = {}
        for k, v in state.items():
            if k.startswith(f"{enc}.") and not k.startswith((f"{enc}.conv1_", f"{enc}.mean", f"{enc}.std")):
                k = k[len(enc) + 1:]
                for a, b in renames.items():
                    k = b + k[len(a):] if k.startswith(a) else k
                sub[k] = v
        missing, _ = net.load_state_dict(sub, strict=False)
        assert all(k.startswith(("layer4.", "fc.")) for k in missing)
        y = net.conv1((x - state[f"{enc}.mean"]) / state[f"{enc}.std"])
        if m is not None:  # memory encoder: mask and other-objects branches, 7x7/2, summed before bn1
            y = y + conv(m[:, None], f"{enc}.conv1_m", stride=2, padding=3)
            y = y + conv(o[:, None], f"{enc}.conv1_o", stride=2, padding=3)
        r2 = net.layer1(net.maxpool(net.relu(net.bn1(y))))
        r3 = net.layer2(r2)
        return net.layer3(r3), r3, r2

    def res_block(x: torch.Tensor, name: str) -> torch.Tensor:
        return x + conv(F.relu(conv(F.relu(x), f"{name}.conv1", padding=1)), f"{name}.conv2", padding=1)

    def refine(f: torch.Tensor, pm: torch.Tensor, name: str) -> torch.Tensor:
        s = res_block(conv(f, f"{name}.convFS", padding=1), f"{name}.ResFS")
        up = F.interpolate(pm, scale_factor=2, mode="bilinear", align_corners=False)
        return res_block(s + up, f"{name}.ResMM")

    n = masks.shape[0]
    with torch.no_grad():
        m4, _, _ = encoder("Encoder_M", frame.expand(n, -1, -1, -1), masks, other)
        mk, mv = conv(m4, "KV_M_r4.Key", padding=1), conv(m4, "KV_M_r4.Value", padding=1)
        q4, q3, q2 = encoder("Encoder_Q", query)
        qk, qv = conv(q4, "KV_Q_r4.Key", padding=1), conv(q4, "KV_Q_r4.Value", padding=1)
        qk, qv, q3, q2 = (t.expand(n, -1, -1, -1) for t in (qk, qv, q3, q2))
        read = memory_read(mk[:, :, None], mv[:, :, None], qk, sigma=None)
        x = res_block(conv(torch.cat([read, qv], 1), "Decoder.convFM", padding=1), "Decoder.ResMM")
        x = refine(q2, refine(q3, x, "Decoder.RF3"), "Decoder.RF2")
        p = conv(F.relu(x), "Decoder.pred2", padding=1)
        p = F.interpolate(p, scale_factor=4, mode="bilinear", align_corners=False)
        return F.softmax(p, dim=1)[:, 1]


def test_loaded_model_computes_what_the_official_keys_mean(source: KMN) -> None:
    state = to_stm_state_dict(source)
    model = load_stm_checkpoint(state, inference=None)
    gen = torch.Generator().manual_seed(2)
    frame, query = torch.rand(1, 3, 48, 64, generator=gen), torch.rand(1, 3, 48, 64, generator=gen)
    masks = torch.zeros(2, 48, 64)
    masks[0, 4:30, 2:28] = 1
    masks[1, 16:44, 30:60] = 1
    other = masks.flip(0)
    expected = _official_stm_probs(state, frame, masks, other, query)
    with torch.no_grad():
        k, v = model.encode_memory(frame.expand(2, -1, -1, -1), masks, other)
        probs = model.segment(*model.encode_query(query), k[:, :, None], v[:, :, None], sigma=None)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    assert probs.std() > 1e-3  # a non-degenerate output, so the comparison means something


def test_missing_key_is_named(stm_state) -> None:
    state = OrderedDict(stm_state)
    del state["module.Decoder.RF2.ResFS.conv2.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): Decoder\.RF2\.ResFS\.conv2\.bias"):
        load_stm_checkpoint(state)


def test_unexpected_key_is_named(stm_state) -> None:
    state = OrderedDict(stm_state)
    state["module.Decoder.pred3.weight"] = torch.zeros(2, 256, 3, 3)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): module\.Decoder\.pred3\.weight"):
        load_stm_checkpoint(state)


def test_wrong_shape_is_named(stm_state) -> None:
    state = OrderedDict(stm_state)
    state["module.KV_Q_r4.Key.weight"] = torch.zeros(64, 1024, 3, 3)
    with pytest.raises(ValueError, match=r"wrong shapes \(1\): module\.KV_Q_r4\.Key\.weight: "
                                         r"checkpoint \(64, 1024, 3, 3\) vs model \(128, 1024, 3, 3\)"):
        load_stm_checkpoint(state)


def test_error_names_the_file(stm_state, tmp_path) -> None:
    state = OrderedDict(stm_state)
    del state["module.Encoder_M.conv1_m.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: .*missing keys \(1\): Encoder_M\.conv1_m\.weight"):
        load_stm_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_stm_checkpoint(tmp_path / "nope.pth")


def test_tolerated_absences_and_checked_constants(source: KMN, stm_state) -> None:
    # Files from old PyTorch lack BN counters; the ImageNet mean/std buffers are constants.
    state = OrderedDict((k, v) for k, v in stm_state.items()
                        if not k.endswith(("num_batches_tracked", ".mean", ".std")))
    assert len(state) < len(stm_state)
    assert torch.equal(_run(load_stm_checkpoint(state, inference=None)), _run(source))
    bad = OrderedDict(stm_state)
    bad["module.Encoder_Q.std"] = torch.ones(1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"wrong constants \(1\): module\.Encoder_Q\.std"):
        load_stm_checkpoint(bad)


def test_lite0_has_no_stm_layout() -> None:
    from kmnlib.config import TEST

    with pytest.raises(ValueError, match="efficientnet_lite0"):
        to_stm_state_dict(build_model(TEST.model))
