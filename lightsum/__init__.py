"""lightsum: LSTM classifiers for imbalanced digit-sum data, with per-class recall."""

from lightsum.data import SumDataModule
from lightsum.model import SumClassifier

__all__ = ["SumClassifier", "SumDataModule"]
__version__ = "0.1.0"
