"""The paper's published numbers (Seong et al., ECCV 2020, Tables 1-3) and paper-beside-ours tables.

Numbers are percent; "J&F" is the DAVIS global mean ("G"). Every row of ours must say how it was
made (a ``protocol`` column): our runs are not the paper's protocol.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pandas as pd

from kmnlib.config import PAPER as PAPER_PROFILE
from kmnlib.config import PAPER_SIGMA, Profile

PAPER = "Seong et al. 2020"
PAPER_PROTOCOL = "published: ResNet-50, 384² crops, 480p, 1080Ti"

# --- the paper's published numbers ------------------------------------------------------------
# Table 1 (DAVIS 2016 / 2017 val): (method, training data, dataset, J&F, J, F).
TABLE1: tuple[tuple[str, str, str, float, float, float], ...] = (
    ("KMN", "static images only", "DAVIS16 val", 74.8, 74.7, 74.8),
    ("KMN", "static images only", "DAVIS17 val", 68.9, 67.1, 70.8),
    ("KMN", "static + DAVIS", "DAVIS16 val", 87.6, 87.1, 88.1),
    ("KMN", "static + DAVIS", "DAVIS17 val", 76.0, 74.2, 77.8),
    ("STM", "static + DAVIS", "DAVIS16 val", 86.5, 84.8, 88.1),
    ("STM", "static + DAVIS", "DAVIS17 val", 71.6, 69.2, 74.0),
    ("KMN", "static + DAVIS + YouTube-VOS", "DAVIS16 val", 90.5, 89.5, 91.5),
    ("KMN", "static + DAVIS + YouTube-VOS", "DAVIS17 val", 82.8, 80.0, 85.6),
    ("STM", "static + DAVIS + YouTube-VOS", "DAVIS16 val", 89.3, 88.7, 89.9),
    ("STM", "static + DAVIS + YouTube-VOS", "DAVIS17 val", 81.8, 79.2, 84.3),
)
# Table 1 runtime column, seconds per frame on one GTX 1080Ti.
RUNTIME_S_PER_FRAME: dict[str, float] = {"KMN": 0.12, "STM": 0.16}
RUNTIME_GPU = "GTX 1080Ti"

# Table 2, DAVIS 2017 test-dev: (method, J&F, J, F).
TABLE2_DAVIS17_TESTDEV: tuple[tuple[str, float, float, float], ...] = (
    ("KMN", 77.2, 74.1, 80.3),
    ("STM", 72.2, 69.3, 75.2),
)
# Table 2, YouTube-VOS 2018 val: (method, overall, J seen, J unseen, F seen, F unseen).
TABLE2_YTVOS18: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("KMN", 81.4, 81.4, 75.3, 85.6, 83.3),
    ("STM", 79.4, 79.7, 72.8, 84.2, 80.9),
)
# Table 3 ablation: (method, HaS, KM, DAVIS16 J&F, DAVIS17 J&F, YouTube-VOS 2018 overall).
# HaS/KM are None for STM, which is a different model rather than one cell of the ablation.
TABLE3: tuple[tuple[str, bool | None, bool | None, float, float, float], ...] = (
    ("KMN", False, False, 81.3, 72.6, 79.0),
    ("KMN", True, False, 87.1, 75.9, 79.5),
    ("KMN", False, True, 87.2, 73.5, 81.0),
    ("KMN", True, True, 87.6, 76.0, 81.4),
    ("STM", None, None, 86.5, 71.6, 79.4),
)


def paper_table1() -> pd.DataFrame:
    """Table 1 as a frame: method, training_data, dataset, J&F, J, F, s/frame (runtime column)."""
    df = pd.DataFrame(TABLE1, columns=["method", "training_data", "dataset", "J&F", "J", "F"])
    df["s/frame"] = df["method"].map(RUNTIME_S_PER_FRAME)
    return df


def paper_table2() -> pd.DataFrame:
    """Table 2 as one long frame: DAVIS17 test-dev (J&F, J, F) and YouTube-VOS 2018 val rows."""
    davis = pd.DataFrame(TABLE2_DAVIS17_TESTDEV, columns=["method", "J&F", "J", "F"])
    davis.insert(1, "dataset", "DAVIS17 test-dev")
    ytvos = pd.DataFrame(TABLE2_YTVOS18,
                         columns=["method", "overall", "J_seen", "J_unseen", "F_seen", "F_unseen"])
    ytvos.insert(1, "dataset", "YouTube-VOS 2018 val")
    return pd.concat([davis, ytvos], ignore_index=True)


def paper_table3() -> pd.DataFrame:
    """Table 3 as a frame: method, HaS, KM, DAVIS16 J&F, DAVIS17 J&F, YouTube-VOS overall."""
    return pd.DataFrame(TABLE3, columns=["method", "HaS", "KM", "DAVIS16 J&F", "DAVIS17 J&F",
                                         "YouTube-VOS overall"])


def side_by_side(paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Paper rows then our rows, one frame, with ``source`` and ``protocol`` columns.

    Every row of ``ours`` must carry a non-empty ``protocol`` (how it was made); paper rows get
    :data:`PAPER_PROTOCOL`. Columns missing on one side are left empty (NaN).
    """
    if "protocol" not in ours.columns:
        raise ValueError("our rows need a 'protocol' column (see protocol_label)")
    labels = ours["protocol"]
    if labels.isna().any() or (labels.astype(str).str.strip() == "").any():
        raise ValueError("every one of our rows needs a protocol label")
    left = paper.copy()
    left.insert(0, "source", PAPER)
    left["protocol"] = PAPER_PROTOCOL
    right = ours.copy()
    if "source" in right.columns:
        right = right.drop(columns="source")
    right.insert(0, "source", "ours")
    cols = list(left.columns) + [c for c in right.columns if c not in left.columns]
    frames = [f for f in (left, right) if len(f)]
    return pd.concat(frames, ignore_index=True).reindex(columns=cols)


