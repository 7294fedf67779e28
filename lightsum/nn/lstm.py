"""An LSTM whose gate activation can be Keras 2's ``hard_sigmoid``: a drop-in ``nn.LSTM``.

Same parameters and ``state_dict`` names as ``nn.LSTM``; with ``recurrent_activation="hard_sigmoid"``
it runs its own recurrence with a hand-written backward pass (see ``_LSTMLayer``), because cuDNN and
oneDNN only fuse the sigmoid cell. Plain ``torch.nn``, no Lightning here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

RecurrentActivation = Literal["sigmoid", "hard_sigmoid"]

_ACTIVATIONS = ("sigmoid", "hard_sigmoid")


def hard_sigmoid(x: Tensor) -> Tensor:
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)`` (0 below -2.5, 1 above 2.5)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def _pack(w: Tensor, hard: bool, shift: bool = False) -> Tensor:
    """Rows of a gate-stacked tensor from torch's (i, f, g, o) order to the recurrence's (o, i, f, g).

    The three sigmoid gates become contiguous, so one clamp/sigmoid covers them, and the three
    gates whose gradient comes from the cell state (i, f, g) are contiguous too, for backward. For
    ``hard_sigmoid`` the sigmoid gates' rows are scaled by 0.2 (and the bias shifted by 0.5), which
    folds Keras' ``0.2 x + 0.5`` into the matmuls, leaving one in-place clamp per step.
    """
    i, f, g, o = w.chunk(4, 0)
    gates = torch.cat([o, i, f])
    if hard:
        gates = gates * 0.2 + 0.5 if shift else gates * 0.2
    return torch.cat([gates, g])


class _LSTMLayer(torch.autograd.Function):
    """One LSTM layer over a whole sequence, with a hand-written backward pass.

    Plain autograd over a per-step loop records ~10 graph nodes per step and measured slower on
    CPU, as did TorchScript and torch.compile (docs/benchmarks.md). Here the
    forward writes everything the backward needs into preallocated (T, B, ...) buffers, and the
    backward is one loop of small tensor ops with one (B, 4H) @ (4H, H) matmul per step, plus one
    big matmul per weight gradient. Nothing saved is modified, so ``retain_graph`` works.

    Inputs: ``x`` (T, B, in) contiguous; ``w_ih`` (4H, in), ``w_hh`` (4H, H) and ``bias`` (4H,)
    already in (o, i, f, g) order (see ``_pack``); ``h0``/``c0`` (B, H) or None for zeros; ``hard``
    selects the gate activation (clamp to [0, 1] of pre-scaled pre-activations, else sigmoid);
    ``save`` whether to keep buffers for backward. Returns every step's h (T, B, H), and the last
    h and c as tensors of their own (so a loss on h_n alone sends no (T, B, H) gradient of zeros).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        bias: Tensor,
        h0: Tensor | None,
        c0: Tensor | None,
        hard: bool,
        save: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        seq_len, batch, _ = x.shape
        hidden = w_hh.shape[1]
        # Input projection for every step in one matmul; each step then adds h @ W_hh^T in place,
        # and the activations overwrite the pre-activations in the same buffer.
        acts = torch.addmm(bias, x.reshape(seq_len * batch, -1), w_ih.t()).view(seq_len, batch, 4 * hidden)
        hs = x.new_empty(seq_len, batch, hidden)
        cs = x.new_empty(seq_len, batch, hidden)
        tcs = x.new_empty(seq_len, batch, hidden) if save else None  # tanh(c), reused by backward
        tmp = None if save else x.new_empty(batch, hidden)
        w_hh_t = w_hh.t()
        h, c = h0, c0
        for t in range(seq_len):
            a = acts[t]
            if h is not None:
                a.addmm_(h, w_hh_t)
            if hard:
                a[:, : 3 * hidden].clamp_(0.0, 1.0)
            else:
                a[:, : 3 * hidden].sigmoid_()
            a[:, 3 * hidden :].tanh_()
            o, i, f, g = a.view(batch, 4, hidden).unbind(1)
            c_t = cs[t]
            if c is None:
                torch.mul(i, g, out=c_t)
            else:
                torch.mul(f, c, out=c_t).addcmul_(i, g)
            tanh_c = torch.tanh(c_t, out=tcs[t] if tcs is not None else tmp)
            h = torch.mul(o, tanh_c, out=hs[t])
            c = c_t
        assert h is not None and c is not None
        if save:
            ctx.hard = hard
            ctx.save_for_backward(x, w_ih, w_hh, acts, hs, cs, tcs, h0, c0)
        return hs, h.clone(), c.clone()

    @staticmethod
    def backward(
        ctx: Any, grad_hs: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, acts, hs, cs, tcs, h0, c0 = ctx.saved_tensors
        need_x, need_w_ih, need_w_hh, need_bias, need_h0, need_c0 = ctx.needs_input_grad[:6]
        need_h0 = need_h0 and h0 is not None
        need_c0 = need_c0 and c0 is not None
        seq_len, batch, n_gates = acts.shape
        hidden = n_gates // 4
        one = acts.new_ones(())
        with torch.autocast(acts.device.type, enabled=False):
            grad_gates = torch.empty_like(acts)  # d loss / d pre-activations, (o, i, f, g)
            dh: Tensor | None = grad_h  # into h_t from step t + 1 (from h_n at the last step)
            dc_next: Tensor | None = grad_c  # into c_t from step t + 1 (already times f_{t+1})
            for t in range(seq_len - 1, -1, -1):
                a = acts[t].view(batch, 4, hidden)
                o, i, f, g = a.unbind(1)
                tanh_c = tcs[t]
                if grad_hs is not None:
                    if dh is None:
                        dh = grad_hs[t]
                    else:  # below the last step dh is this loop's own matmul output
                        dh = dh + grad_hs[t] if t == seq_len - 1 else dh.add_(grad_hs[t])
                if dh is None:
                    dh = torch.zeros_like(tanh_c)
                # dc_t = dc_next + dh * o * (1 - tanh(c)^2), with o * tanh(c) = h.
                dc = torch.addcmul(o, hs[t], tanh_c, value=-1).mul_(dh)
                if dc_next is not None:
                    dc.add_(dc_next)
                s = a[:, :3]
                ds = torch.addcmul(s, s, s, value=-1)  # sigmoid': s (1 - s); hard: 1 inside (0, 1)
                if ctx.hard:
                    ds.sign_()
                d = grad_gates[t].view(batch, 4, hidden)
                torch.mul(dh, tanh_c, out=d[:, 0])
                torch.mul(dc, g, out=d[:, 1])
                c_prev = cs[t - 1] if t > 0 else c0
                if c_prev is None:
                    d[:, 2].zero_()
                else:
                    torch.mul(dc, c_prev, out=d[:, 2])
                torch.mul(dc, i, out=d[:, 3]).mul_(torch.addcmul(one, g, g, value=-1))
                d[:, :3].mul_(ds)
                if t > 0 or need_h0:
                    dh = d.view(batch, n_gates).mm(w_hh)
                if t > 0 or need_c0:
                    dc_next = dc.mul_(f)
            flat = grad_gates.view(seq_len * batch, n_gates)
            d_x = flat.mm(w_ih).view(x.shape) if need_x else None
            d_w_ih = flat.t().mm(x.reshape(seq_len * batch, -1)) if need_w_ih else None
            d_bias = flat.sum(0) if need_bias else None
            d_w_hh = None
            if need_w_hh:
                if seq_len > 1:
                    d_w_hh = grad_gates[1:].view(-1, n_gates).t().mm(hs[:-1].view(-1, hidden))
                else:
                    d_w_hh = torch.zeros_like(w_hh)  # a zero, not None: every parameter gets a grad
                if h0 is not None:
                    d_w_hh.addmm_(grad_gates[0].t(), h0)
        return (
            d_x,
            d_w_ih,
            d_w_hh,
            d_bias,
            dh if need_h0 else None,
            dc_next if need_c0 else None,
            None,
            None,
        )


class LSTM(nn.LSTM):
    """``nn.LSTM`` (``batch_first=True``) whose gate activation can be Keras 2's ``hard_sigmoid``.

    Same parameters and ``state_dict`` names as ``nn.LSTM`` (gate order i, f, g, o), so weights
    move freely between the two activations and to/from a plain ``nn.LSTM``. ``forward`` takes
    ``(input, hx=None)`` and returns ``(output, (h_n, c_n))`` exactly like ``nn.LSTM``.

    With ``"sigmoid"`` forward *is* ``nn.LSTM.forward`` (cuDNN / oneDNN fused kernels; under CPU
    autocast in float32, see ``forward``). With
    ``"hard_sigmoid"`` it runs a gate-by-gate recurrence: i, f, o use ``hard_sigmoid``, g and the
    cell output use tanh; stacked layers get ``dropout`` between them in training mode, as in
    ``nn.LSTM``. That path runs in the parameters' dtype with autocast off (no fp16 kernels to gain
    from) and does not accept a ``PackedSequence``.

    Args:
        input_size: features per time step.
        hidden_size: units per layer.
        num_layers: stacked layers.
        bias: use the ``b_ih``/``b_hh`` biases.
        dropout: dropout on the outputs of every layer but the last (training mode only).
        recurrent_activation: ``sigmoid`` or ``hard_sigmoid`` (``clip(0.2 x + 0.5, 0, 1)``).
        device: where to create the parameters.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        recurrent_activation: RecurrentActivation = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if recurrent_activation not in _ACTIVATIONS:
            raise ValueError(f"recurrent_activation must be one of {_ACTIVATIONS}, got {recurrent_activation!r}")
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=True,
            dropout=dropout,
            device=device,
            dtype=dtype,
        )
        self.recurrent_activation = recurrent_activation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recurrent_activation={self.recurrent_activation!r}"

    def forward(  # type: ignore[override]
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``input`` (B, T, input_size), (T, input_size) unbatched, or a ``PackedSequence`` (sigmoid
        only) -> ``(output, (h_n, c_n))``."""
        if self.recurrent_activation == "hard_sigmoid":
            return self._recurrence(input, hx, "hard_sigmoid")
        packed = isinstance(input, PackedSequence)
        device = (input.data if packed else input).device
        if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU autocast sends the LSTM to oneDNN's bf16 kernel, which needs AVX-512 BF16 and fails
            # elsewhere ("could not create a primitive descriptor", seen on an AVX2 EPYC): run the
            # recurrence in float32 instead, as autocast does with other precision-sensitive ops.
            input = (
                PackedSequence(input.data.float(), input.batch_sizes, input.sorted_indices, input.unsorted_indices)
                if packed
                else input.float()
            )
            with torch.autocast("cpu", enabled=False):
                return super().forward(input, None if hx is None else (hx[0].float(), hx[1].float()))
        return super().forward(input, hx)

    def _recurrence(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None, activation: RecurrentActivation
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The hand-written recurrence with either activation (``sigmoid`` here is for testing it)."""
        if isinstance(input, PackedSequence):
            raise TypeError("LSTM with recurrent_activation='hard_sigmoid' does not accept a PackedSequence")
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM expects a 2-D or 3-D input, got shape {tuple(input.shape)}")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx is None:  # nn.LSTM's own dtype and shape checks
            self.check_input(input, None)
        else:
            self.check_forward_args(input, hx, None)
        hard = activation == "hard_sigmoid"
        layers = self.all_weights
        dtype = layers[0][0].dtype
        save = torch.is_grad_enabled() and (
            input.requires_grad
            or any(p.requires_grad for p in self.parameters())
            or (hx is not None and (hx[0].requires_grad or hx[1].requires_grad))
        )
        with torch.autocast(input.device.type, enabled=False):
            x = input.to(dtype).transpose(0, 1).contiguous()  # (T, B, in): one step is one slab
            h_n, c_n = [], []
            for layer, params in enumerate(layers):
                w_ih, w_hh = params[0], params[1]
                bias = params[2] + params[3] if self.bias else w_ih.new_zeros(w_ih.shape[0])
                h0 = hx[0][layer].to(dtype) if hx is not None else None
                c0 = hx[1][layer].to(dtype) if hx is not None else None
                # One step from a zero state never reads W_hh (the flat layout): skip packing it.
                w_hh = _pack(w_hh, hard) if x.shape[0] > 1 or h0 is not None else w_hh
                hs, h, c = _LSTMLayer.apply(
                    x, _pack(w_ih, hard), w_hh, _pack(bias, hard, shift=True), h0, c0, hard, save
                )
                h_n.append(h)
                c_n.append(c)
                x = hs
                if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                    x = F.dropout(hs, self.dropout, training=True)
        output = hs.transpose(0, 1)
        hidden = (torch.stack(h_n), torch.stack(c_n))
        if not batched:
            return output.squeeze(0), (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, hidden
