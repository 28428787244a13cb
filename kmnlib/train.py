"""``python -m kmnlib.train``: train one stage from the command line (also under ``torchrun``).

    python -m kmnlib.train --profile mini --stage pretrain [--no-hide] [--iterations N] [--seed S]
    python -m kmnlib.train --profile mini --stage main --init results/mini/checkpoints/pretrain.pt
    torchrun --nproc_per_node=8 -m kmnlib.train --profile paper --stage main --init ... --out ...

The training itself is :class:`kmnlib.training.Trainer`.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from kmnlib.checkpoints import check_run_name, load_finished_checkpoint
from kmnlib.cli import add_debug_flag, check_device, check_output_dir, positive_int, run_command
from kmnlib.config import STAGES, get_profile, resolve_data_root, results_root
from kmnlib.denormals import flush_denormals
from kmnlib.model.backbones import resolve_weights
from kmnlib.training import TrainingDiverged, train_stage


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmnlib.train", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--stage", choices=STAGES, required=True)
    ap.add_argument("--data-root", type=Path, default=None,
                    help="datasets folder (default: $KMN_DATA or <repo>/data)")
    ap.add_argument("--out", type=Path, default=None,
                    help="checkpoint folder (default results/<profile>/checkpoints)")
    ap.add_argument("--no-hide", action="store_true", help="pretrain without Hide-and-Seek (p = 0)")
    ap.add_argument("--init", type=Path, default=None, help="checkpoint to start from (main stage)")
    ap.add_argument("--iterations", type=positive_int, default=None,
                    help="override the stage's iterations")
    ap.add_argument("--seed", type=int, default=None, help="override the profile's seed")
    ap.add_argument("--device", default=None)
    ap.add_argument("--name", default=None, help="run name (default from stage/hide/init)")
    ap.add_argument("--force", action="store_true",
                    help="retrain even if the final checkpoint exists (it is replaced only when "
                         "the new one is written)")
    ap.add_argument("--no-resume", action="store_true", help="ignore <name>.last.pt and start over")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch intra-op threads (1 is much faster when other jobs share the CPU)")
    add_debug_flag(ap)
    a = ap.parse_args(argv)

    def work() -> int:
        if a.threads:
            torch.set_num_threads(a.threads)
        # An entry point: every training process (each torchrun rank too) starts here.
        flush_denormals()
        overrides: dict[str, object] = {}
        if a.iterations is not None:
            overrides[f"{a.stage}.iterations"] = a.iterations
        if a.seed is not None:
            overrides["seed"] = a.seed
        profile = get_profile(a.profile).with_overrides(overrides)
        data_root = resolve_data_root(a.data_root)
        # Every argument is checked before the output folder is made or anything is computed.
        if not data_root.is_dir():
            raise FileNotFoundError(f"--data-root {data_root}: data root not found (run `make "
                                    f"data`, or pass --data-root / set KMN_DATA to the folder "
                                    f"holding the datasets)")
        check_device(a.device, setting="--device")
        if a.name is not None:
            check_run_name(a.name)
        if a.init is not None:
            _check_init(Path(a.init))
        resolve_weights(profile.model)  # the ImageNet weights file is there
        out = check_output_dir(a.out or results_root() / profile.name / "checkpoints",
                               argument="--out", inputs=[data_root])
        path = train_stage(profile, a.stage, out, data_root=data_root, init=a.init,
                           hide=not a.no_hide, device=a.device, resume=not a.no_resume,
                           progress=not a.quiet, force=a.force, name=a.name)
        if int(os.environ.get("RANK", "0")) == 0:
            print(path)
        return 0

    return run_command(work, debug=a.debug, status=1, extra_errors=(TrainingDiverged,))


def _check_init(init: Path) -> None:
    """``--init``: an existing file holding a finished run's checkpoint (one line otherwise)."""
    if init.is_dir():
        raise IsADirectoryError(f"--init {init}: is a directory, expected a checkpoint file "
                                f"(e.g. {init / 'pretrain.pt'})")
    if not init.exists():
        raise FileNotFoundError(f"--init {init}: checkpoint not found")
    load_finished_checkpoint(init, argument="--init")


if __name__ == "__main__":
    sys.exit(main())
