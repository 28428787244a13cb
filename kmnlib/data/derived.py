"""Stress sets derived from DAVIS-2016 val, for the kernel's failure case (paper Sec. 1, Fig. 1):
a query pixel on a similar-looking *other* object reading the target's memory.

* **twin** (``DAVIS-2016-twin``): every frame gets a horizontally mirrored copy of its annotated
  object at the mirrored position — pixel (x, y) takes the frame's pixel at (W−1−x, y) wherever the
  ground truth at (W−1−x, y) is object and the ground truth at (x, y) is not. The original stays on
  top, so the ground truth (and the given first-frame mask) is the original's. ``Twins/`` holds the
  twin's visible pixels per frame (for leakage).
* **clean** (``DAVIS-2016-clean``): the twin set's control — the same first frames unchanged, the
  same ground truth and ``Twins/`` maps (where the twin would be), for the twin-free J&F and the
  false-positive rate of clean predictions on the mirrored region (the leakage metric's floor).
* **pairs** (``DAVIS-2016-pairs``): two-object videos — the object of one val sequence (cut with
  its masks) pasted over another val video, frame by frame, at its own position. Ground truth in
  the DAVIS-2017 palette format: 1 = host object, 2 = pasted object; the pasted object is on top
  (occlusion by paste order). Pairing (:func:`pairing`): sequences in split-file order, host ``i``
  takes guest ``i + n/2`` (the first half hosts the second); a pair whose host object would be
  fully covered (or whose guest is absent) in frame 0 takes the next guest in order instead.
  Videos are as long as the shorter of the two (at most :data:`MAX_FRAMES`).

Both keep the first :data:`MAX_FRAMES` frames of each video (the first 30: the study evaluates
these sets with two models × three reads per seed within its hour; the twin or the pasted object
is there from frame 0, so a leak shows early). Both are written in the DAVIS layout (JPEG quality
95, ``ImageSets``), so the DAVIS reader and evaluation read them unchanged. They are built once into a cache folder (git-ignored), in a
temporary folder renamed into place only when complete, and never committed.

Each build is keyed by what it was made from: ``<cache>/<set>/v<version>-<source>/``, where
``<source>`` starts the sha256 of the source's content (:func:`source_fingerprint`: the val list
and every 480p frame and annotation file of the val sequences). Sets derived from different data
roots (or from changed data) live side by side; the same content under another root reuses the
build. A build is never deleted to make room for another: a folder is only ever replaced by
renaming a complete new copy into place (:func:`_build`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from kmnlib.data.davis import DAVISDataset, read_split, split_file
from kmnlib.data.masks import VOID, read_label_map, write_label_map
from kmnlib.fingerprint import files_digest, folder_files

TWIN = "DAVIS-2016-twin"
CLEAN = "DAVIS-2016-clean"   # the twin set's clean control: same frames, no twin
PAIRS = "DAVIS-2016-pairs"
JPEG_QUALITY = 95
MAX_FRAMES = 30
_VERSION = 3  # bump when a builder changes what it writes


def twin_frame(frame: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame with the mirrored twin pasted, bool map of the twin's visible pixels).

    ``frame`` uint8 (H,W,3), ``gt`` (H,W) with the object as non-zero (void 255 counts as not
    object). The twin takes the mirrored frame where the mirrored ground truth is object and the
    ground truth is not: the original object stays on top and the ground truth is unchanged.
    """
    obj = (gt != 0) & (gt != VOID)
    twin = obj[:, ::-1] & ~obj
    out = frame.copy()
    out[twin] = frame[:, ::-1][twin]
    return out, twin


