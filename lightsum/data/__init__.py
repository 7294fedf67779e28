"""The data: two sources (generated digit sums, users' sequence files) over one shared layer of sets,
loaders and samplers."""

from lightsum.data.digit_sums import SumDataModule
from lightsum.data.module import ClassBalance, SequenceDataModule
from lightsum.data.sequence_files import SequenceFiles

__all__ = ["ClassBalance", "SequenceDataModule", "SequenceFiles", "SumDataModule"]
