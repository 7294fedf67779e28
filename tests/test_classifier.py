"""SumClassifier: inference contract, layouts, arguments, class weights, training recall, precisions, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from lightsum import SumClassifier, SumDataModule
from lightsum.callbacks import TrainLoss


@pytest.fixture
def model() -> SumClassifier:
    torch.manual_seed(0)
    return SumClassifier(hidden_size=8)


def test_predict_proba_numpy_and_tensor(model: SumClassifier) -> None:
    digits = np.random.default_rng(0).integers(0, 10, (7, 30))
    probs = model.predict_proba(digits)
    assert isinstance(probs, np.ndarray) and probs.shape == (7,)
    assert ((probs > 0) & (probs < 1)).all()
    tensor_probs = model.predict_proba(torch.as_tensor(digits))
    np.testing.assert_allclose(tensor_probs.numpy(), probs, rtol=1e-6)
    labels = model.predict(digits)
    assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1}
    assert model.training  # restored


@pytest.mark.parametrize(
    ("digits", "message"),
    [
        (np.zeros((3, 29), dtype=int), r"shape \(N, 30\)"),
        (np.zeros(30, dtype=int), r"shape \(N, 30\)"),
        (np.full((2, 30), 10), "row 0, column 0: 10 is not a digit 0-9"),
        (np.full((2, 30), -1), "0-9"),
        (np.zeros((2, 30)) + 0.5, "integers"),
    ],
)
def test_predict_proba_rejects_bad_input(model: SumClassifier, digits: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.predict_proba(digits)


def test_layouts_shape_the_input() -> None:
    digits = torch.randint(0, 10, (4, 30), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    seq = SumClassifier(hidden_size=8, layout="sequence")
    flat = SumClassifier(hidden_size=8, layout="flat", normalize_inputs=False)
    assert seq.features(digits).shape == (4, 30, 1)
    assert flat.features(digits).shape == (4, 1, 30)
    assert float(flat.features(digits).max()) == float(digits.max())
    assert float(seq.features(digits).max()) <= 1.0
    assert seq(digits).shape == flat(digits).shape == (4,)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"hidden_size": 0}, "model.hidden_size must be a positive integer, got 0"),
        ({"num_layers": 1.5}, "model.num_layers must be a positive integer, got 1.5"),
        ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\), got 1.0"),
        ({"pos_weight": -1.0}, "model.pos_weight must be positive, 'balanced' or null, got -1.0"),
        ({"pos_weight": "heavy"}, "model.pos_weight must be positive, 'balanced' or null, got 'heavy'"),
        ({"decision_threshold": 1.5}, r"model.decision_threshold must be in \(0, 1\) or 'tuned', got 1.5"),
        ({"forget_bias": float("inf")}, "model.forget_bias must be a finite number, got inf"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SumClassifier(**kwargs)


def test_model_refuses_data_of_another_length() -> None:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="the model reads seq_len=30 but data.seq_len is 20: use --data.seq_len 30"):
        trainer.test(SumClassifier(hidden_size=8), datamodule=SumDataModule(seq_len=20, threshold=60))


def test_train_recall_equals_the_recall_of_every_step(tmp_path) -> None:
    """train/recall_* count each training step's predictions exactly once."""

    class Recorded(SumClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

        def on_train_start(self):
            self.preds, self.targets = [], []

        def training_step(self, batch, batch_idx):
            with torch.no_grad():
                self.preds.append((torch.sigmoid(self(batch.x)) >= 0.5).long())
            self.targets.append(batch.labels.long())
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    model = Recorded(hidden_size=8, dropout=0.0, decision_threshold=0.5)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, limit_val_batches=0
    )
    trainer.fit(model, datamodule=SumDataModule(num_samples=5000, batch_size=64, sampling="oversample"))
    preds, targets = torch.cat(model.preds), torch.cat(model.targets)
    assert len(model.preds) == 124  # the oversampled epoch
    recall_1 = ((preds == 1) & (targets == 1)).sum() / (targets == 1).sum()
    recall_0 = ((preds == 0) & (targets == 0)).sum() / (targets == 0).sum()
    assert float(trainer.callback_metrics["train/recall_1"]) == pytest.approx(float(recall_1), abs=1e-6)
    assert float(trainer.callback_metrics["train/recall_0"]) == pytest.approx(float(recall_0), abs=1e-6)


class AdamClassifier(SumClassifier):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("activation", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "64-true"])
def test_precision_choices_train_and_evaluate_in_float32_metrics(precision, activation) -> None:
    model = AdamClassifier(hidden_size=8, recurrent_activation=activation)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        precision=precision,
        limit_train_batches=5,
        callbacks=[TrainLoss()],
    )
    trainer.fit(model, datamodule=SumDataModule(num_samples=2000, batch_size=64))
    assert model.eval_outputs["val"][0].dtype == torch.float32
    for name in ("val/loss", "val/auroc", "val/min_recall", "train/loss_epoch"):
        assert torch.isfinite(trainer.callback_metrics[name]), name