def table3_effects() -> pd.DataFrame:
    """The paper's Table 3 as effects (DAVIS16 val J&F points): the kernel with and without HaS,
    HaS with and without the kernel — the differences our ``effects.csv`` estimates."""
    t3 = paper_table3()
    kmn = t3[t3["method"] == "KMN"].set_index(["HaS", "KM"])["DAVIS16 J&F"]
    rows = [("KM − STM read, HaS model", kmn[(True, True)] - kmn[(True, False)]),
            ("KM − STM read, no HaS model", kmn[(False, True)] - kmn[(False, False)]),
            ("HaS − no HaS, STM read", kmn[(True, False)] - kmn[(False, False)]),
            ("HaS − no HaS, KM read", kmn[(True, True)] - kmn[(False, True)])]
    return pd.DataFrame([{"source": PAPER, "comparison": c, "DAVIS16 J&F difference": round(d, 1)}
                         for c, d in rows])


def runtime_labelled(table1: pd.DataFrame, ours_hardware: str) -> pd.DataFrame:
    """A :func:`side_by_side` Table 1 with ``s/frame measured on`` after ``s/frame``: the paper's
    GPU for its rows, ``ours_hardware`` for ours (the numbers are not comparable across it)."""
    out = table1.copy()
    where = list(out.columns).index("s/frame") + 1
    out.insert(where, "s/frame measured on",
               [RUNTIME_GPU if src == PAPER else ours_hardware for src in out["source"]])
    return out


def headline_sigma_label(ours: Profile) -> str:
    """What the profile's σ is, said in the paper's terms: ``"σ = 3.5 (paper's 7 at our 1/2
    inference resolution)"`` when it is the resolution-matched width, else its relation to 7."""
    sigma = ours.inference.sigma
    if sigma is None:
        return "STM read (no kernel)"
    matched = ours.resolution_matched_sigma()
    if math.isclose(sigma, matched, rel_tol=1e-6):
        scale = Fraction(matched / PAPER_SIGMA).limit_denominator(64)
        if scale == 1:
            return f"σ = {sigma:g} (the paper's, at its inference resolution)"
        return (f"σ = {sigma:g} (paper's {PAPER_SIGMA:g} at our {scale} inference "
                f"resolution)")
    return f"σ = {sigma:g} (the paper's is {PAPER_SIGMA:g} at {PAPER_PROFILE.inference_label()})"


