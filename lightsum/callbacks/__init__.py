"""Callbacks the CLI adds to every trainer (each one job, each usable on its own)."""

from lightsum.callbacks.figures import EvaluationFigures
from lightsum.callbacks.hparams import HparamsSession
from lightsum.callbacks.predictions import PredictionCSV
from lightsum.callbacks.preemption import Preemption
from lightsum.callbacks.random_states import RandomStates
from lightsum.callbacks.train_loss import TrainLoss

__all__ = ["EvaluationFigures", "HparamsSession", "PredictionCSV", "Preemption", "RandomStates", "TrainLoss"]
