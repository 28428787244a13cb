"""Training: the STM step (:mod:`.step`), a stage's data (:mod:`.batches`), its CSV log
(:mod:`.log`) and the stage itself (:mod:`.trainer`). The command line is ``python -m kmnlib.train``."""
from kmnlib.training.step import TrainingDiverged
from kmnlib.training.trainer import Trainer, checkpoint_name, train_stage

__all__ = ["Trainer", "TrainingDiverged", "checkpoint_name", "train_stage"]
