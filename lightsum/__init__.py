"""lightsum: LSTM classifiers for imbalanced digit-sum data, with per-class recall."""

from lightsum.classifier import SumClassifier
from lightsum.data import SumDataModule

__all__ = ["SumClassifier", "SumDataModule"]
__version__ = "0.1.0"
