"""lightsum.nn.sumnet: Keras and torch initialisation, shapes, the head, dropout, state_dict portability,
variable-length sequences (lengths) and token input (embedding)."""

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


def test_forget_bias_sets_where_unit_forget_bias_starts() -> None:
    torch.manual_seed(0)
    hidden = 8
    net = SumNet(1, hidden, num_layers=2, init="keras", forget_bias=5.0)
    for _, _, b_ih, b_hh in net.lstm.all_weights:
        torch.testing.assert_close((b_ih + b_hh)[hidden : 2 * hidden], torch.full((hidden,), 5.0), atol=0, rtol=0)
    assert (
        torch.count_nonzero(SumNet(1, hidden, init="keras", unit_forget_bias=False, forget_bias=5.0).lstm.bias_ih_l0)
        == 0
    )


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


# --------------------------------------------------------------------------- variable lengths

ACTIVATIONS = ["sigmoid", "hard_sigmoid"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _padded_batch(lengths: torch.Tensor, steps: int, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with large random numbers in the padding, mask of the padding (B, T))."""
    x = torch.rand(len(lengths), steps, features)
    padding = torch.arange(steps) >= lengths[:, None]
    x[padding] = 1e4 * torch.randn(int(padding.sum()), features)
    return x, padding


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_padded_batch_matches_each_sequence_alone(activation: str, num_layers: int) -> None:
    torch.manual_seed(0)
    net = SumNet(2, 8, num_layers=num_layers, recurrent_activation=activation).eval()  # type: ignore[arg-type]
    lengths = torch.tensor([5, 2, 7, 1, 3, 7])  # unsorted: logits come back in the batch's order
    x, padding = _padded_batch(lengths, 7, 2)
    logits = net(x, lengths)
    alone = torch.cat([net(x[i : i + 1, :n]) for i, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(logits, alone, atol=1e-6, rtol=1e-5)
    refilled = x.clone()
    refilled[padding] = -1e4 * torch.rand(int(padding.sum()), 2)
    torch.testing.assert_close(net(refilled, lengths), logits, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_full_lengths_are_the_fixed_length_path(activation: str, num_layers: int) -> None:
    torch.manual_seed(0)
    net = SumNet(1, 8, num_layers=num_layers, recurrent_activation=activation).eval()  # type: ignore[arg-type]
    x = torch.rand(5, 6, 1)
    for dtype in (torch.int64, torch.int32):
        torch.testing.assert_close(net(x, torch.full((5,), 6, dtype=dtype)), net(x), atol=0, rtol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_flow_and_skip_the_padding(activation: str) -> None:
    torch.manual_seed(0)
    net = SumNet(2, 8, num_layers=2, recurrent_activation=activation).eval()  # type: ignore[arg-type]
    lengths = torch.tensor([4, 1, 6, 2])
    x, padding = _padded_batch(lengths, 6, 2)
    x.requires_grad_(True)
    net(x, lengths).sum().backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[padding]) == 0
    assert torch.all(x.grad[~padding].abs().sum(-1) > 0)
    assert all(p.grad is not None for p in net.parameters())
    for i, n in enumerate(lengths.tolist()):  # each row's gradient is that of the row alone
        row = x.detach()[i : i + 1, :n].clone().requires_grad_(True)
        net(row).sum().backward()
        torch.testing.assert_close(x.grad[i, :n], row.grad[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths_on_x_device", [True, False])
def test_lengths_on_either_device(activation: str, device: str, lengths_on_x_device: bool) -> None:
    torch.manual_seed(0)
    net = SumNet(1, 8, recurrent_activation=activation).eval()  # type: ignore[arg-type]
    lengths = torch.tensor([3, 5, 1])
    x, _ = _padded_batch(lengths, 5, 1)
    expected = net(x, lengths)
    net.to(device)
    logits = net(x.to(device), lengths.to(device) if lengths_on_x_device else lengths)
    assert logits.device.type == device
    torch.testing.assert_close(logits.cpu(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_lengths_train_mode_and_cpu_autocast(activation: str) -> None:
    """Packing bypasses LSTM.forward's autocast guard (a PackedSequence has no .device); SumNet
    repeats it, so the recurrence still runs in float32 under CPU autocast."""
    torch.manual_seed(0)
    net = SumNet(1, 8, num_layers=2, recurrent_activation=activation).eval()  # type: ignore[arg-type]
    lengths = torch.tensor([2, 5, 4])
    x, _ = _padded_batch(lengths, 5, 1)
    expected = net(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x, lengths)
    torch.testing.assert_close(logits.float(), expected, atol=2e-2, rtol=2e-2)  # only the head in bf16
    net.train()(x, lengths).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bad_lengths_are_refused(activation: str) -> None:
    net = SumNet(1, 8, recurrent_activation=activation)  # type: ignore[arg-type]
    x = torch.rand(3, 4, 1)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        net(x, torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        net(x, torch.tensor([1, 5, 3]))
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        net(x, torch.tensor([1.0, 2.0, 3.0]))


# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tokens_padded_with_zero(activation: str) -> None:
    torch.manual_seed(0)
    net = SumNet(1, 8, recurrent_activation=activation, num_embeddings=11, embedding_size=4)  # type: ignore[arg-type]
    assert net.lstm.input_size == 4  # input_size is ignored for tokens
    net.eval()
    lengths = torch.tensor([3, 6, 1, 4])
    codes = torch.randint(1, 11, (4, 6))
    codes[torch.arange(6) >= lengths[:, None]] = 0
    for dtype in (torch.int64, torch.int32):
        logits = net(codes.to(dtype), lengths)
        assert logits.shape == (4,)
        alone = torch.cat([net(codes[i : i + 1, :n].to(dtype)) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(logits, alone, atol=1e-6, rtol=1e-5)
    assert net(codes).shape == (4,)  # without lengths every step is read, padding included
    net.train()(codes, lengths).sum().backward()
    assert net.embedding is not None and net.embedding.weight.grad is not None
    assert torch.count_nonzero(net.embedding.weight.grad[0]) == 0  # padding row: no update


@pytest.mark.parametrize("init", ["torch", "keras"])
def test_embedding_init_keeps_padding_row_zero(init: str) -> None:
    torch.manual_seed(0)
    net = SumNet(1, 8, init=init, num_embeddings=50, embedding_size=16)  # type: ignore[arg-type]
    assert net.embedding is not None
    for _ in range(2):  # at construction, then after reset_parameters
        weight = net.embedding.weight
        assert torch.count_nonzero(weight[0]) == 0
        assert torch.all(weight[1:].abs().sum(-1) > 0)
        if init == "keras":
            assert 0.9 * 0.05 < weight.abs().max() <= 0.05
        else:
            assert weight.abs().max() > 1  # PyTorch's N(0, 1)
        before = weight.detach().clone()
        net.reset_parameters()
        assert not torch.equal(net.embedding.weight, before)


def test_numeric_sumnet_has_no_embedding() -> None:
    net = SumNet(3, 8)
    assert net.embedding is None
    assert not any(name.startswith("embedding") for name in net.state_dict())


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tokens_have_no_length_limit(activation: str) -> None:
    torch.manual_seed(0)
    net = SumNet(1, 4, recurrent_activation=activation, num_embeddings=5, embedding_size=3)  # type: ignore[arg-type]
    net(torch.randint(1, 5, (2, 10)), torch.tensor([10, 4])).sum().backward()
    long = torch.randint(1, 5, (2, 400))
    logits = net(long, torch.tensor([400, 123]))
    assert logits.shape == (2,) and torch.isfinite(logits).all()


def test_num_embeddings_must_leave_room_for_padding() -> None:
    with pytest.raises(ValueError, match="num_embeddings"):
        SumNet(1, 8, num_embeddings=1)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_and_gathered_last_states_agree(num_layers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU packs the fused LSTM's batches; a CPU gathers from the whole padded batch. Forced both
    # ways here (packing runs on a CPU too), they give the same logits and gradients.
    from lightsum.nn import sumnet

    torch.manual_seed(0)
    net = SumNet(3, 16, num_layers=num_layers).eval()
    x = torch.randn(6, 9, 3, requires_grad=True)
    lengths = torch.tensor([9, 2, 5, 1, 9, 4])
    results = []
    for pack in (True, False):
        monkeypatch.setattr(sumnet, "packs", lambda lstm, x, pack=pack: pack)
        x.grad = None
        logits = net(x, lengths)
        logits.sum().backward()
        results.append((logits.detach(), x.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)
