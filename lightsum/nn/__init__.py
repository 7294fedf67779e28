"""The network, plain ``torch.nn``: the hard_sigmoid-capable LSTM and SumNet around it."""

from lightsum.nn.lstm import LSTM, RecurrentActivation, hard_sigmoid
from lightsum.nn.sumnet import Init, SumNet

__all__ = ["LSTM", "Init", "RecurrentActivation", "SumNet", "hard_sigmoid"]
