"""SumNet: LSTM -> last hidden state -> Dropout -> Linear, one logit per sequence."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightsum.nn.lstm import LSTM, RecurrentActivation

Init = Literal["torch", "keras"]
_INITS = ("torch", "keras")


class SumNet(nn.Module):
    """LSTM -> last step's hidden state -> Dropout -> Linear(hidden, 1): one logit per sequence.

    The Keras original is ``LSTM(200, recurrent_activation="hard_sigmoid", unit_forget_bias=True)
    -> Dropout(0.5) -> Dense(1, sigmoid)``; this returns the logit (train with BCE-with-logits,
    which is the numerically stable form of that sigmoid + binary cross-entropy).

    Args:
        input_size: features per time step (1 for a (B, 30, 1) sequence, 30 for (B, 1, 30) flat).
        hidden_size: LSTM units.
        num_layers: stacked LSTM layers.
        dropout: dropout on the last hidden state, and between stacked layers.
        recurrent_activation: gate activation; ``sigmoid`` uses the fused ``nn.LSTM`` kernels.
        unit_forget_bias: start every layer's total forget-gate bias at 1 (Keras' default), so the
            cell remembers by default early in training. Set in ``bias_ih``; ``bias_hh``'s forget
            slice is zeroed, so the sum is exactly 1.
        init: ``torch`` keeps PyTorch's defaults (uniform +-1/sqrt(hidden)); ``keras`` copies
            Keras 2's: Glorot-uniform input kernel over the whole (4H, in) matrix, orthogonal
            recurrent kernel (``orthogonal_`` on torch's (4H, H) weight: Keras' (H, 4H) kernel
            transposed), zero biases, Glorot-uniform Dense weight and zero Dense bias.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        recurrent_activation: RecurrentActivation = "sigmoid",
        unit_forget_bias: bool = True,
        init: Init = "torch",
    ) -> None:
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        # nn.LSTM warns about dropout with one layer, where it has nothing to do.
        self.lstm = LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            recurrent_activation=recurrent_activation,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, 1)
        self.unit_forget_bias = unit_forget_bias
        self.init = init
        self._apply_init()

    def reset_parameters(self) -> None:
        """Re-draw all weights as ``init`` and ``unit_forget_bias`` say."""
        self.lstm.reset_parameters()
        self.head.reset_parameters()
        self._apply_init()

    def _apply_init(self) -> None:
        """Overwrite PyTorch's default initialisation (already done) where ``init``/``unit_forget_bias`` say."""
        hidden = self.lstm.hidden_size
        forget = slice(hidden, 2 * hidden)  # torch gate order: i, f, g, o
        with torch.no_grad():
            for w_ih, w_hh, b_ih, b_hh in self.lstm.all_weights:
                if self.init == "keras":
                    nn.init.xavier_uniform_(w_ih)
                    nn.init.orthogonal_(w_hh)
                    b_ih.zero_()
                    b_hh.zero_()
                if self.unit_forget_bias:
                    b_ih[forget] = 1.0
                    b_hh[forget] = 0.0
            if self.init == "keras":
                nn.init.xavier_uniform_(self.head.weight)
                self.head.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float (B, T, input_size) -> logits (B,)."""
        _, (h_n, _) = self.lstm(x)
        return self.head(self.dropout(h_n[-1])).squeeze(-1)
