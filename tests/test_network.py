from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence

from lightsum import network
from lightsum.network import LSTM, SumNet, hard_sigmoid

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
    out_r, (h_r, c_r) = reference_lstm(x.double(), [[w.double() for w in ws] for ws in lstm.all_weights], "hard_sigmoid")
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


def test_every_parameter_gets_a_gradient_in_flat_layout() -> None:
    """One time step never uses W_hh; it still gets a (zero) grad, as with nn.LSTM (DDP needs it)."""
    torch.manual_seed(0)
    net = SumNet(30, 8, num_layers=2, recurrent_activation="hard_sigmoid")
    net(torch.rand(4, 1, 30)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    assert torch.count_nonzero(net.lstm.weight_hh_l0.grad) == 0


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


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("num_layers", [1, 2])
def test_keras_init(num_layers: int) -> None:
    torch.manual_seed(0)
    hidden, input_size = 32, 3
    net = SumNet(input_size, hidden, num_layers=num_layers, init="keras", unit_forget_bias=True)
    forget = slice(hidden, 2 * hidden)
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(net.lstm.all_weights):
        fan_in = input_size if layer == 0 else hidden
        limit = math.sqrt(6 / (fan_in + 4 * hidden))  # Glorot over the whole (in, 4H) Keras kernel
        assert w_ih.abs().max() <= limit
        assert w_ih.abs().max() > 0.9 * limit  # uses the bound, not a smaller per-gate one
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(hidden), atol=1e-5, rtol=0)  # orthogonal
        expected_b_ih = torch.zeros(4 * hidden)
        expected_b_ih[forget] = 1.0
        torch.testing.assert_close(b_ih, expected_b_ih, atol=0, rtol=0)
        torch.testing.assert_close(b_hh, torch.zeros(4 * hidden), atol=0, rtol=0)
    head_limit = math.sqrt(6 / (hidden + 1))
    assert 0.5 * head_limit < net.head.weight.abs().max() <= head_limit
    assert torch.count_nonzero(net.head.bias) == 0


def test_keras_init_without_unit_forget_bias_has_zero_biases() -> None:
    torch.manual_seed(0)
    net = SumNet(1, 16, init="keras", unit_forget_bias=False)
    assert torch.count_nonzero(net.lstm.bias_ih_l0) == 0
    assert torch.count_nonzero(net.lstm.bias_hh_l0) == 0


@pytest.mark.parametrize("num_layers", [1, 2])
def test_torch_init_with_unit_forget_bias(num_layers: int) -> None:
    torch.manual_seed(0)
    hidden = 16
    net = SumNet(1, hidden, num_layers=num_layers, init="torch", unit_forget_bias=True)
    bound = 1 / math.sqrt(hidden)
    for w_ih, w_hh, b_ih, b_hh in net.lstm.all_weights:
        assert torch.all(b_ih[hidden : 2 * hidden] == 1.0)
        assert torch.all(b_hh[hidden : 2 * hidden] == 0.0)
        for other in (b_ih[:hidden], b_ih[2 * hidden :], b_hh[:hidden], b_hh[2 * hidden :]):
            assert other.abs().max() <= bound and other.std() > 0  # PyTorch's default, untouched
        assert w_ih.abs().max() <= bound and w_hh.abs().max() <= bound


def test_torch_init_without_unit_forget_bias_is_pytorch_default() -> None:
    torch.manual_seed(0)
    net = SumNet(1, 16, init="torch", unit_forget_bias=False)
    torch.manual_seed(0)
    plain = nn.LSTM(1, 16, batch_first=True)
    torch.testing.assert_close(net.lstm.state_dict(), plain.state_dict(), atol=0, rtol=0)


def test_sumnet_rejects_unknown_init() -> None:
    with pytest.raises(ValueError, match="init"):
        SumNet(1, 8, init="xavier")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- SumNet


@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(("shape", "input_size"), [((7, 30, 1), 1), ((7, 1, 30), 30), ((1, 30, 1), 1)])
def test_sumnet_output_shape(activation: str, num_layers: int, shape: tuple[int, ...], input_size: int) -> None:
    torch.manual_seed(0)
    net = SumNet(input_size, 16, num_layers=num_layers, recurrent_activation=activation)  # type: ignore[arg-type]
    x = torch.rand(shape)
    logits = net(x)
    assert logits.shape == (shape[0],)
    F.binary_cross_entropy_with_logits(logits, torch.ones(shape[0])).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_sumnet_head_sees_last_hidden_state() -> None:
    torch.manual_seed(0)
    net = SumNet(1, 16, num_layers=2, recurrent_activation="hard_sigmoid").eval()
    x = torch.rand(4, 30, 1)
    out, _ = net.lstm(x)
    torch.testing.assert_close(net(x), net.head(out[:, -1]).squeeze(-1))


@pytest.mark.parametrize(("source", "target"), [("sigmoid", "hard_sigmoid"), ("hard_sigmoid", "sigmoid")])
def test_state_dict_moves_between_activations(source: str, target: str) -> None:
    torch.manual_seed(0)
    a = SumNet(1, 16, num_layers=2, recurrent_activation=source)  # type: ignore[arg-type]
    b = SumNet(1, 16, num_layers=2, recurrent_activation=target)  # type: ignore[arg-type]
    b.load_state_dict(a.state_dict())  # strict: same names and shapes
    torch.testing.assert_close(b.state_dict(), a.state_dict(), atol=0, rtol=0)
    plain = nn.LSTM(1, 16, num_layers=2, batch_first=True)
    assert set(b.lstm.state_dict()) == set(plain.state_dict())


def test_sumnet_dropout_on_last_hidden_state() -> None:
    torch.manual_seed(0)
    net = SumNet(1, 16, dropout=0.5)
    x = torch.rand(8, 30, 1)
    assert not torch.allclose(net.train()(x), net.eval()(x))
    torch.testing.assert_close(net.eval()(x), net.eval()(x), atol=0, rtol=0)


def test_module_never_reseeds() -> None:
    torch.manual_seed(0)
    a = SumNet(1, 16, init="keras")
    b = SumNet(1, 16, init="keras")
    assert not torch.equal(a.lstm.weight_hh_l0, b.lstm.weight_hh_l0)
    torch.manual_seed(0)
    c = SumNet(1, 16, init="keras")
    torch.testing.assert_close(a.state_dict(), c.state_dict(), atol=0, rtol=0)
    source = Path(network.__file__).read_text()
    assert "manual_seed" not in source and "set_rng_state" not in source