# --- the paper's claims beside our effects -----------------------------------------------------
#: Paper Table-3 comparison → (our effects.csv ``comparison``, ``read`` with σ filled in).
CLAIM_ROWS: dict[str, tuple[str, str]] = {
    "KM − STM read, HaS model": ("KM − STM read, HaS model", "KM σ={sigma:g} vs STM"),
    "KM − STM read, no HaS model": ("KM − STM read, no HaS model", "KM σ={sigma:g} vs STM"),
    "HaS − no HaS, STM read": ("HaS − no HaS", "STM read"),
    "HaS − no HaS, KM read": ("HaS − no HaS", "KM σ={sigma:g}"),
}
CLAIM_COLUMNS = ["claim", "paper Δ", "ours Δ", "ours Δ low", "ours Δ high", "interval",
                 "smallest detectable Δ", "seeds", "protocol difference"]


def protocol_difference(ours: Profile) -> str:
    """How our protocol differs from the paper's: backbone, iterations, training data, crops and
    inference resolution (the paper's from :data:`kmnlib.config.PAPER`; its iteration counts are
    not stated in the paper, so that profile's are an assumption and are not quoted)."""
    paper_res = PAPER_PROFILE.inference_label()
    return "; ".join([
        f"backbone {ours.model.backbone} (paper {PAPER_PROFILE.model.backbone})",
        f"{ours.pretrain.iterations}+{ours.main.iterations} iterations at batch "
        f"{ours.main.batch_size} (paper: not stated)",
        f"static {'+'.join(ours.static_sets)}, video {'+'.join(ours.video_sets)} (paper static "
        f"{'+'.join(PAPER_PROFILE.static_sets)}, video {'+'.join(PAPER_PROFILE.video_sets)})",
        f"{ours.main.crop_size}² crops (paper {PAPER_PROFILE.main.crop_size}²)",
        f"inference {ours.inference_label()} (paper {paper_res})"])


def effect_interval(row: pd.Series) -> tuple[float, float, float, str]:
    """(low, high, smallest detectable, kind): the seed-level interval where the row has it (two
    or more seeds), else the bootstrap interval over sequences, said so."""
    seeds = len(str(row.get("seeds", "")).split())
    low, high = row.get("seed_ci_low", math.nan), row.get("seed_ci_high", math.nan)
    if seeds >= 2 and not (pd.isna(low) or pd.isna(high)):
        return float(low), float(high), float(row["seed_mde80"]), f"seed-level t, {seeds} seeds"
    why = "one seed" if seeds < 2 else "no seed-level interval in effects.csv"
    return (float(row["ci_low"]), float(row["ci_high"]), float(row["mde80"]),
            f"bootstrap over sequences ({why})")


def claims_table(effects: pd.DataFrame, ours: Profile, *, stage: str = "static + video"
                 ) -> pd.DataFrame:
    """One row per claim of the paper's Table 3 (:func:`table3_effects`): the paper's Δ, ours
    (``effects``: an ``effects.csv`` of the video-trained models at ``ours``' σ) with its interval
    and smallest detectable effect, and how our protocol differs. A claim we have no row for
    keeps its paper Δ and empty numbers."""
    sigma = ours.inference.sigma
    rows = []
    for claim, paper_diff in table3_effects()[["comparison", "DAVIS16 J&F difference"]].values:
        comparison, read = CLAIM_ROWS[claim]
        match = effects[(effects["comparison"] == comparison) & (effects["stage"] == stage)
                        & (effects["read"] == read.format(sigma=sigma))]
        row = {"claim": claim, "paper Δ": paper_diff,
               "protocol difference": protocol_difference(ours)}
        if len(match):
            hit = match.iloc[0]
            low, high, mde, kind = effect_interval(hit)
            row.update({"ours Δ": float(hit["mean_diff"]), "ours Δ low": low, "ours Δ high": high,
                        "interval": kind, "smallest detectable Δ": mde, "seeds": hit["seeds"]})
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS)
