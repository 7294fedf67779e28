"""SumClassifier: the training system around SumNet (loss, per-class metrics, threshold, inference)."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightsum.data.batches import BOUNDARY, NATURAL, Batch
from lightsum.data.schema import encode_sequences
from lightsum.data.sequences import Layout, check_digits
from lightsum.errors import POSITIVE_INT, check_arguments, diverged, is_number
from lightsum.losses import logit_adjustment, sigmoid_focal_loss
from lightsum.metrics import ConfusionCounts, EvaluationScores, class_metrics, confusion_metrics, tune_threshold
from lightsum.nn import Init, RecurrentActivation, SumNet

_PREDICT_CHUNK = 65_536  # rows per forward pass in predict_proba: bounded memory on big inputs
_FLOAT16_TINY = torch.finfo(torch.float16).tiny  # smallest normal float16, 6.1e-05
Loss = Literal["bce", "focal", "logit_adjusted"]
_RULES = {
    **dict.fromkeys(("hidden_size", "num_layers", "embedding_size"), POSITIVE_INT),
    "seq_len": (lambda v: v is None or POSITIVE_INT[0](v), "a positive integer or null"),
    "dropout": (lambda v: is_number(v) and 0.0 <= v < 1.0, "in [0, 1)"),
    "pos_weight": (lambda v: v in (None, "balanced") or (is_number(v) and v > 0), "positive, 'balanced' or null"),
    "decision_threshold": (lambda v: v == "tuned" or (is_number(v) and 0.0 < v < 1.0), "in (0, 1) or 'tuned'"),
    "forget_bias": (lambda v: is_number(v) and math.isfinite(v), "a finite number"),
    "focal_gamma": (lambda v: is_number(v) and v >= 0, ">= 0"),
    "focal_alpha": (lambda v: v is None or (is_number(v) and 0.0 <= v <= 1.0), "in [0, 1] or null"),
    "logit_tau": (lambda v: is_number(v) and v >= 0, ">= 0"),
}


class SumClassifier(pl.LightningModule):
    """Binary classifier of sequences (digit sums, or users' numbers or tokens), reporting per-class recall.

    Args:
        seq_len: digits per sequence of digit sums (linked from ``data.seq_len`` by the CLI); null for files.
        layout: ``sequence`` (seq_len steps x 1 feature) or ``flat`` (1 step x seq_len features); linked from ``data.layout``.
        schema: what a step of users' data is, measured on the training split and linked from the
            data by the CLI: ``{"steps": "numbers", "features": F, "mean": [...], "std": [...]}``
            (standardised per feature in the model) or ``{"steps": "tokens", "vocabulary": [...]}``
            (an embedding: code 0 pads, 1 is a token the training split never held), and
            ``"classes"``: the names of class 0 and 1. Saved in every checkpoint, so a loaded model
            reads raw new data as at training time. Null for digit sums.
        embedding_size: features of a token's embedding (token schemas only).
        hidden_size: LSTM units.
        num_layers: stacked LSTM layers.
        dropout: dropout on the last hidden state (and between stacked layers).
        recurrent_activation: ``sigmoid`` (the fused ``nn.LSTM``) or ``hard_sigmoid`` (Keras 2: ``clip(0.2 x + 0.5, 0, 1)``).
        unit_forget_bias: start the forget-gate bias at ``forget_bias``, as Keras does at 1.
        forget_bias: the forget-gate bias ``unit_forget_bias`` starts at; larger than 1 starts the
            cell closer to keeping everything it adds, as counting every step of a sequence needs.
        init: ``torch`` defaults or ``keras`` (Glorot-uniform input kernel, orthogonal recurrent kernel, zero biases).
        normalize_inputs: scale digits to [0, 1] (``digit / 9``); false feeds raw digits, as the
            original notebook did (digit sums only: files' numbers are standardised by the schema).
        pos_weight: loss weight of class 1 (the majority of digit sums; often the minority of
            users' data): none, a float, or ``balanced`` (n_class_0 / n_class_1 of the training
            split, which weighs the classes equally either way); with ``bce`` and ``logit_adjusted``.
        decision_threshold: predict 1 when the probability is >= this; ``tuned`` chooses it after
            each validation epoch to maximise balanced accuracy on the validation data (for digit
            sums, the natural distribution with the sums near the threshold scored on the
            calibration set); each checkpoint carries the threshold tuned for its weights.
        loss: ``bce`` (binary cross-entropy), ``focal`` (sigmoid focal loss, ``focal_gamma`` and
            ``focal_alpha``) or ``logit_adjusted`` (BCE on ``logit + logit_tau * log(pi_1 / pi_0)``,
            ``pi`` the class shares of the training batches as served, after resampling: with
            ``data.sampling: oversample`` at ratio 1 the offset is 0 and this is BCE).
        focal_gamma: focusing exponent of the focal loss; 0 is BCE (with ``focal_alpha`` null).
        focal_alpha: focal loss weight of class 1 (class 0 weighs ``1 - alpha``), or null for none
            (torchvision's ``alpha=-1``).
        logit_tau: strength of the logit adjustment; 1 is balanced softmax.
        class_balance: the training split's class counts and served prior, for ``pos_weight:
            balanced`` and ``logit_adjusted``: the data module's ``class_balance``, handed over by the
            CLI (not saved: a loaded model no longer trains from it).
    """

    def __init__(
        self,
        seq_len: int | None = 30,
        layout: Layout = "sequence",
        schema: dict[str, Any] | None = None,
        embedding_size: int = 32,
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.5,
        recurrent_activation: RecurrentActivation = "sigmoid",
        unit_forget_bias: bool = True,
        forget_bias: float = 1.0,
        init: Init = "torch",
        normalize_inputs: bool = True,
        pos_weight: float | Literal["balanced"] | None = None,
        decision_threshold: float | Literal["tuned"] = 0.5,
        loss: Loss = "bce",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        logit_tau: float = 1.0,
        class_balance: Any = None,  # a lightsum.data.ClassBalance; Any, so that --help offers no class to configure
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["class_balance"])
        self.class_balance = class_balance
        check_arguments("model", self.hparams, _RULES)
        if loss == "focal" and pos_weight is not None:
            raise ValueError(
                "model.pos_weight does not apply to model.loss=focal: weigh the classes with model.focal_alpha"
            )
        steps = schema["steps"] if schema else "digits"
        if steps == "digits" and seq_len is None:
            raise ValueError("model.seq_len is null: a digit-sum model reads sequences of seq_len digits")
        self.net = SumNet(
            (1 if layout == "sequence" else seq_len) if steps == "digits" else schema.get("features", 1),
            hidden_size,
            num_embeddings=len(schema["vocabulary"]) + 2 if steps == "tokens" else None,
            embedding_size=embedding_size,
            num_layers=num_layers,
            dropout=dropout,
            recurrent_activation=recurrent_activation,
            unit_forget_bias=unit_forget_bias,
            forget_bias=forget_bias,
            init=init,
        )
        if steps == "numbers":  # the training split's statistics, rebuilt from the schema: not in state_dict
            self.register_buffer("mean", torch.tensor(schema["mean"], dtype=torch.float32), persistent=False)
            self.register_buffer("std", torch.tensor(schema["std"], dtype=torch.float32), persistent=False)
        # Buffers, so they move with the model and are saved in checkpoints.
        self.register_buffer(
            "decision_threshold", torch.tensor(0.5 if decision_threshold == "tuned" else float(decision_threshold))
        )
        self.register_buffer("pos_weight", torch.tensor(1.0 if pos_weight in (None, "balanced") else float(pos_weight)))
        # tau * log(pi_1 / pi_0) of the training batches, set in setup("fit"); training only.
        self.register_buffer("logit_adjustment", torch.tensor(0.0), persistent=False)
        # One metric object per stage. Training streams counts (sums on the device, no host sync per
        # step); evaluation keeps every score, to tune the threshold first.
        self.train_counts = ConfusionCounts()
        self.train_counts.persistent(True)  # in checkpoints: a run resumed mid-epoch keeps its counts
        self.val_scores, self.test_scores = EvaluationScores(), EvaluationScores()
        # The boundary sets' scores (val/ and test/boundary_accuracy) and the threshold's weighted tuning set.
        self.val_boundary_scores, self.test_boundary_scores = EvaluationScores(), EvaluationScores()
        self.tuning_scores = EvaluationScores(weighted=True)
        # The last evaluation's gathered (probabilities, targets) per stage, for figure callbacks.
        self.eval_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.trained_at: tuple[int, int] | None = None  # (epoch, global step) of loaded weights

    @property
    def steps(self) -> str:
        """What a step is: ``digits``, ``numbers`` or ``tokens``."""
        return self.hparams.schema["steps"] if self.hparams.schema else "digits"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """A batch's steps (see ``lightsum.data.batches.Batch.x``) -> the network's input: digits as
        floats in the model's layout, numbers standardised, token codes as they are."""
        if self.steps == "tokens":
            return x
        if self.steps == "numbers":
            return (x.to(self.dtype) - self.mean) / self.std
        if x.shape[1] != self.hparams.seq_len:  # a layout's weights would load into the other length
            raise ValueError(
                f"the model reads seq_len={self.hparams.seq_len} but data.seq_len is {x.shape[1]}: "
                f"use --data.seq_len {self.hparams.seq_len}"
            )
        x = x.to(self.dtype)
        if self.hparams.normalize_inputs:
            x = x / 9.0
        return x.unsqueeze(-1) if self.hparams.layout == "sequence" else x.unsqueeze(1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of class 1 for a batch's steps ``x``, each sequence read to its own ``lengths``."""
        return self.net(self.features(x), lengths)

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
        h = self.hparams
        if stage != "fit" or (h.pos_weight != "balanced" and h.loss != "logit_adjusted"):
            return
        balance = self.class_balance
        if balance is None or balance.counts is None:
            what = "model.pos_weight=balanced" if h.pos_weight == "balanced" else "model.loss=logit_adjusted"
            raise ValueError(
                f"{what} needs the training classes: SumClassifier(class_balance=data.class_balance) "
                "(the CLI hands them over)"
            )
        if h.pos_weight == "balanced":
            negatives, positives = balance.counts
            if not negatives or not positives:
                raise ValueError("model.pos_weight='balanced' needs both classes in the training split")
            self.pos_weight.fill_(negatives / positives)
        if h.loss == "logit_adjusted":
            self.logit_adjustment.fill_(logit_adjustment(balance.served_positive_share, h.logit_tau))

    def on_fit_start(self) -> None:
        refuse_float16_eps(self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_at = (checkpoint["epoch"], checkpoint["global_step"])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        target = batch.labels
        logits = self(batch.x, batch.lengths)
        self.train_counts.update(torch.sigmoid(logits.detach()) >= self.decision_threshold, target)
        return self.loss(logits, target)  # train/loss is logged by callbacks.TrainLoss

    def on_train_epoch_end(self) -> None:
        values = confusion_metrics(self.train_counts.compute())  # summed over ranks
        self.train_counts.reset()
        self.log_dict({f"train/{k}": values[k] for k in ("recall_0", "recall_1", "min_recall")})

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits, target = self(batch.x, batch.lengths), batch.labels
        natural, boundary = batch.parts == NATURAL, batch.parts == BOUNDARY
        self.val_scores.update(logits[natural], target[natural])
        self.val_boundary_scores.update(logits[boundary], target[boundary])  # empty without a boundary set
        self.tuning_scores.update(logits, target, batch.weights)  # the boundary part weighs 0

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        logits, target = self(batch.x, batch.lengths), batch.labels
        if batch.parts is None:  # a test set alone (files; digit sums without a boundary set)
            self.test_scores.update(logits, target)
            return
        natural, boundary = batch.parts == NATURAL, batch.parts == BOUNDARY
        self.test_scores.update(logits[natural], target[natural])
        self.test_boundary_scores.update(logits[boundary], target[boundary])

    def on_validation_epoch_end(self) -> None:
        tune = self.hparams.decision_threshold == "tuned" and not self.trainer.sanity_checking
        self._log_evaluation("val", self.val_scores, self.val_boundary_scores, tune)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", self.test_scores, self.test_boundary_scores, tune=False)

    def _log_evaluation(
        self, stage: str, scores: EvaluationScores, boundary_scores: EvaluationScores, tune: bool
    ) -> None:
        logits, target = scores.gathered()  # from every rank
        scores.reset()
        if not torch.isfinite(logits).all():
            raise diverged(f"the model's {stage} output", self.trainer.precision)
        probs = torch.sigmoid(logits)
        # Every rank has validation batches, so all gather or none (a gather is a collective).
        tuning = self.tuning_scores.gathered() if stage == "val" and self.tuning_scores.update_count else None
        boundary = boundary_scores.gathered() if boundary_scores.update_count else None
        self.tuning_scores.reset()
        boundary_scores.reset()
        if tune and tuning is not None:
            t_logits, t_target, t_weights = tuning
            self.decision_threshold.fill_(tune_threshold(torch.sigmoid(t_logits), t_target, t_weights))
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

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(self(batch.x, batch.lengths))
        return {"probability": probs, "label": (probs >= self.decision_threshold).long()}

    @torch.no_grad()
    def predict_proba(self, sequences: Any, lengths: Any = None) -> np.ndarray | torch.Tensor:
        """Probability of class 1 for each sequence: a CPU tensor for a tensor, numpy for anything else.

        Digit sums: integers 0-9 of shape (N, seq_len) (int8 to int64 or uint8; a list too).
        Users' numbers: an array (N, L) or (N, L, F) with optional ``lengths``, or a list of arrays of
        any lengths; tokens: a list of space-separated strings or of token lists (see
        ``lightsum.data.schema.encode_sequences``), read with the training split's statistics and
        vocabulary. N may be 0: an empty result. Raises ValueError on input the model cannot read.
        """
        if self.steps == "digits":
            x, lens = check_digits(sequences, self.hparams.seq_len), None
        else:
            x, lens = encode_sequences(sequences, self.hparams.schema, lengths)
        was_training = self.training
        self.eval()
        try:
            # An LSTM refuses a batch of 0 sequences, so an empty input is not run at all.
            chunks = [
                torch.sigmoid(self(x[i : i + _PREDICT_CHUNK].to(self.device), _cut(lens, i))).cpu()
                for i in range(0, len(x), _PREDICT_CHUNK)
            ]
        finally:
            self.train(was_training)
        probs = torch.cat(chunks) if chunks else torch.empty(0, dtype=self.dtype)
        return probs if isinstance(sequences, torch.Tensor) else probs.numpy()

    def predict(self, sequences: Any, lengths: Any = None) -> np.ndarray | torch.Tensor:
        """0/1 labels of ``sequences`` with the model's decision threshold (see ``predict_proba``)."""
        labels = self.predict_proba(sequences, lengths) >= float(self.decision_threshold)
        return labels.long() if isinstance(labels, torch.Tensor) else labels.astype(np.int64)


def _cut(lengths: torch.Tensor | None, start: int) -> torch.Tensor | None:
    return None if lengths is None else lengths[start : start + _PREDICT_CHUNK]


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
