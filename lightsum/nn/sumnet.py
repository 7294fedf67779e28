"""SumNet: (Embedding ->) LSTM -> last step's hidden state -> Dropout -> Linear, one logit per sequence."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from lightsum.nn.lstm import LSTM, RecurrentActivation

Init = Literal["torch", "keras"]
_INITS = ("torch", "keras")
_KERAS_EMBEDDING_LIMIT = 0.05  # Keras' Embedding default: RandomUniform(-0.05, 0.05)


def packs(lstm: LSTM, x: Tensor) -> bool:
    """Whether a padded batch is packed for ``lstm``: the fused sigmoid LSTM on a GPU."""
    return lstm.recurrent_activation == "sigmoid" and x.is_cuda


class SumNet(nn.Module):
    """LSTM -> last step's hidden state -> Dropout -> Linear(hidden, 1): one logit per sequence.

    The Keras original is ``LSTM(200, recurrent_activation="hard_sigmoid", unit_forget_bias=True)
    -> Dropout(0.5) -> Dense(1, sigmoid)``; this returns the logit (train with BCE-with-logits,
    which is the numerically stable form of that sigmoid + binary cross-entropy).

    Sequences of different lengths, padded at the end to a common T, are read each to its own last
    step when ``forward`` gets their ``lengths``. With ``num_embeddings`` set, the input is integer
    token codes (0 is padding) that an ``nn.Embedding`` turns into vectors before the LSTM.

    Args:
        input_size: numbers per time step (1 for a (B, 30, 1) sequence, 30 for (B, 1, 30) flat).
            Ignored with ``num_embeddings`` (tokens), where the LSTM's input is ``embedding_size``
            wide whatever the data: one integer code per step has no feature count to pass, and
            ignoring it lets a caller pass the same value for both kinds of data.
        hidden_size: LSTM units.
        num_layers: stacked LSTM layers.
        dropout: dropout on the last hidden state, and between stacked layers.
        recurrent_activation: gate activation; ``sigmoid`` uses the fused ``nn.LSTM`` kernels.
        unit_forget_bias: start every layer's total forget-gate bias at ``forget_bias`` (Keras'
            default, at 1), so the cell remembers by default early in training. Set in ``bias_ih``;
            ``bias_hh``'s forget slice is zeroed, so the sum is exactly ``forget_bias``.
        forget_bias: where ``unit_forget_bias`` starts the forget gate: 1 as Keras; larger values
            start each unit closer to an integrator that keeps what it adds (sigmoid(5) keeps 99.3%
            a step), which a count over every step of a sequence needs.
        init: ``torch`` keeps PyTorch's defaults (uniform +-1/sqrt(hidden); embedding N(0, 1));
            ``keras`` copies Keras 2's: Glorot-uniform input kernel over the whole (4H, in) matrix,
            orthogonal recurrent kernel (``orthogonal_`` on torch's (4H, H) weight: Keras' (H, 4H)
            kernel transposed), zero biases, Glorot-uniform Dense weight and zero Dense bias, and
            uniform(-0.05, 0.05) embedding. Either way the embedding's padding row (code 0) is zero.
        num_embeddings: number of token codes, padding's 0 included (codes are 0 ..
            num_embeddings - 1); ``None`` (default) for numeric input. Setting it makes the input
            (B, T) integer codes, embedded before the LSTM; code 0 is padding and embeds to zeros
            (``padding_idx=0``: its row gets no gradient, so it stays zero while training).
        embedding_size: width of each token's vector, i.e. the LSTM's input size for tokens.
            Unused without ``num_embeddings``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        recurrent_activation: RecurrentActivation = "sigmoid",
        unit_forget_bias: bool = True,
        forget_bias: float = 1.0,
        init: Init = "torch",
        num_embeddings: int | None = None,
        embedding_size: int = 32,
    ) -> None:
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if num_embeddings is not None and num_embeddings < 2:
            raise ValueError(f"num_embeddings counts padding's code 0 too, so must be >= 2, got {num_embeddings}")
        # Token codes -> vectors; None for numeric input (forward then feeds x to the LSTM as is).
        self.embedding = (
            nn.Embedding(num_embeddings, embedding_size, padding_idx=0) if num_embeddings is not None else None
        )
        # nn.LSTM warns about dropout with one layer, where it has nothing to do.
        self.lstm = LSTM(
            embedding_size if num_embeddings is not None else input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            recurrent_activation=recurrent_activation,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, 1)
        self.unit_forget_bias = unit_forget_bias
        self.forget_bias = forget_bias
        self.init = init
        self._apply_init()

    def reset_parameters(self) -> None:
        """Re-draw all weights as ``init``, ``unit_forget_bias`` and ``forget_bias`` say."""
        if self.embedding is not None:
            self.embedding.reset_parameters()  # N(0, 1), padding row zeroed
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
                    b_ih[forget] = self.forget_bias
                    b_hh[forget] = 0.0
            if self.init == "keras":
                nn.init.xavier_uniform_(self.head.weight)
                self.head.bias.zero_()
                if self.embedding is not None:
                    nn.init.uniform_(self.embedding.weight, -_KERAS_EMBEDDING_LIMIT, _KERAS_EMBEDDING_LIMIT)
                    self.embedding.weight[0].zero_()  # padding embeds to zeros, as nn.Embedding's own init

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits (B,) of sequences ``x``, each read to its last step.

        Args:
            x: float (B, T, input_size) numbers, or with ``num_embeddings`` integer (int32/int64)
                codes (B, T), 0 for padding. Any T: nothing depends on a maximum length.
            lengths: int (B,) steps of each sequence, each in [1, T], on the CPU or on ``x``'s
                device; padding fills the steps after. ``None``: every sequence is T steps long
                (the fixed-length path, unchanged and with no extra work). With the ``sigmoid``
                LSTM on a GPU the padding is never read (the batch is packed, which needs the
                lengths on the CPU: lengths on a GPU cost one device sync); otherwise the padded
                batch runs whole and each row's output is taken at its own last step, so padding
                must be finite (NaN or inf there would reach the gradients). Range and shape are
                checked when ``lengths`` is on the CPU.
        """
        if self.embedding is not None:
            x = self.embedding(x)
        if lengths is None:
            _, (h_n, _) = self.lstm(x)
            last = h_n[-1]
        else:
            last = self._last_hidden(x, lengths)
        return self.head(self.dropout(last)).squeeze(-1)

    def _last_hidden(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The top layer's hidden state at step ``lengths - 1`` of each row of ``x`` (B, T, in)."""
        batch, steps = x.shape[0], x.shape[1]
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},) for a batch of {batch}, got {tuple(lengths.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        # Packed sequences on a GPU, where cuDNN takes them as its own format; on a CPU packing
        # measured slower than running the padded batch whole and gathering each row's last state
        # (docs/benchmarks.md): the same values, as the recurrence runs forward in time.
        pack = packs(self.lstm, x)
        if pack:
            lengths = lengths.cpu()  # pack_padded_sequence wants them there: one device sync
        if lengths.device.type == "cpu":
            shortest, longest = int(lengths.min()), int(lengths.max())
            if shortest < 1 or longest > steps:
                raise ValueError(f"lengths must be in [1, {steps}] (T of x), got {shortest} .. {longest}")
            if shortest == steps:  # nothing padded: the fixed-length path
                _, (h_n, _) = self.lstm(x)
                return h_n[-1]
        if pack:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm(packed)
            return h_n[-1]  # back in the batch's order (nn.LSTM un-sorts h_n with enforce_sorted=False)
        # The whole padded batch, then each row's output at its own last step: steps after a row's
        # last one cannot change it, and backward sends exactly zero gradient to them.
        output, _ = self.lstm(x)  # (B, T, H), the top layer
        index = (lengths.to(device=output.device, dtype=torch.long) - 1).view(batch, 1, 1)
        return output.gather(1, index.expand(batch, 1, output.shape[2])).squeeze(1)