def pair_frame(host: np.ndarray, host_gt: np.ndarray, guest: np.ndarray, guest_gt: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(host frame with the guest's object pasted on top, labels: 1 host object, 2 guest object)."""
    h_obj = (host_gt != 0) & (host_gt != VOID)
    g_obj = (guest_gt != 0) & (guest_gt != VOID)
    out = host.copy()
    out[g_obj] = guest[g_obj]
    labels = np.zeros(host_gt.shape, np.uint8)
    labels[h_obj] = 1
    labels[g_obj] = 2  # pasted last, so on top
    return out, labels


def pairing(names: list[str], first_masks: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """The fixed (host, guest) pairs: host ``i`` of the first half with guest ``i + n//2``, or the
    next guest in order whose frame-0 paste leaves both objects visible (each guest used once)."""
    half = len(names) // 2
    hosts, guests = names[:half], names[half:]
    unused = list(guests)
    out = []
    for i, host in enumerate(hosts):
        order = guests[i:] + guests[:i]
        for guest in order:
            if guest not in unused:
                continue
            _, labels = pair_frame(np.zeros((*first_masks[host].shape, 3), np.uint8),
                                   first_masks[host], np.zeros((*first_masks[guest].shape, 3),
                                                               np.uint8), first_masks[guest])
            if (labels == 1).any() and (labels == 2).any():
                out.append((host, guest))
                unused.remove(guest)
                break
        else:
            raise ValueError(f"pairing: no guest leaves host {host!r} and its guest visible")
    return out


def _save_jpeg(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path, quality=JPEG_QUALITY)


def source_fingerprint(davis16: str | os.PathLike) -> str:
    """sha256 of what the builders read from a DAVIS-2016 root: ``ImageSets/2016/val.txt`` and
    every file of ``JPEGImages/480p/<seq>`` and ``Annotations/480p/<seq>`` for its sequences
    (relative names, sizes, contents: :func:`kmnlib.fingerprint.files_digest`). ~0.1-0.3 s for
    DAVIS-2016 val the first time in a process, a stat per file after that."""
    davis16 = Path(davis16)
    names = read_split(davis16, "2016", "val")
    files = [split_file(davis16, "2016", "val")]
    for name in names:
        for kind in ("JPEGImages", "Annotations"):
            files += folder_files(davis16 / kind / "480p" / name)
    return files_digest(davis16, files)["sha256"]


def _target(cache: str | os.PathLike, set_name: str, source_sha: str) -> Path:
    """``<cache>/<set>/v<version>-<first 16 hex of the source sha256>``."""
    return Path(cache) / set_name / f"v{_VERSION}-{source_sha[:16]}"


def _build(target: Path, write: "callable[[Path], dict]", source_sha: str) -> Path:
    """Run ``write(tmp)`` into a temp folder beside ``target``; rename it into place once complete.

    Nothing is deleted first: a failed build leaves every existing set as it was (and no temp
    folder). If ``target`` was built meanwhile by another process, that build is kept; a stale
    folder of the same name (no valid ``build.json``) is renamed aside, the new one renamed in,
    and only then is the old one removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        info = write(tmp)
        (tmp / "build.json").write_text(json.dumps({**info, "source_sha256": source_sha},
                                                   indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _rename_into_place(tmp, target, source_sha)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
    return target


def _rename_into_place(tmp: Path, target: Path, source_sha: str) -> None:
    if _is_built(target, source_sha):
        return  # another process built the same set first: keep it
    if not target.exists():
        try:
            os.replace(tmp, target)
            return
        except OSError:
            if _is_built(target, source_sha):  # lost a race to an identical build
                return
            raise
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    os.replace(target, aside / "old")
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside / "old", target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _is_built(target: Path, source_sha: str) -> bool:
    marker = target / "build.json"
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == _VERSION and info.get("source_sha256") == source_sha


def build_twin_set(davis16: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """``<cache>/DAVIS-2016-twin/v<version>-<source>`` from DAVIS-2016 val at 480p (built once per
    source content; see the module doc)."""
    return _build_mirror_set(davis16, cache, TWIN)


def build_clean_set(davis16: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """``<cache>/DAVIS-2016-clean/v<version>-<source>``: the twin set's clean control — the same
    first frames of each val video as they are (the original JPEG files), the same ground truth,
    and the same ``Twins/`` maps (where the twin would be: the leakage metric's floor)."""
    return _build_mirror_set(davis16, cache, CLEAN)


def _build_mirror_set(davis16: str | os.PathLike, cache: str | os.PathLike, set_name: str
                      ) -> Path:
    """The twin set (``TWIN``: the mirrored twin pasted) or its clean control (``CLEAN``)."""
    davis16, source_sha = Path(davis16), source_fingerprint(davis16)
    target = _target(cache, set_name, source_sha)
    if _is_built(target, source_sha):
        return target
    ds = DAVISDataset(davis16, year="2016", split="val", resolution="480p")

    def write(tmp: Path) -> dict:
        for name in ds.names:
            seq = ds[name]
            keep = range(min(len(seq), MAX_FRAMES))
            frames, masks = seq.load_frames(keep), seq.load_masks(keep)
            for path, mpath, frame, gt in zip(seq.frame_paths, seq.mask_paths, frames, masks):
                out, twin = twin_frame(frame, gt)
                jpeg = tmp / "JPEGImages" / "480p" / name / f"{Path(path).stem}.jpg"
                if set_name == TWIN:
                    _save_jpeg(jpeg, out)
                else:
                    jpeg.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, jpeg)
                ann = tmp / "Annotations" / "480p" / name / Path(mpath).name
                ann.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mpath, ann)
                write_label_map(tmp / "Twins" / "480p" / name / f"{Path(path).stem}.png",
                                twin.astype(np.uint8))
        (tmp / "ImageSets" / "2016").mkdir(parents=True)
        (tmp / "ImageSets" / "2016" / "val.txt").write_text("\n".join(ds.names) + "\n")
        return {"version": _VERSION, "source": str(davis16.resolve()), "set": set_name,
                "sequences": ds.names, "max_frames": MAX_FRAMES}

    return _build(target, write, source_sha)


def build_pair_set(davis16: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """``<cache>/DAVIS-2016-pairs/v<version>-<source>`` from DAVIS-2016 val at 480p (built once
    per source content; see the module doc)."""
    davis16, source_sha = Path(davis16), source_fingerprint(davis16)
    target = _target(cache, PAIRS, source_sha)
    if _is_built(target, source_sha):
        return target
    ds = DAVISDataset(davis16, year="2016", split="val", resolution="480p")
    names = read_split(davis16, "2016", "val")
    pairs = pairing(names, {n: ds[n].load_mask(0) for n in names})

    def write(tmp: Path) -> dict:
        videos = []
        for host, guest in pairs:
            hs, gs = ds[host], ds[guest]
            if hs.size != gs.size:
                raise ValueError(f"pairs: {host} is {hs.size}, {guest} is {gs.size}; sizes differ")
            n = min(len(hs), len(gs), MAX_FRAMES)
            name = f"{host}+{guest}"
            for t in range(n):
                frame, labels = pair_frame(hs.load_frames([t])[0], hs.load_mask(t),
                                           gs.load_frames([t])[0], gs.load_mask(t))
                stem = f"{t:05d}"
                _save_jpeg(tmp / "JPEGImages" / "480p" / name / f"{stem}.jpg", frame)
                write_label_map(tmp / "Annotations" / "480p" / name / f"{stem}.png", labels)
            videos.append(name)
        (tmp / "ImageSets" / "2017").mkdir(parents=True)
        (tmp / "ImageSets" / "2017" / "val.txt").write_text("\n".join(videos) + "\n")
        return {"version": _VERSION, "source": str(davis16.resolve()), "set": PAIRS,
                "pairs": [list(p) for p in pairs], "max_frames": MAX_FRAMES}

    return _build(target, write, source_sha)


def twin_masks(twin_root: str | os.PathLike, sequence: str) -> np.ndarray:
    """Bool (T,H,W): the twin's visible pixels in every frame of a twin-set sequence."""
    folder = Path(twin_root) / "Twins" / "480p" / sequence
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no twin masks (rebuild the twin set)")
    return np.stack([read_label_map(p) > 0 for p in paths])