def test_16_true_with_a_tiny_adam_eps_is_refused() -> None:
    class KerasAdam(SumClassifier):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), eps=1e-8)

    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, precision="16-true"
    )
    with pytest.raises(ValueError, match="16-true with optimizer eps=1e-08"):
        trainer.fit(KerasAdam(hidden_size=8), datamodule=SumDataModule(num_samples=2000, batch_size=64))


def test_a_diverged_model_stops_with_a_clear_error() -> None:
    class Diverging(SumClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=float("inf"))

    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_train_batches=3,
    )
    with pytest.raises(ValueError, match="training diverged: the model's val output is not finite"):
        trainer.fit(Diverging(hidden_size=8), datamodule=SumDataModule(num_samples=2000, batch_size=64))


def test_pos_weight_weights_the_positive_class_in_the_loss() -> None:
    torch.manual_seed(0)
    digits = torch.randint(0, 10, (64, 30))
    target = (digits.sum(1) >= 135).long()  # both classes
    model = SumClassifier(hidden_size=8, pos_weight=3.0).eval()
    logits = model(digits)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target.float(), pos_weight=torch.tensor(3.0)
    )
    unweighted = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    loss = model.loss(logits, target)
    assert torch.equal(loss, expected) and not torch.equal(loss, unweighted)


def test_no_pos_weight_trains_exactly_as_a_weight_of_one() -> None:
    """Without pos_weight the loss skips the weighting ops; the weights must be bitwise those of 1.0."""
    weights = []
    for pos_weight in (None, 1.0):
        pl.seed_everything(0)
        model = AdamClassifier(hidden_size=8, pos_weight=pos_weight)
        trainer = pl.Trainer(
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            limit_train_batches=10,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=SumDataModule(num_samples=2000, batch_size=64))
        weights.append([p.detach().clone() for p in model.parameters()])
        val_loss = float(trainer.callback_metrics["val/loss"])
        weights[-1].append(torch.tensor(val_loss))
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_threshold_is_tuned_on_the_weighted_calibration_sets_and_boundary_accuracy_uses_it() -> None:
    """After each validation the threshold is the weighted tuning of (natural outside the window,
    calibration inside), and val/boundary_accuracy scores the boundary set at that threshold."""
    from lightsum.metrics import tune_threshold

    pl.seed_everything(0)
    model = AdamClassifier(hidden_size=8, decision_threshold="tuned")
    data = SumDataModule(
        num_samples=3000, batch_size=64, calibration_per_sum=40, boundary_per_sum=30, sampling="oversample"
    )
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_train_batches=20,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    from lightsum.data.batches import NATURAL

    sets = {"val": data.val_set, "calibration": data.calibration_set, "boundary": data.boundary_set}
    probs = {name: model.predict_proba(s.x) for name, s in sets.items()}
    joined = data.validation_set
    tuning = ("val", "calibration")
    expected = tune_threshold(
        torch.cat([probs[n] for n in tuning]),
        torch.cat([sets[n].labels for n in tuning]),
        torch.cat([joined.weights[joined.parts.cpu() == NATURAL].cpu(), data.calibration_set.weights]),
    )
    assert float(model.decision_threshold) == pytest.approx(expected, abs=1e-6)
    assert float(model.decision_threshold) != pytest.approx(tune_threshold(probs["val"], data.val_set.labels), abs=1e-6)
    boundary = (
        ((probs["boundary"] >= model.decision_threshold).long() == data.boundary_set.labels.long()).float().mean()
    )
    assert float(trainer.callback_metrics["val/boundary_accuracy"]) == pytest.approx(float(boundary), abs=1e-6)
    assert float(trainer.callback_metrics["val/sequences"]) == len(data.val_set)  # natural metrics stay natural


@pytest.mark.parametrize(
    ("loss", "sampling", "distribution"),
    [
        ("focal", "none", "natural"),
        ("focal", "oversample", "boundary"),
        ("logit_adjusted", "none", "boundary"),
        ("logit_adjusted", "undersample", "natural"),
    ],
)
def test_each_loss_trains_and_validates(loss: str, sampling: str, distribution: str) -> None:
    # The losses meet the sampling only through the prior of logit adjustment, checked for every
    # strategy in tests/test_losses.py; DDP in tests/test_ddp.py.
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_train_batches=8,
        num_sanity_val_steps=0,
        callbacks=[TrainLoss()],
    )
    data = SumDataModule(
        num_samples=3000,
        batch_size=64,
        sampling=sampling,
        train_distribution=distribution,
        calibration_per_sum=20,
        boundary_per_sum=20,
    )
    model = AdamClassifier(hidden_size=8, loss=loss, decision_threshold="tuned", class_balance=data.class_balance)
    trainer.fit(model, datamodule=data)
    for name in ("train/loss_epoch", "val/loss", "val/min_recall", "val/boundary_accuracy"):
        assert torch.isfinite(trainer.callback_metrics[name]), name
    share = data.class_balance.served_positive_share
    expected = np.log(share / (1 - share)) if loss == "logit_adjusted" else 0.0
    assert float(model.logit_adjustment) == pytest.approx(expected, rel=1e-5, abs=1e-7)
