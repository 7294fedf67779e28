"""The data: exact synthesis, resampling samplers, users' sequence files, and the data module."""

from lightsum.data.datamodule import SumDataModule

__all__ = ["SumDataModule"]
