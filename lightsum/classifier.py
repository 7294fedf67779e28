"""SumClassifier: the training system around SumNet (loss, per-class metrics, threshold, inference)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryStatScores

from lightsum.data.datamodule import BOUNDARY, NATURAL
from lightsum.data.sequences import Layout, check_digits, check_fits
from lightsum.errors import POSITIVE_INT, check_arguments, diverged, is_number
from lightsum.losses import logit_adjustment, sigmoid_focal_loss
from lightsum.metrics import EvaluationScores, class_metrics, confusion_metrics, tune_threshold
from lightsum.nn import Init, RecurrentActivation, SumNet

_PREDICT_CHUNK = 65_536  # rows per forward pass in predict_proba: bounded memory on big inputs
_FLOAT16_TINY = torch.finfo(torch.float16).tiny  # smallest normal float16, 6.1e-05
Loss = Literal["bce", "focal", "logit_adjusted"]
_RULES = {
    **dict.fromkeys(("seq_len", "hidden_size", "num_layers"), POSITIVE_INT),
    "dropout": (lambda v: is_number(v) and 0.0 <= v < 1.0, "in [0, 1)"),
    "pos_weight": (lambda v: v in (None, "balanced") or (is_number(v) and v > 0), "positive, 'balanced' or null"),
    "decision_threshold": (lambda v: v == "tuned" or (is_number(v) and 0.0 < v < 1.0), "in (0, 1) or 'tuned'"),
    "focal_gamma": (lambda v: is_number(v) and v >= 0, ">= 0"),
    "focal_alpha": (lambda v: v is None or (is_number(v) and 0.0 <= v <= 1.0), "in [0, 1] or null"),
    "logit_tau": (lambda v: is_number(v) and v >= 0, ">= 0"),
}


class SumClassifier(pl.LightningModule):
    """Binary classifier of digit sequences, reporting per-class recall.

    Args:
        seq_len: digits per sequence (linked from ``data.seq_len`` by the CLI).
        layout: ``sequence`` (seq_len steps x 1 feature) or ``flat`` (1 step x seq_len features); linked from ``data.layout``.
        hidden_size: LSTM units.
        num_layers: stacked LSTM layers.
        dropout: dropout on the last hidden state (and between stacked layers).
        recurrent_activation: ``sigmoid`` (the fused ``nn.LSTM``) or ``hard_sigmoid`` (Keras 2: ``clip(0.2 x + 0.5, 0, 1)``).
        unit_forget_bias: start the forget-gate bias at 1.
        init: ``torch`` defaults or ``keras`` (Glorot-uniform input kernel, orthogonal recurrent kernel, zero biases).
        normalize_inputs: scale digits to [0, 1] (``digit / 9``); false feeds raw digits, as the original notebook did.
        pos_weight: loss weight of the positive (majority) class: none, a float, or ``balanced``
            (n_negative / n_positive); with ``bce`` and ``logit_adjusted``.
        decision_threshold: predict 1 when the probability is >= this; ``tuned`` chooses it after
            each validation epoch to maximise balanced accuracy on the natural distribution, with
            the sums near the threshold scored on the data's calibration set (each checkpoint
            carries the threshold tuned for its weights).
        loss: ``bce`` (binary cross-entropy), ``focal`` (sigmoid focal loss, ``focal_gamma`` and
            ``focal_alpha``) or ``logit_adjusted`` (BCE on ``logit + logit_tau * log(pi_1 / pi_0)``,
            ``pi`` the class shares of the training batches as served, after resampling: with
            ``data.sampling: oversample`` at ratio 1 the offset is 0 and this is BCE).
        focal_gamma: focusing exponent of the focal loss; 0 is BCE (with ``focal_alpha`` null).
        focal_alpha: focal loss weight of class 1 (the majority here; class 0 weighs ``1 - alpha``),
            or null for none (torchvision's ``alpha=-1``).
        logit_tau: strength of the logit adjustment; 1 is balanced softmax.
    """

    def __init__(
        self,
        seq_len: int = 30,
        layout: Layout = "sequence",
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        recurrent_activation: RecurrentActivation = "sigmoid",
        unit_forget_bias: bool = True,
        init: Init = "torch",
        normalize_inputs: bool = True,
        pos_weight: float | Literal["balanced"] | None = None,
        decision_threshold: float | Literal["tuned"] = 0.5,
        loss: Loss = "bce",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        logit_tau: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_arguments("model", self.hparams, _RULES)
        if loss == "focal" and pos_weight is not None:
            raise ValueError(
                "model.pos_weight does not apply to model.loss=focal: weigh the classes with model.focal_alpha"
            )
        self.net = SumNet(
            1 if layout == "sequence" else seq_len,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            recurrent_activation=recurrent_activation,
            unit_forget_bias=unit_forget_bias,
            init=init,
        )
        # Buffers, so they move with the model and are saved in checkpoints.
        self.register_buffer(
            "decision_threshold", torch.tensor(0.5 if decision_threshold == "tuned" else float(decision_threshold))
        )
        self.register_buffer("pos_weight", torch.tensor(1.0 if pos_weight in (None, "balanced") else float(pos_weight)))
        # tau * log(pi_1 / pi_0) of the training batches, set in setup("fit"); training only.
        self.register_buffer("logit_adjustment", torch.tensor(0.0), persistent=False)
        # One metric object per stage. Training streams counts (stat scores: sums on the device, no
        # host sync per step); evaluation keeps every score, to tune the threshold first.
        self.train_counts = BinaryStatScores(validate_args=False)  # inputs are 0/1 made here
        self.train_counts.persistent(True)  # in checkpoints: a run resumed mid-epoch keeps its counts
        self.val_scores, self.test_scores = EvaluationScores(), EvaluationScores()
        # Validation's boundary set (val/boundary_accuracy) and the threshold's weighted tuning set.
        self.boundary_scores = EvaluationScores()
        self.tuning_scores = EvaluationScores(weighted=True)
        # The last evaluation's gathered (probabilities, targets) per stage, for figure callbacks.
        self.eval_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.trained_at: tuple[int, int] | None = None  # (epoch, global step) of loaded weights

    def features(self, digits: torch.Tensor) -> torch.Tensor:
        """uint8/int digits (B, seq_len) -> float network input in the model's layout."""
        x = digits.to(self.dtype)
        if self.hparams.normalize_inputs:
            x = x / 9.0
        return x.unsqueeze(-1) if self.hparams.layout == "sequence" else x.unsqueeze(1)

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        """Logits of class 1 for digits (B, seq_len)."""
        return self.net(self.features(digits))

    def loss(self, logits: torch.Tensor, target: torch.Tensor, adjusted: bool = True) -> torch.Tensor:
        """The training loss; ``adjusted=False`` leaves out logit adjustment's offset (which depends
        on the training batches' prior), as evaluation does: its loss is that of what the model predicts."""
        h, target = self.hparams, target.to(logits.dtype)
        if h.loss == "focal":
            return sigmoid_focal_loss(logits, target, h.focal_gamma, h.focal_alpha)
        if h.loss == "logit_adjusted" and adjusted:
            logits = logits + self.logit_adjustment
        # Unweighted, the loss skips the weighting ops, forward and backward; a weight of 1 gives
        # bitwise the same loss and gradients (tests/test_classifier.py).
        weight = None if h.pos_weight is None else self.pos_weight
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is not None:
            check_fits(self.hparams, data.hparams, " with this model")
        if stage == "fit" and self.hparams.pos_weight == "balanced":
            labels = data.train_set.labels
            n_pos = int(labels.sum())
            if n_pos in (0, len(labels)):
                raise ValueError("model.pos_weight='balanced' needs both classes in the training split")
            self.pos_weight.fill_((len(labels) - n_pos) / n_pos)
        if stage == "fit" and self.hparams.loss == "logit_adjusted":
            if data is None:
                raise ValueError(
                    "model.loss=logit_adjusted reads the training batches' class prior from lightsum's SumDataModule"
                )
            self.logit_adjustment.fill_(logit_adjustment(data.positive_share(), self.hparams.logit_tau))

    def on_fit_start(self) -> None:
        refuse_float16_eps(self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_at = (checkpoint["epoch"], checkpoint["global_step"])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        digits, target = batch
        logits = self(digits)
        self.train_counts.update((torch.sigmoid(logits.detach()) >= self.decision_threshold).long(), target.long())
        return self.loss(logits, target)  # train/loss is logged by callbacks.TrainLoss

    def on_train_epoch_end(self) -> None:
        tp, fp, tn, fn, _ = self.train_counts.compute()  # summed over ranks
        self.train_counts.reset()
        values = confusion_metrics(torch.stack([tn, fp, fn, tp]).view(2, 2))  # rows: true class
        self.log_dict({f"train/{k}": values[k] for k in ("recall_0", "recall_1", "min_recall")})

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        digits, target, *parts = batch
        logits = self(digits)
        if not parts:  # natural data only
            self.val_scores.update(logits, target)
            return
        weights, part = parts  # SumDataModule's joined validation set (see DigitBatches)
        natural, boundary = part == NATURAL, part == BOUNDARY
        self.val_scores.update(logits[natural], target[natural])
        self.boundary_scores.update(logits[boundary], target[boundary])
        self.tuning_scores.update(logits, target, weights)  # the boundary part weighs 0

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.test_scores.update(self(batch[0]), batch[1])

    def on_validation_epoch_end(self) -> None:
        tune = self.hparams.decision_threshold == "tuned" and not self.trainer.sanity_checking
        self._log_evaluation("val", self.val_scores, tune)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", self.test_scores, tune=False)

    def _log_evaluation(self, stage: str, scores: EvaluationScores, tune: bool) -> None:
        logits, target = scores.gathered()  # from every rank
        scores.reset()
        if not torch.isfinite(logits).all():
            raise diverged(f"the model's {stage} output", self.trainer.precision)
        probs = torch.sigmoid(logits)
        # Every rank has validation batches, so all gather or none (a gather is a collective).
        tuning = self.tuning_scores.gathered() if stage == "val" and self.tuning_scores.update_count else None
        boundary = self.boundary_scores.gathered() if stage == "val" and self.boundary_scores.update_count else None
        self.tuning_scores.reset()
        self.boundary_scores.reset()
        if tune and tuning is not None:
            t_logits, t_target, t_weights = tuning
            self.decision_threshold.fill_(tune_threshold(torch.sigmoid(t_logits), t_target, t_weights))
        elif tune:  # no calibration set: the natural validation set alone
            self.decision_threshold.fill_(tune_threshold(probs, target))
        values = class_metrics(probs, target, self.decision_threshold)
        if boundary is not None and len(boundary[1]):
            b_logits, b_target = boundary
            correct = (torch.sigmoid(b_logits) >= self.decision_threshold).long() == b_target.long()
            values["boundary_accuracy"] = correct.float().mean()
        values["loss"] = self.loss(logits, target, adjusted=False)  # the same whether run in fit or alone
        values["decision_threshold"] = self.decision_threshold.clone()
        values["sequences"] = torch.tensor(float(len(target)))  # evaluated once each, over all ranks
        self.eval_outputs[stage] = (probs, target)
        if self.trainer.state.fn != "fit":  # beside the checkpoint's own validation point
            self.log("step", float(evaluated_at(self)[1]))
        # Already global (gathered above): no reduction across ranks.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(self(batch[0]))
        return {"probability": probs, "label": (probs >= self.decision_threshold).long()}

    @torch.no_grad()
    def predict_proba(self, digits: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Probability of class 1 for each row of ``digits`` (integers 0-9, shape (N, seq_len); int8
        to int64 or uint8): a CPU tensor for a tensor, numpy for anything else (a list too). N may
        be 0: an empty result. Raises ValueError on a wrong shape, dtype or digit, or on a tensor
        without values (meta) or not dense."""
        tensor = check_digits(digits, self.hparams.seq_len)
        was_training = self.training
        self.eval()
        try:
            # An LSTM refuses a batch of 0 sequences, so an empty input is not run at all.
            chunks = [
                torch.sigmoid(self(chunk.to(self.device))).cpu() for chunk in tensor.split(_PREDICT_CHUNK) if len(chunk)
            ]
        finally:
            self.train(was_training)
        probs = torch.cat(chunks) if chunks else torch.empty(0, dtype=self.dtype)
        return probs if isinstance(digits, torch.Tensor) else probs.numpy()

    def predict(self, digits: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """0/1 labels of ``digits`` with the model's decision threshold (see ``predict_proba``)."""
        labels = self.predict_proba(digits) >= float(self.decision_threshold)
        return labels.long() if isinstance(labels, torch.Tensor) else labels.astype(np.int64)


def evaluated_at(model: SumClassifier) -> tuple[int, int]:
    """(epoch, step) of the weights being evaluated: where their metrics and figures are logged.

    Inside fit, the current epoch and the optimizer step just taken, where Lightning logs
    validation; otherwise the loaded checkpoint's, so that a test point lies beside the validation
    point of the epoch it was saved at.
    """
    trainer = model.trainer
    if trainer.state.fn == "fit" or model.trained_at is None:
        epoch, steps = trainer.current_epoch, trainer.global_step
    else:
        epoch, steps = model.trained_at
    return epoch, max(steps - 1, 0)


def refuse_float16_eps(trainer: pl.Trainer) -> None:
    """16-true keeps Adam's moments in float16 too, where an eps such as 1e-8 rounds to 0: the first
    step divides by ~0 and every weight becomes NaN (seen with Keras' default). Refuse it up front."""
    if trainer.precision != "16-true":
        return
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            if group.get("eps", 1.0) < _FLOAT16_TINY:
                raise ValueError(
                    f"--trainer.precision 16-true with optimizer eps={group['eps']:g}: float16 rounds it "
                    "to 0 and the weights become NaN; use 16-mixed or bf16-mixed, or an eps >= 1e-4"
                )
