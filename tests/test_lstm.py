"""lightsum.nn.lstm: Keras 2's hard_sigmoid, the hand-written recurrence against a reference, and nn.LSTM parity."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence

from lightsum.nn import LSTM, hard_sigmoid
from lightsum.nn import lstm as network

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to OpenMP stalls when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def keras_hard_sigmoid(x: float) -> float:
    """Keras 2 (backend) hard_sigmoid, written out: 0 below -2.5, 1 above 2.5, else 0.2 x + 0.5."""
    if x < -2.5:
        return 0.0
    if x > 2.5:
        return 1.0
    return 0.2 * x + 0.5


def reference_lstm(
    x: Tensor, weights: list[list[Tensor]], activation: str, hx: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Slow, obvious LSTM: a Python loop over time with one weight matrix per gate, no dropout.

    ``weights`` are per layer [w_ih, w_hh, b_ih, b_hh] in torch's layout (gates i, f, g, o).
    """
    if activation == "hard_sigmoid":

        def act(z: Tensor) -> Tensor:
            return torch.clamp(0.2 * z + 0.5, min=0.0, max=1.0)
    else:
        act = torch.sigmoid
    batch, steps, _ = x.shape
    layer_input = x
    h_n, c_n = [], []
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        hidden = w_hh.shape[1]
        W_i, W_f, W_g, W_o = w_ih.split(hidden)
        U_i, U_f, U_g, U_o = w_hh.split(hidden)
        bi_i, bi_f, bi_g, bi_o = b_ih.split(hidden)
        bh_i, bh_f, bh_g, bh_o = b_hh.split(hidden)
        if hx is None:
            h = x.new_zeros(batch, hidden)
            c = x.new_zeros(batch, hidden)
        else:
            h, c = hx[0][layer], hx[1][layer]
        outputs = []
        for t in range(steps):
            x_t = layer_input[:, t]
            i = act(x_t @ W_i.T + bi_i + h @ U_i.T + bh_i)
            f = act(x_t @ W_f.T + bi_f + h @ U_f.T + bh_f)
            g = torch.tanh(x_t @ W_g.T + bi_g + h @ U_g.T + bh_g)
            o = act(x_t @ W_o.T + bi_o + h @ U_o.T + bh_o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            outputs.append(h)
        layer_input = torch.stack(outputs, dim=1)
        h_n.append(h)
        c_n.append(c)
    return layer_input, (torch.stack(h_n), torch.stack(c_n))


def loss_of(out: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """A loss that sends gradient through every output, h_n and c_n (and so through grad_c too)."""
    return out.square().sum() + h.sin().sum() + c.cos().sum()


def grads(loss: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def make_case(
    input_size: int,
    steps: int,
    num_layers: int,
    with_hx: bool,
    hidden: int = 12,
    batch: int = 5,
    activation: str = "hard_sigmoid",
) -> tuple[LSTM, Tensor, tuple[Tensor, Tensor] | None]:
    """A float64 LSTM (eval mode), an input and optionally an initial state, all requiring grad."""
    lstm = LSTM(input_size, hidden, num_layers=num_layers, recurrent_activation=activation)  # type: ignore[arg-type]
    lstm = lstm.double().eval()
    with torch.no_grad():  # larger weights than the default: more saturated gates, clamp regions hit
        for p in lstm.parameters():
            p.mul_(6.0)
    x = torch.randn(batch, steps, input_size, dtype=torch.float64, requires_grad=True)
    hx = None
    if with_hx:
        hx = (
            torch.randn(num_layers, batch, hidden, dtype=torch.float64, requires_grad=True),
            torch.randn(num_layers, batch, hidden, dtype=torch.float64, requires_grad=True),
        )
    return lstm, x, hx


# --------------------------------------------------------------------------- hard_sigmoid


def test_hard_sigmoid_matches_keras_definition() -> None:
    points = [-10.0, -3.0, -2.5, -2.4, -1.0, -0.3, 0.0, 0.7, 1.0, 2.4, 2.5, 3.0, 10.0]
    got = hard_sigmoid(torch.tensor(points, dtype=torch.float64))
    expected = torch.tensor([keras_hard_sigmoid(p) for p in points], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert got[points.index(-3.0)] == 0.0 and got[points.index(3.0)] == 1.0
    assert got[points.index(-2.5)] == 0.0 and got[points.index(2.5)] == 1.0
    assert got[points.index(0.0)] == 0.5


def test_hard_sigmoid_on_a_grid_matches_clip_formula() -> None:
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(hard_sigmoid(x), torch.clip(0.2 * x + 0.5, 0, 1))


# --------------------------------------------------------------------------- recurrence


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(("steps", "input_size"), [(30, 1), (1, 30), (4, 3)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_hard_sigmoid_lstm_matches_reference(num_layers: int, steps: int, input_size: int, with_hx: bool) -> None:
    torch.manual_seed(0)
    lstm, x, hx = make_case(input_size, steps, num_layers, with_hx)
    params = list(lstm.parameters())
    inputs = [x, *params] + (list(hx) if hx is not None else [])

    out, (h, c) = lstm(x, hx)
    got = [out, h, c, *grads(loss_of(out, h, c), inputs)]
    out_r, (h_r, c_r) = reference_lstm(x, lstm.all_weights, "hard_sigmoid", hx)
    expected = [out_r, h_r, c_r, *grads(loss_of(out_r, h_r, c_r), inputs)]

    assert out.shape == (5, steps, 12) and h.shape == c.shape == (num_layers, 5, 12)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("target", ["output", "h_n", "c_n", "last_output"])
def test_hard_sigmoid_lstm_gradients_from_each_output_alone(target: str) -> None:
    """Gradient reaching the recurrence only through one of its outputs (e.g. SumNet: h_n)."""
    torch.manual_seed(0)
    lstm, x, _ = make_case(1, 30, 2, False)
    inputs = [x, *lstm.parameters()]

    def pick(out: Tensor, hidden: tuple[Tensor, Tensor]) -> Tensor:
        chosen = {"output": out, "h_n": hidden[0], "c_n": hidden[1], "last_output": out[:, -1]}[target]
        return chosen.tanh().sum()

    got = grads(pick(*lstm(x)), inputs)
    expected = grads(pick(*reference_lstm(x, lstm.all_weights, "hard_sigmoid")), inputs)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_reference_case_exercises_both_clamp_regions() -> None:
    """The weights used above saturate some gates, so the clamp's flat parts are tested too."""
    torch.manual_seed(0)
    lstm, x, _ = make_case(1, 30, 1, False)
    pre = x.detach() @ lstm.weight_ih_l0.detach().T + lstm.bias_ih_l0.detach() + lstm.bias_hh_l0.detach()
    assert (pre < -2.5).any() and (pre > 2.5).any() and (pre.abs() < 2.5).any()


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(("steps", "input_size"), [(30, 1), (1, 30)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_manual_recurrence_with_sigmoid_matches_nn_lstm(
    num_layers: int, steps: int, input_size: int, with_hx: bool
) -> None:
    torch.manual_seed(0)
    lstm, x, hx = make_case(input_size, steps, num_layers, with_hx, activation="sigmoid")
    ref = nn.LSTM(input_size, 12, num_layers=num_layers, batch_first=True).double()
    ref.load_state_dict(lstm.state_dict())
    inputs_manual = [x, *lstm.parameters()] + (list(hx) if hx is not None else [])
    inputs_ref = [x, *ref.parameters()] + (list(hx) if hx is not None else [])

    out, (h, c) = lstm._recurrence(x, hx, "sigmoid")
    got = [out, h, c, *grads(loss_of(out, h, c), inputs_manual)]
    out_r, (h_r, c_r) = ref(x, hx)
    expected = [out_r, h_r, c_r, *grads(loss_of(out_r, h_r, c_r), inputs_ref)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_hard_sigmoid_lstm_float32_close_to_float64_reference() -> None:
    torch.manual_seed(0)
    lstm = LSTM(1, 16, recurrent_activation="hard_sigmoid")
    x = torch.randn(8, 30, 1)
    out, (h, c) = lstm(x)
    out_r, (h_r, c_r) = reference_lstm(
        x.double(), [[w.double() for w in ws] for ws in lstm.all_weights], "hard_sigmoid"
    )
    torch.testing.assert_close(out, out_r.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c, c_r.float(), atol=1e-5, rtol=1e-4)


def test_hard_sigmoid_lstm_gradcheck() -> None:
    """Finite differences on every input of one layer (x, weights, h0, c0), outputs h and c."""
    torch.manual_seed(0)
    lstm, x, hx = make_case(3, 4, 1, True, hidden=4, batch=2)
    params = list(lstm.parameters())

    def run(x: Tensor, h0: Tensor, c0: Tensor, *weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w_ih, w_hh, b_ih, b_hh = weights
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        hard = True
        hs, h, c = network._LSTMLayer.apply(
            x.transpose(0, 1).contiguous(),
            network._pack(w_ih, hard),
            network._pack(w_hh, hard),
            network._pack(b_ih + b_hh, hard, shift=True),
            h0[0],
            c0[0],
            hard,
            True,
        )
        return hs, h, c

    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, (x, hx[0], hx[1], *weights))


def test_inter_layer_dropout_only_in_training_and_only_between_layers() -> None:
    torch.manual_seed(0)
    lstm = LSTM(1, 16, num_layers=2, dropout=0.5, recurrent_activation="hard_sigmoid")
    x = torch.randn(6, 30, 1)
    lstm.eval()
    _, (h_eval, _) = lstm(x)
    _, (h_eval_again, _) = lstm(x)
    lstm.train()
    _, (h_train, _) = lstm(x)
    torch.testing.assert_close(h_eval, h_eval_again, atol=0, rtol=0)
    torch.testing.assert_close(h_train[0], h_eval[0])  # first layer: no dropout on its input
    assert not torch.allclose(h_train[1], h_eval[1])  # second layer sees a dropped-out input

    one_layer = LSTM(1, 16, num_layers=1, recurrent_activation="hard_sigmoid")
    torch.testing.assert_close(one_layer.train()(x)[0], one_layer.eval()(x)[0])


def test_backward_twice_with_retain_graph() -> None:
    torch.manual_seed(0)
    lstm = LSTM(1, 8, recurrent_activation="hard_sigmoid")
    loss = lstm(torch.randn(3, 5, 1))[0].sum()
    loss.backward(retain_graph=True)
    first = lstm.weight_hh_l0.grad.clone()
    loss.backward()
    torch.testing.assert_close(lstm.weight_hh_l0.grad, 2 * first)


def test_no_grad_forward_matches_grad_forward() -> None:
    torch.manual_seed(0)
    lstm = LSTM(1, 8, num_layers=2, recurrent_activation="hard_sigmoid")
    x = torch.randn(3, 7, 1)
    out, (h, c) = lstm(x)
    with torch.inference_mode():
        out_ng, (h_ng, c_ng) = lstm(x)
    for a, b in ((out, out_ng), (h, h_ng), (c, c_ng)):
        torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)


def test_unbatched_input_like_nn_lstm() -> None:
    torch.manual_seed(0)
    lstm = LSTM(2, 8, num_layers=2).double()
    x = torch.randn(7, 2, dtype=torch.float64)
    expected_out, (expected_h, expected_c) = lstm(x)  # fused nn.LSTM handles unbatched input
    out, (h, c) = lstm._recurrence(x, None, "sigmoid")
    assert out.shape == (7, 8) and h.shape == c.shape == (2, 8)
    for a, b in ((out, expected_out), (h, expected_h), (c, expected_c)):
        torch.testing.assert_close(a, b, **TOL)


def test_sigmoid_lstm_is_the_fused_nn_lstm() -> None:
    torch.manual_seed(0)
    lstm = LSTM(1, 8)
    ref = nn.LSTM(1, 8, batch_first=True)
    ref.load_state_dict(lstm.state_dict())
    x = torch.randn(3, 5, 1)
    torch.testing.assert_close(lstm(x)[0], ref(x)[0], atol=0, rtol=0)


def test_lstm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="recurrent_activation"):
        LSTM(1, 8, recurrent_activation="relu")  # type: ignore[arg-type]
    lstm = LSTM(1, 8, recurrent_activation="hard_sigmoid")
    with pytest.raises(TypeError, match="PackedSequence"):
        lstm(pack_sequence([torch.randn(3, 1), torch.randn(2, 1)]))
    with pytest.raises(RuntimeError, match="input_size"):
        lstm(torch.randn(2, 5, 3))
    assert "hard_sigmoid" in repr(lstm)


@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid"])
def test_cpu_autocast_runs_the_recurrence_in_float32(activation: str) -> None:
    """oneDNN's bf16 LSTM needs AVX-512 BF16 (it raised on an AVX2 CPU): under CPU autocast the
    fused path runs in float32, with the same result as outside autocast."""
    torch.manual_seed(0)
    lstm = LSTM(1, 8, recurrent_activation=activation)  # type: ignore[arg-type]
    x = torch.randn(3, 5, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = lstm(x)
    assert out.dtype == h.dtype == c.dtype == torch.float32
    torch.testing.assert_close(out, lstm(x)[0], atol=0, rtol=0)
    out.sum().backward()
    assert all(p.grad is not None for p in lstm.parameters())
