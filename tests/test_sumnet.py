"""lightsum.nn.sumnet: Keras and torch initialisation, shapes, the head, dropout, state_dict portability."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightsum.nn import SumNet
from lightsum.nn import lstm as lstm_module
from lightsum.nn import sumnet as sumnet_module

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


def test_every_parameter_gets_a_gradient_in_flat_layout() -> None:
    """One time step never uses W_hh; it still gets a (zero) grad, as with nn.LSTM (DDP needs it)."""
    torch.manual_seed(0)
    net = SumNet(30, 8, num_layers=2, recurrent_activation="hard_sigmoid")
    net(torch.rand(4, 1, 30)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    assert torch.count_nonzero(net.lstm.weight_hh_l0.grad) == 0


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
    for module in (sumnet_module, lstm_module):
        source = Path(module.__file__).read_text()
        assert "manual_seed" not in source and "set_rng_state" not in source
