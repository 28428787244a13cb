"""Loss maps of synthesised clips (paper Fig. 7): where the per-pixel loss falls, with and
without Hide-and-Seek, and its mean near ground-truth boundaries, hidden-cell edges, elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from kmnlib.config import Profile, StageConfig
from kmnlib.data import open_static_dataset
from kmnlib.data.masks import VOID
from kmnlib.synthesis import NoObjectError, hidden_pixels, synthesize_clip
from kmnlib.training.batches import clip_fill
from kmnlib.training.step import clip_cross_entropy, clip_logits


@torch.no_grad()
def loss_map(model: nn.Module, clip: dict[str, Any], *, device: str | torch.device = "cpu",
             sigma: float | None = None) -> dict[str, torch.Tensor]:
    """Per-pixel cross-entropy of a 3-frame clip under ``model``: the training forward (STM read unless
    ``sigma``), in eval mode, without gradients.

    ``clip``: an item of the training datasets — ``frames`` (3,3,S,S) in [0,1], ``masks`` (3,S,S) ids
    0..K, ``num_objects`` K, ``hidden`` (3,g,g) bool. Returned keys (CPU tensors):

    * ``loss`` float (2,S,S): cross-entropy at frames 1 and 2 (0 on void pixels)
    * ``mean_loss`` float (2,): its mean over the non-void pixels, per frame
    * ``probs`` float (2,K+1,S,S): soft-aggregated probabilities at frames 1 and 2 (index 0 = background)
    * ``pred`` long (2,S,S): argmax labels at frames 1 and 2
    * ``masks`` long (3,S,S): ground-truth label maps of frames 0, 1, 2
    * ``frames`` float (3,3,S,S): the input frames
    * ``hidden`` bool (3,g,g): Hide-and-Seek cell grid, True = hidden
    * ``hidden_pixels`` bool (3,S,S): that grid at pixel resolution (the cells' pixel extents)
    """
    frames = torch.as_tensor(clip["frames"]).float()
    masks = torch.as_tensor(clip["masks"]).long()
    hidden = torch.as_tensor(clip["hidden"]).bool()
    if frames.dim() != 4 or frames.shape[:2] != (3, 3) or masks.shape != (3, *frames.shape[-2:]):
        raise ValueError(f"loss_map expects frames (3,3,S,S) and masks (3,S,S), got {tuple(frames.shape)} "
                         f"and {tuple(masks.shape)}")
    k = int(clip["num_objects"])
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        l1, l2 = clip_logits(model, frames[None].to(dev), masks[None].to(dev), [k], sigma=sigma)
    finally:
        model.train(was_training)
    logits = torch.stack([l1[0], l2[0]]).float().cpu()
    loss = torch.stack([clip_cross_entropy(logits[i], masks[i + 1], reduction="none") for i in range(2)])
    valid = (masks[1:] != VOID).flatten(1).sum(1).clamp(min=1)
    h, w = frames.shape[-2:]
    hid_px = torch.from_numpy(np.stack([hidden_pixels(hd.numpy(), h, w) for hd in hidden]))
    return {"loss": loss, "mean_loss": loss.flatten(1).sum(1) / valid, "probs": logits.softmax(dim=1),
            "pred": logits.argmax(dim=1), "masks": masks, "frames": frames, "hidden": hidden,
            "hidden_pixels": hid_px}


def synthesized_pair(image: np.ndarray, mask: np.ndarray, stage: StageConfig, *, hide_p: float,
                     seed: int, fill: tuple[float, float, float]) -> dict[str, dict[str, Any]]:
    """One static image synthesised twice from the same rng seed as pre-training ``stage`` draws
    clips, without hiding (``"plain"``) and with Hide-and-Seek at ``hide_p`` (``"hidden"``).
    Hiding draws come after the geometry and colour draws, so both clips share frames and masks
    except for the hidden cells. Values are clip dicts."""
    out = {}
    for key, p in (("plain", 0.0), ("hidden", float(hide_p))):
        frames, masks, hidden = synthesize_clip(
            image, mask, size=stage.crop_size, n_frames=stage.n_frames, hide_p=p,
            grid=stage.hide_grid, max_objects=stage.max_objects, aug=stage.augment,
            rng=np.random.default_rng(seed), fill=fill)
        out[key] = {"frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
                    "masks": torch.from_numpy(masks.astype(np.int64)), "num_objects": int(masks[0].max()),
                    "hidden": torch.from_numpy(hidden)}
    return out


def loss_map_pair(model: nn.Module, image: np.ndarray, mask: np.ndarray, stage: StageConfig, *,
                  hide_p: float, seed: int, fill: tuple[float, float, float],
                  device: str | torch.device = "cpu", sigma: float | None = None
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`loss_map` of both clips of :func:`synthesized_pair`: ``{"plain": ..., "hidden": ...}``."""
    pair = synthesized_pair(image, mask, stage, hide_p=hide_p, seed=seed, fill=fill)
    return {k: loss_map(model, clip, device=device, sigma=sigma) for k, clip in pair.items()}


def loss_map_examples(model: nn.Module, profile: Profile, data_root: str | os.PathLike, *, n: int,
                      device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Loss maps (:func:`loss_map_pair`) of ``n`` static images: ``plain`` and ``hidden``.

    Images are drawn with a rng seeded by ``profile.seed`` from the profile's static sets under
    ``data_root``; the hiding probability is the end value of the pre-training ramp, grid and crop
    size those of pre-training. (A study passes ``study.profile, study.data_root,
    device=study.device``.)
    """
    cfg = profile.pretrain
    sets = [open_static_dataset(name, data_root) for name in profile.static_sets]
    rng = np.random.default_rng(profile.seed)
    out: list[dict[str, Any]] = []
    for attempt in range(10 * n):
        if len(out) == n:
            break
        ds = sets[attempt % len(sets)]
        image, labels, name = ds[int(rng.integers(len(ds)))]
        try:
            pair = loss_map_pair(model, image, labels, cfg, hide_p=cfg.hide_p_end,
                                 seed=profile.seed + attempt, fill=clip_fill(profile),
                                 device=device)
        except NoObjectError:
            continue  # an image whose objects vanish in every crop; take another
        out.append({"name": f"{Path(str(getattr(ds, 'root', ''))).name}/{name}", **pair})
    if len(out) < n:
        raise ValueError(f"only {len(out)} of {n} static images gave a clip with an object")
    return out


def label_boundary(labels: Any) -> np.ndarray:
    """Boolean (H,W) map of pixels whose right or lower neighbour has a different label."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return edge


def _dilate(edge: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)² square, with numpy only."""
    out = edge.copy()
    h, w = edge.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = edge[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


def loss_regions(mask: np.ndarray, object_mask: np.ndarray, band: int
                 ) -> dict[str, np.ndarray]:
    """The three disjoint regions of one frame, as bool maps.

    ``mask`` is the ground truth the loss was computed against (hidden cells are background in
    it); ``object_mask`` the same frame before hiding. An edge of a hidden cell that cuts the
    object is a label boundary of ``mask`` too, so the regions are taken from what made each
    boundary: ``gt_boundary`` within ``band`` px of the object's own outline (``object_mask``);
    ``hidden_edge`` within ``band`` px of a boundary that only hiding made (a cell edge cutting the
    object: the exact, artificial boundary the paper's Fig. 7 is about), minus ``gt_boundary``;
    ``elsewhere`` the rest — including edges of hidden cells in the background, where no label
    changes and a low loss says nothing about boundaries."""
    true_edge = label_boundary(object_mask)
    cut = label_boundary(mask) & ~true_edge
    gt_band = _dilate(true_edge, band)
    hid_band = _dilate(cut, band) & ~gt_band
    return {"gt_boundary": gt_band, "hidden_edge": hid_band, "elsewhere": ~(gt_band | hid_band)}


def boundary_loss_stats(loss: Any, masks: Any, hidden_pixels: Any, *, band: int = 2,
                        void: int = 255, object_masks: Any = None) -> pd.DataFrame:
    """Mean per-pixel loss in three disjoint regions of each query frame (Fig. 7's claim in numbers).

    ``loss`` (Q,H,W) for the last Q frames of a clip, ``masks`` (T,H,W) ground truth,
    ``hidden_pixels`` (T,H,W) bool Hide-and-Seek cells at pixel resolution, ``object_masks``
    (T,H,W) the ground truth before hiding (the same clip synthesised without hiding; default
    ``masks``, right for a clip without hidden cells). Regions: :func:`loss_regions`. Void pixels
    are left out. Returns one row per query frame with the three means and pixel counts.
    """
    def arr(x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)

    loss, masks, hid = arr(loss).astype(np.float64), arr(masks), arr(hidden_pixels).astype(bool)
    full = masks if object_masks is None else arr(object_masks)
    q = loss.shape[0]
    if (masks.shape[0] < q or hid.shape[0] != masks.shape[0] or masks.shape[1:] != loss.shape[1:]
            or full.shape != masks.shape):
        raise ValueError(f"boundary_loss_stats: loss {loss.shape}, masks {masks.shape}, "
                         f"hidden {hid.shape}, object masks {full.shape} do not fit together")
    rows = []
    offset = masks.shape[0] - q
    for i in range(q):
        m = masks[offset + i]
        valid = m != void
        row = {"frame": offset + i}
        for name, region in loss_regions(m, full[offset + i], band).items():
            sel = region & valid
            row[f"{name}_loss"] = float(loss[i][sel].mean()) if sel.any() else float("nan")
            row[f"{name}_pixels"] = int(sel.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def loss_region_table(examples: list[dict[str, Any]]) -> pd.DataFrame:
    """Per clip, kind (plain/hidden) and query frame: mean loss near GT boundaries, near hidden-cell
    edges and elsewhere (:func:`boundary_loss_stats`), followed by per-kind means."""
    rows = []
    for ex in examples:
        for kind in ("plain", "hidden"):
            m = ex[kind]
            # The plain clip is the hidden one before hiding (same rng draws): its masks give the
            # object's own outline.
            st_ = boundary_loss_stats(m["loss"], m["masks"], m["hidden_pixels"],
                                      object_masks=ex["plain"]["masks"])
            rows.append(st_.assign(clip=ex["name"], kind=kind))
    df = pd.concat(rows, ignore_index=True)
    loss_cols = [c for c in df.columns if c.endswith("_loss")]
    means = df.groupby("kind", sort=False)[loss_cols].mean().reset_index().assign(clip="mean")
    cols = ["clip", "kind", "frame"] + loss_cols + [c for c in df.columns if c.endswith("_pixels")]
    return pd.concat([df, means], ignore_index=True).reindex(columns=cols)


def region_verdict(table: pd.DataFrame) -> str:
    """The loss-by-region table (:func:`loss_region_table`) read out in words: on the clips with
    hidden cells, is the loss at the edges hiding made lower than at the objects' own boundaries
    (Fig. 7: exact, artificial boundaries are easy) and how both compare with elsewhere."""
    means = table[table["clip"] == "mean"].set_index("kind")
    if "hidden" not in means.index or pd.isna(means.loc["hidden", "hidden_edge_loss"]):
        return "No hidden cell cut an object in these clips, so Fig. 7's claim is not measured."
    h = means.loc["hidden"]
    edge, gt, rest = (float(h[f"{k}_loss"]) for k in ("hidden_edge", "gt_boundary", "elsewhere"))
    ratio = edge / gt if gt > 0 else float("nan")
    frames = table[(table["clip"] != "mean") & (table["kind"] == "hidden")]
    side = "lower" if edge < gt else "higher"
    claim = "as" if edge < gt else "unlike what"
    return (f"With hiding, the mean loss near the edges hiding cut into the objects is {edge:.3f} "
            f"nats, {side} than near the objects' own boundaries ({gt:.3f}; ratio {ratio:.2f}), "
            f"{claim} the paper's Fig. 7 argues; elsewhere it is {rest:.3f}. These are the means "
            f"over {len(frames)} query frames of {frames['clip'].nunique()} clips with hiding, "
            f"without an interval.")
