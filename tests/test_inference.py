"""Video inference (kmnlib.inference) on real DAVIS-2016 frames at low resolution, random weights.

The centre piece re-implements the official STM evaluation loop (``Run_video`` of
github.com/seoungwugoh/STM ``eval_DAVIS.py`` with its model's ``memorize``/``segment``: K = 11 padded
object channels, soft aggregation over all K, ``this_keys = cat(keys, prev_key)``, ``to_memorize``)
literally, on our network's building blocks loaded through the STM state-dict layout, and requires
``segment_video(sigma=None)`` to give the same per-frame probabilities to 1e-4.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kmnlib.config import TEST, resolve_data_root
from kmnlib.data.davis import DAVISDataset
from kmnlib.data.masks import read_label_map
from kmnlib.data.video import SequenceList, VideoSequence, frames_to_tensor
from kmnlib.propagation import ReadTrace
from kmnlib.inference import labels_from_probs, segment_video
from kmnlib.memory_bank import memory_schedule
from kmnlib.predict import run_dataset
from kmnlib.model.network import KMN
from kmnlib.model.stm_checkpoint import load_stm_checkpoint, stm_model_config, to_stm_state_dict

DAVIS16 = resolve_data_root() / "DAVIS-2016"
pytestmark = pytest.mark.skipif(not DAVIS16.is_dir(),
                                reason="DAVIS-2016 not linked (run `make data`)")

SIZE = (109, 187)  # not multiples of 16, odd padding on both axes: exercises the centred pad


def _clip(n_frames: int, size=SIZE, name: str = "blackswan"):
    """First frames of a real DAVIS-2016 val sequence, downsized; first mask nearest-resized."""
    seq = DAVISDataset(DAVIS16, year="2016", split="val", resolution="480p")[name]
    frames = F.interpolate(frames_to_tensor(seq.load_frames(range(n_frames))), size=size,
                           mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    mask = torch.from_numpy(seq.load_mask(0).astype(np.int64))
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    assert mask.max() == 1
    return frames, mask


def _two_objects(mask: torch.Tensor) -> torch.Tensor:
    """Split the single DAVIS-2016 object into a left (1) and right (2) object at its mean column."""
    cols = torch.nonzero(mask)[:, 1].float().mean().round().long()
    out = mask.clone()
    out[:, cols:] *= 2
    assert set(torch.unique(out).tolist()) == {0, 1, 2}
    return out


@pytest.fixture(scope="module")
def lite_model() -> KMN:
    torch.manual_seed(0)
    return KMN(replace(TEST.model, pretrained=False)).eval()


# --- a literal re-implementation of the official STM evaluation ------------------------------------

K_OFFICIAL = 11  # DAVIS_MO_Test's number of one-hot channels


def _official_pad(in_list, d, in_size):
    h, w = in_size
    new_h = h + d - h % d if h % d > 0 else h
    new_w = w + d - w % d if w % d > 0 else w
    lh, uh = int((new_h - h) / 2), int(new_h - h) - int((new_h - h) / 2)
    lw, uw = int((new_w - w) / 2), int(new_w - w) - int((new_w - w) / 2)
    pad_array = (int(lw), int(uw), int(lh), int(uh))
    return [F.pad(x, pad_array) for x in in_list], pad_array


def _official_memorize(model, frame, masks, num_objects):
    _, k_ch, h, w = masks.shape
    (frame, masks), _ = _official_pad([frame, masks], 16, (h, w))
    fs, ms, os_ = [], [], []
    for o in range(1, num_objects + 1):
        fs.append(frame)
        ms.append(masks[:, o])
        os_.append((torch.sum(masks[:, 1:o], dim=1) + torch.sum(masks[:, o + 1:num_objects + 1], dim=1)).clamp(0, 1))
    k4, v4 = model.encode_memory(torch.cat(fs), torch.cat(ms), torch.cat(os_))   # Encoder_M + KV_M_r4
    out = []
    for mem in (k4, v4):
        pad_mem = torch.zeros(1, k_ch, mem.shape[1], 1, mem.shape[2], mem.shape[3])
        pad_mem[0, 1:num_objects + 1, :, 0] = mem
        out.append(pad_mem)
    return out


def _official_memory(m_in, m_out, q_in, q_out):
    b, d_e, t, h, w = m_in.shape
    d_o = m_out.shape[1]
    mi = torch.transpose(m_in.reshape(b, d_e, t * h * w), 1, 2)
    qi = q_in.reshape(b, d_e, h * w)
    p = F.softmax(torch.bmm(mi, qi) / math.sqrt(d_e), dim=1)
    mem = torch.bmm(m_out.reshape(b, d_o, t * h * w), p).view(b, d_o, h, w)
    return mem, q_out


def _official_soft_aggregation(ps, k_ch):
    num_objects, h, w = ps.shape
    em = torch.zeros(1, k_ch, h, w)
    em[0, 0] = torch.prod(1 - ps, dim=0)
    em[0, 1:num_objects + 1] = ps
    em = torch.clamp(em, 1e-7, 1 - 1e-7)
    return torch.log(em / (1 - em))


def _official_segment(model, frame, keys, values, num_objects):
    _, k_ch, _, _, _, _ = keys.shape
    [frame], pad = _official_pad([frame], 16, (frame.shape[2], frame.shape[3]))
    k4, v4, r3, r2 = model.encode_query(frame)                                     # Encoder_Q + KV_Q_r4
    k4e, v4e = k4.expand(num_objects, -1, -1, -1), v4.expand(num_objects, -1, -1, -1)
    r3e, r2e = r3.expand(num_objects, -1, -1, -1), r2.expand(num_objects, -1, -1, -1)
    mem, q_out = _official_memory(keys[0, 1:num_objects + 1], values[0, 1:num_objects + 1], k4e, v4e)
    logits = model.decode(mem, q_out, r3e, r2e)                                   # Decoder
    ps = F.softmax(logits, dim=1)[:, 1]
    logit = _official_soft_aggregation(ps, k_ch)
    if pad[2] + pad[3] > 0:
        logit = logit[:, :, pad[2]:-pad[3], :]
    if pad[0] + pad[1] > 0:
        logit = logit[:, :, :, pad[0]:-pad[1]]
    return logit


def _official_run_video(model, fs, ms, num_frames, num_objects, mem_every):
    to_memorize = [int(i) for i in np.arange(0, num_frames, step=mem_every)]
    es = torch.zeros_like(ms)
    es[:, :, 0] = ms[:, :, 0]
    keys = values = None
    for t in range(1, num_frames):
        prev_key, prev_value = _official_memorize(model, fs[:, :, t - 1], es[:, :, t - 1], num_objects)
        if t - 1 == 0:
            this_keys, this_values = prev_key, prev_value
        else:
            this_keys = torch.cat([keys, prev_key], dim=3)
            this_values = torch.cat([values, prev_value], dim=3)
        logit = _official_segment(model, fs[:, :, t], this_keys, this_values, num_objects)
        es[:, :, t] = F.softmax(logit, dim=1)
        if t - 1 in to_memorize:
            keys, values = this_keys, this_values
    return es


@pytest.fixture(scope="module")
def stm_model() -> KMN:
    torch.manual_seed(1)
    # Our ResNet-50 network (random weights), through the official STM state-dict layout and back.
    return load_stm_checkpoint(to_stm_state_dict(KMN(stm_model_config()), data_parallel=True),
                               inference=None)


@pytest.mark.slow
@pytest.mark.parametrize("two_objects", [False, True])
def test_sigma_none_equals_official_stm_procedure(stm_model, two_objects):
    model = stm_model
    n_frames, mem_every = 5, 2  # memory at t=4: permanent 0 and 2, previous 3
    frames, mask = _clip(n_frames, size=(77, 131))
    if two_objects:
        mask = _two_objects(mask)
    n_obj = int(mask.max())
    fs = frames.permute(1, 0, 2, 3)[None]                                  # 1,3,T,H,W as DAVIS_MO_Test
    ms = torch.zeros(1, K_OFFICIAL, n_frames, *mask.shape)
    for k in range(K_OFFICIAL):
        ms[0, k, 0] = (mask == k).float()
    with torch.no_grad():
        es = _official_run_video(model, fs, ms, n_frames, n_obj, mem_every)
    probs, labels = segment_video(model, frames, mask, sigma=None, mem_every=mem_every)
    official = es[0, :n_obj + 1].permute(1, 0, 2, 3)
    # Not a trivially saturated comparison: the network's predictions vary across pixels.
    assert official[1:, 1:].std() > 1e-3
    torch.testing.assert_close(probs, official, rtol=0, atol=1e-4)
    # Labels agree too (up to exact ties, which 1e-7-level differences may break either way).
    assert (labels.long() != official.argmax(dim=1)).float().mean() < 1e-3


# --- behaviour of segment_video ---------------------------------------------------------------------

def test_memory_schedule_follows_official_rule():
    # Derived by hand from Run_video with Mem_every=5: permanent 0, 5, 10 + the previous frame.
    assert memory_schedule(12, 5) == [
        [], [0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5], [0, 5, 6], [0, 5, 7], [0, 5, 8], [0, 5, 9],
        [0, 5, 10]]
    assert memory_schedule(1, 5) == [[]]
    assert memory_schedule(4, 1) == [[], [0], [0, 1], [0, 1, 2]]
    with pytest.raises(ValueError):
        memory_schedule(5, 0)


def test_segment_video_outputs_and_memory(lite_model):
    n_frames, mem_every = 9, 3
    frames, mask = _clip(n_frames)
    encoded = []
    original = lite_model.encode_memory

    def counting(frame, m, o):
        encoded.append(frame.shape[0])
        return original(frame, m, o)

    lite_model.encode_memory = counting
    reads = ReadTrace()
    try:
        probs, labels = segment_video(lite_model, frames, mask, sigma=7.0, mem_every=mem_every,
                                      hooks=[reads])
    finally:
        del lite_model.encode_memory
    assert probs.shape == (n_frames, 2, *SIZE) and labels.shape == (n_frames, *SIZE)
    assert probs.dtype == torch.float32 and labels.dtype == torch.uint8
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(n_frames, *SIZE), rtol=0, atol=1e-5)
    assert probs.min() >= 0 and probs.max() <= 1
    # Frame 0 is the given mask, exactly.
    assert torch.equal(probs[0, 1], (mask == 1).float()) and torch.equal(labels[0].long(), mask)
    assert torch.equal(labels.long(), probs.argmax(dim=1))
    # Memory at each step: permanent frames 0, 3, 6 once memorised, plus the previous frame.
    trace = reads.frames
    assert trace == [(1, [0]), (2, [0, 1]), (3, [0, 2]), (4, [0, 3]), (5, [0, 3, 4]), (6, [0, 3, 5]),
                     (7, [0, 3, 6]), (8, [0, 3, 6, 7])]
    assert trace == [(t, m) for t, m in enumerate(memory_schedule(n_frames, mem_every)) if t > 0]
    # Each memorised frame (0..T-2) is encoded once, all objects in one batch.
    assert encoded == [1] * (n_frames - 1)


def test_two_objects_and_numpy_mask(lite_model):
    frames, mask = _clip(4)
    mask2 = _two_objects(mask)
    probs, labels = segment_video(lite_model, frames, mask2.numpy().astype(np.uint8), sigma=7.0,
                                  mem_every=5)
    assert probs.shape == (4, 3, *SIZE)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4, *SIZE), rtol=0, atol=1e-5)
    assert torch.equal(labels[0].long(), mask2)
    assert set(torch.unique(labels).tolist()) <= {0, 1, 2}
    probs_t, _ = segment_video(lite_model, frames, mask2, sigma=7.0, mem_every=5)
    torch.testing.assert_close(probs_t, probs)


def test_kernel_and_training_state(lite_model):
    frames, mask = _clip(3)
    lite_model.train()
    try:
        p_km, _ = segment_video(lite_model, frames, mask, sigma=0.5, mem_every=5)
        assert lite_model.training  # restored
    finally:
        lite_model.eval()
    p_stm, _ = segment_video(lite_model, frames, mask, sigma=None, mem_every=5)
    # Inference ran in eval mode (else BatchNorm would use batch statistics) and the kernel is used.
    p_km_eval, _ = segment_video(lite_model, frames, mask, sigma=0.5, mem_every=5)
    torch.testing.assert_close(p_km, p_km_eval)
    assert (p_km[1:] - p_stm[1:]).abs().max() > 1e-6


@pytest.mark.parametrize("bad,match", [
    (lambda m: m * 2, "1..N without gaps"),
    (lambda m: m.float(), "integer ids"),
    (lambda m: torch.zeros_like(m), "no object"),
    (lambda m: m[:-1], "shape"),
    (lambda m: torch.where(m == 1, 255, m), "void"),
])
def test_bad_first_mask_errors(lite_model, bad, match):
    frames, mask = _clip(2)
    with pytest.raises(ValueError, match=match):
        segment_video(lite_model, frames, bad(mask), sigma=7.0, mem_every=5)


def test_bad_frames_error(lite_model):
    frames, mask = _clip(2)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        segment_video(lite_model, frames * 255, mask, sigma=7.0, mem_every=5)
    with pytest.raises(ValueError, match="T,3,H,W"):
        segment_video(lite_model, frames[0], mask, sigma=7.0, mem_every=5)


class _ListFrames:
    """A FrameSource over a list of uint8 (3,H,W) tensors that records what was asked for."""

    def __init__(self, frames: list[torch.Tensor]) -> None:
        self.frames, self.asked = frames, []
        self.shape = (len(frames), 3, *frames[0].shape[-2:])

    def __getitem__(self, t: int) -> torch.Tensor:
        self.asked.append(t)
        return self.frames[t]


def test_frame_source_same_as_tensor(lite_model):
    frames, mask = _clip(7)
    frames_u8 = (frames * 255).round().to(torch.uint8)
    source = _ListFrames(list(frames_u8))
    two = _two_objects(mask)
    p_tensor, l_tensor = segment_video(lite_model, frames_u8, two, sigma=7.0, mem_every=3)
    p_source, l_source = segment_video(lite_model, source, two, sigma=7.0, mem_every=3)
    assert torch.equal(p_tensor, p_source) and torch.equal(l_tensor, l_source)
    # Every frame but the first is segmented once; each frame is memorised at most once, right
    # after it was segmented (so a reader that keeps the last two frames reads each frame once).
    assert sorted(set(source.asked)) == list(range(7)) and len(source.asked) <= 2 * 7
    for i, t in enumerate(source.asked[1:], start=1):
        assert t >= max(source.asked[:i]) - 1


def test_frame_source_bad_frame_errors(lite_model):
    frames, mask = _clip(3)
    good = list((frames * 255).round().to(torch.uint8))
    for bad, match in ((good[2].float(), "frame 2 .*uint8"), (good[2][:, 1:], r"frame 2 .*\(3, ")):
        with pytest.raises(ValueError, match=match):
            segment_video(lite_model, _ListFrames(good[:2] + [bad]), mask, sigma=7.0, mem_every=5)
    with pytest.raises(ValueError, match="T,3,H,W"):
        segment_video(lite_model, frames.numpy(), mask, sigma=7.0, mem_every=5)


def test_disk_frames_match_eager_load(monkeypatch):
    from kmnlib import predict
    from kmnlib.model.ops import resize_frames

    seq = DAVISDataset(DAVIS16, year="2016", split="train", resolution="240p")["bear"]
    eager = resize_frames(torch.from_numpy(seq.load_frames(range(2, 8))).permute(0, 3, 1, 2), 100)
    reads, load = [], type(seq).load_frames
    monkeypatch.setattr(type(seq), "load_frames",
                        lambda self, idx: reads.append(list(idx)) or load(self, idx))
    disk = predict._DiskFrames(seq, 2, 100)
    assert disk.shape == (len(seq) - 2, *eager.shape[1:]) and len(disk) == len(seq) - 2
    for t in [0, 0, 1, 1, 2, 3, 4, 5]:   # segment_video asks once per frame, in order
        assert torch.equal(disk[t], eager[t])
    assert reads == [[2], [3], [4], [5], [6], [7]]    # each frame read once


def test_run_dataset_writes_pngs(lite_model, tmp_path):
    full = DAVISDataset(DAVIS16, year="2016", split="train", resolution="240p")["bear"]
    seq = VideoSequence(name="bear", frame_paths=full.frame_paths[:4], mask_paths=full.mask_paths[:4],
                        object_ids=full.object_ids, size=full.size, binary=True)
    timings = run_dataset(lite_model, SequenceList([seq]), tmp_path, sigma=7.0, mem_every=5,
                          resolution_out="gt", infer_height=64)
    assert set(timings) == {"bear"} and timings["bear"] > 0
    written = sorted((tmp_path / "bear").glob("*.png"))
    assert [p.stem for p in written] == [p.stem for p in seq.frame_paths]
    first = read_label_map(written[0])
    assert first.shape == tuple(seq.size)
    # Frame 0 is the given mask after a round trip through the 64-px inference size.
    gt = seq.load_mask(0)
    assert (first == gt).mean() > 0.97
    assert set(np.unique(read_label_map(written[-1])).tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="nope"):
        run_dataset(lite_model, SequenceList([seq]), tmp_path / "x", sigma=7.0, mem_every=5,
                    infer_height=64, resolution_out="gt", sequences=["nope"])
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.parametrize("channels", [1, 2, 3, 11])
def test_labels_from_probs_is_argmax(channels):
    # Values on a coarse grid so that ties are frequent: argmax keeps the first maximum.
    g = torch.Generator().manual_seed(channels)
    probs = torch.randint(0, 4, (3, channels, 17, 23), generator=g).float() / 3
    labels = labels_from_probs(probs)
    assert labels.dtype == torch.uint8 and labels.shape == (3, 17, 23)
    assert torch.equal(labels.long(), probs.argmax(dim=1))
    assert torch.equal(labels_from_probs(probs[0]).long(), probs[0].argmax(dim=0))
    with pytest.raises(ValueError, match="C,H,W"):
        labels_from_probs(probs[0, 0])


# --- objects that first appear mid-video (YouTube-VOS) ---------------------------------------------

def _box(size=SIZE, rows=(10, 40), cols=(120, 170), value: int = 2) -> torch.Tensor:
    m = torch.zeros(size, dtype=torch.long)
    m[rows[0]:rows[1], cols[0]:cols[1]] = value
    return m


def test_memory_schedule_keeps_given_frames():
    assert memory_schedule(9, 5, keep=[3]) == [
        [], [0], [0, 1], [0, 2], [0, 3], [0, 3, 4], [0, 3, 5], [0, 3, 5, 6], [0, 3, 5, 7]]
    assert memory_schedule(9, 5, keep=[5]) == memory_schedule(9, 5)
    with pytest.raises(ValueError, match="outside"):
        memory_schedule(9, 5, keep=[9])


def test_object_given_mid_video(lite_model):
    n_frames, joins = 8, 4
    frames, mask = _clip(n_frames)
    box = _box()
    reads = ReadTrace()
    probs, labels = segment_video(lite_model, frames, mask, sigma=7.0, mem_every=5, hooks=[reads],
                                  later_masks={joins: box.numpy().astype(np.uint8)})
    trace = reads.frames
    plain, _ = segment_video(lite_model, frames, mask, sigma=7.0, mem_every=5)
    assert probs.shape == (n_frames, 3, *SIZE)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(n_frames, *SIZE), rtol=0, atol=1e-5)
    # Before it is given, object 2 is absent and object 1's segmentation is what it is alone.
    assert not probs[:joins, 2].any() and not (labels[:joins] == 2).any()
    torch.testing.assert_close(probs[:joins, :2], plain[:joins], rtol=0, atol=1e-5)
    # At its first frame its given mask replaces the prediction; afterwards it is tracked.
    assert torch.equal(probs[joins, 2], (box == 2).float())
    assert torch.equal(labels[joins][box == 2], torch.full_like(labels[joins][box == 2], 2))
    assert (labels[joins + 1:] == 2).any()
    # The frame it was given in stays in memory (4 is not a multiple of mem_every=5).
    assert trace[-2:] == [(6, [0, 4, 5]), (7, [0, 4, 5, 6])]
    assert trace == [(t, m) for t, m in enumerate(memory_schedule(n_frames, 5, keep=[joins])) if t]


@pytest.mark.parametrize("later,match", [
    ({4: _box(value=3)}, "1..N without gaps"),   # id 3 without an object 2
    ({8: _box()}, "outside 1..7"),
    ({0: _box()}, "outside 1..7"),
    ({4: _box()[:-1]}, "later_masks\\[4\\] shape"),
])
def test_bad_later_masks(lite_model, later, match):
    frames, mask = _clip(8)
    with pytest.raises(ValueError, match=match):
        segment_video(lite_model, frames, mask, sigma=7.0, mem_every=5, later_masks=later)


def test_run_dataset_youtube_vos_objects_join_late(lite_model, youtube_valid, tmp_path):
    from kmnlib.data import YouTubeVOSDataset

    root, box = youtube_valid
    ds = YouTubeVOSDataset(root, split="valid")
    timings = run_dataset(lite_model, ds, tmp_path / "out", sigma=7.0, mem_every=5,
                          infer_height=64, resolution_out="gt")
    assert set(timings) == {"vid"}
    written = sorted((tmp_path / "out" / "vid").glob("*.png"))
    assert [p.stem for p in written] == [f"{5 * t:05d}" for t in range(9)]
    maps = np.stack([read_label_map(p) for p in written])
    assert maps.shape == (9, 90, 160)
    assert not maps[:2].any()                       # before the first annotation: background
    assert set(np.unique(maps).tolist()) <= {0, 1, 3}  # the dataset's ids, not 1..N
    assert not (maps[:6] == 3).any()                # object 3 only from its first frame on
    # At its first frame the given box (after the 64-px round trip) is object 3.
    assert ((maps[6] == 3) == (box == 3)).mean() > 0.97
    gt = ds["vid"].load_mask(2)
    assert ((maps[2] == 1) == (gt == 1)).mean() > 0.97


@pytest.mark.parametrize("mem_every", [1, 3])
def test_labels_without_kept_probabilities_are_the_same(lite_model, mem_every):
    # keep_probs=False holds only the frames the memory will still encode (bench_memory_ceiling.py):
    # the labels must not change, also with an object given mid-video and its frame kept in memory.
    frames, mask = _clip(8)
    later = {4: _box().numpy().astype(np.uint8)}
    probs, labels = segment_video(lite_model, frames, mask, sigma=7.0, mem_every=mem_every,
                                  later_masks=later)
    none, lean = segment_video(lite_model, frames, mask, sigma=7.0, mem_every=mem_every,
                               later_masks=later, keep_probs=False)
    assert none is None
    assert torch.equal(lean, labels) and (lean == 2).any()
