"""Static image + mask folders for pre-training, with the layout detected from the folder names.

| layout         | images                      | masks                          | mask values             |
|----------------|-----------------------------|--------------------------------|-------------------------|
| `images-masks` | `images/<n>.jpg`            | `masks/<n>.png`                | instance ids (0/255: 1) |
| `msra`         | `<n>.jpg` (root or `Imgs/`) | `<n>.png` beside it            | binary saliency         |
| `ecssd`        | `images/<n>.jpg`            | `ground_truth_mask/<n>.png`    | binary saliency         |
| `duts`         | `DUTS-TR-Image/<n>.jpg`     | `DUTS-TR-Mask/<n>.png`         | binary saliency         |
| `voc`          | `JPEGImages/<n>.jpg`        | `SegmentationObject/<n>.png`   | palette ids, 255 void   |

Binary saliency masks (0/255 or JPEG-ish grey, also stored as RGB) become id 1 with threshold
127. PASCAL VOC holds far more images than masks, so it is indexed by its masks; every other
layout must pair images and masks one to one.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kmnlib.data.masks import read_label_map
from kmnlib.data.video import frame_sort_key, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg")
LAYOUTS = ("images-masks", "msra", "ecssd", "duts", "voc")


def _files(folder: Path, exts: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict[str, Path]:
    """stem → path of the files in ``folder`` with one of ``exts``; duplicate stems are an error."""
    out: dict[str, Path] = {}
    for p in folder.iterdir():
        ext = p.suffix.lower()
        if not p.is_file() or ext not in exts or ext in exclude or p.name.startswith("."):
            continue
        if p.stem in out:
            raise ValueError(f"{p}: ambiguous, {out[p.stem].name} has the same name stem")
        out[p.stem] = p
    return out


def detect_layout(root: Path) -> tuple[str, Path, Path]:
    """Return (layout, image folder, mask folder) for a static-image root, or raise ValueError."""
    def d(*parts: str) -> Path:
        return root.joinpath(*parts)

    if d("JPEGImages").is_dir() and d("SegmentationObject").is_dir():
        return "voc", d("JPEGImages"), d("SegmentationObject")
    for part in ("TR", "TE"):
        if d(f"DUTS-{part}-Image").is_dir() and d(f"DUTS-{part}-Mask").is_dir():
            return "duts", d(f"DUTS-{part}-Image"), d(f"DUTS-{part}-Mask")
    if d("images").is_dir() and d("ground_truth_mask").is_dir():
        return "ecssd", d("images"), d("ground_truth_mask")
    if d("images").is_dir() and d("masks").is_dir():
        return "images-masks", d("images"), d("masks")
    for folder in (root, d("Imgs")):  # MSRA10K unpacks as MSRA10K_Imgs_GT/Imgs/
        if folder.is_dir() and any(folder.glob("*.jpg")) and any(folder.glob("*.png")):
            return "msra", folder, folder
    raise ValueError(f"{root}: unrecognised static-image layout; expected images/+masks/, "
                     f"<name>.jpg+<name>.png side by side (MSRA10K), images/+ground_truth_mask/ "
                     f"(ECSSD), DUTS-TR-Image/+DUTS-TR-Mask/ (DUTS) or JPEGImages/+"
                     f"SegmentationObject/ (PASCAL VOC); see data/README.md")


class StaticImageFolder:
    """Image/mask pairs of one static set; ``ds[i]`` → (image uint8 (H,W,3), labels uint8 (H,W), name)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: static image folder not found")
        self.layout, self.image_dir, self.mask_dir = detect_layout(self.root)
        if self.layout == "msra":  # same folder: JPEGs are images, PNGs are masks
            images = _files(self.image_dir, (".jpg", ".jpeg"))
            masks = _files(self.mask_dir, (".png",))
        else:
            images = _files(self.image_dir, IMAGE_EXTENSIONS)
            masks = _files(self.mask_dir, MASK_EXTENSIONS)
        if self.layout != "voc":
            for stem, img in images.items():
                if stem not in masks:
                    raise FileNotFoundError(f"{self.mask_dir / (stem + '.png')}: mask missing for "
                                            f"image {img}")
        for stem, mask in masks.items():
            if stem not in images:
                raise FileNotFoundError(f"{self.image_dir / (stem + '.jpg')}: image missing for "
                                        f"mask {mask}")
        self.names: list[str] = sorted(masks, key=lambda s: frame_sort_key(Path(s)))
        if not self.names:
            raise ValueError(f"{self.mask_dir}: no image/mask pairs found")
        self._images = images
        self._masks = masks

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"StaticImageFolder({str(self.root)!r}, layout={self.layout!r}, images={len(self)})"

    def mask_is_binary(self, mask_path: Path) -> bool | None:
        """True: threshold at 127 into id 1; None: ids as stored unless the file holds only 0/255."""
        if self.layout in ("msra", "ecssd", "duts"):
            return True
        if self.layout == "voc":
            return False
        return True if mask_path.suffix.lower() in (".jpg", ".jpeg") else None

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        name = self.names[i]
        image_path, mask_path = self._images[name], self._masks[name]
        image = read_image(image_path)
        labels = read_label_map(mask_path, binary=self.mask_is_binary(mask_path))
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{mask_path}: mask size {labels.shape[0]}x{labels.shape[1]} differs "
                             f"from the image size {image.shape[0]}x{image.shape[1]} of {image_path}")
        return image, labels, name
