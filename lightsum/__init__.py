"""lightsum: LSTM classifiers for imbalanced sequence data (digit sums, or your own files), with per-class recall."""

from lightsum.classifier import SumClassifier
from lightsum.data import SequenceFiles, SumDataModule

__all__ = ["SequenceFiles", "SumClassifier", "SumDataModule"]
__version__ = "0.1.0"
