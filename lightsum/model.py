"""SumClassifier: the training system around the LSTM network."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import CatMetric, MetricCollection
from torchmetrics.classification import BinaryRecall, BinarySpecificity

from lightsum.data import Layout
from lightsum.metrics import class_metrics, tune_threshold
from lightsum.network import Init, RecurrentActivation, SumNet

_PREDICT_CHUNK = 65_536  # rows per forward pass in predict_proba: bounded memory on big inputs
_FLUSH_EVERY = 50  # steps of train/loss and training-recall inputs buffered on the device

# Epoch-level values here are global already (torchmetrics syncs on compute, CatMetric gathers),
# so Lightning's advice to add sync_dist=True would only average identical numbers again.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/")
# With steps_per_execution > 1 lightsum steps the schedulers itself and reads a plateau scheduler's
# monitor from LightningCLI's ReduceLROnPlateau, so Lightning's "monitor key ignored" is moot.
warnings.filterwarnings("ignore", message=r"The lr scheduler dict contains the key\(s\) \['monitor'\]")


_FLOAT16_TINY = torch.finfo(torch.float16).tiny  # smallest normal float16, 6.1e-05


def _precision_hint(trainer: pl.Trainer) -> str:
    if str(trainer.precision).startswith("16"):
        return "; float16 overflows easily: try --trainer.precision bf16-mixed"
    return "; try a lower --optimizer.init_args.lr"


class SumClassifier(pl.LightningModule):
    """Binary classifier of digit sequences, reporting per-class recall.

    Args:
        seq_len: digits per sequence (linked from ``data.seq_len`` by the CLI).
        layout: ``sequence`` (seq_len steps x 1 feature) or ``flat`` (1 step x seq_len
            features); linked from ``data.layout`` by the CLI.
        hidden_size: LSTM units.
        num_layers: stacked LSTM layers.
        dropout: dropout on the last hidden state (and between stacked layers).
        recurrent_activation: gate activation: ``sigmoid`` (fused ``nn.LSTM``) or
            ``hard_sigmoid`` (Keras 2: ``clip(0.2 x + 0.5, 0, 1)``).
        unit_forget_bias: start the forget-gate bias at 1.
        init: weight initialisation: ``torch`` defaults or ``keras`` (Glorot-uniform input kernel,
            orthogonal recurrent kernel, zero biases).
        normalize_inputs: scale digits to [0, 1] (``digit / 9``); false feeds raw digits 0-9, as
            the original notebook did.
        pos_weight: weight of the positive (majority) class in the loss: none, a float, or
            ``balanced`` (n_negative / n_positive of the training split).
        decision_threshold: predict 1 when the probability is >= this; ``tuned`` chooses it on
            the validation set after each validation epoch to maximise balanced accuracy (each
            checkpoint carries the threshold tuned for its weights).
        steps_per_execution: optimizer steps per item of the training loader (linked from
            ``data.steps_per_execution`` by the CLI, which groups that many batches per item).
            Above 1 the steps run in one ``training_step`` with manual optimization, so
            Lightning's per-batch work (about 0.7 ms on a CPU) is paid once per group: the
            weights, ``train/loss`` points and logged steps are those of 1, while the progress
            bar, ``limit_train_batches`` and mid-epoch checkpoints count groups. Trainer-driven
            gradient clipping and accumulation need 1.
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
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value in (("seq_len", seq_len), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if isinstance(pos_weight, (int, float)) and pos_weight <= 0:
            raise ValueError(f"model.pos_weight must be positive, got {pos_weight}")
        if steps_per_execution < 1:
            raise ValueError(f"model.steps_per_execution (data.steps_per_execution in the CLI) must be a positive integer, got {steps_per_execution}")
        # Several steps per loader item are taken by hand (see training_step).
        self.automatic_optimization = steps_per_execution == 1
        if isinstance(decision_threshold, (int, float)) and not 0.0 < decision_threshold < 1.0:
            raise ValueError(f"model.decision_threshold must be in (0, 1) or 'tuned', got {decision_threshold}")
        self.net = SumNet(
            input_size=1 if layout == "sequence" else seq_len,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            recurrent_activation=recurrent_activation,
            unit_forget_bias=unit_forget_bias,
            init=init,
        )
        # Buffers, so they move with the model and are saved in checkpoints.
        threshold = 0.5 if decision_threshold == "tuned" else float(decision_threshold)
        self.register_buffer("decision_threshold", torch.tensor(threshold))
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight) if isinstance(pos_weight, (int, float)) else 1.0))
        # One metric object per stage. Training recall is streamed (stat scores); evaluation keeps
        # every logit (synced across ranks by torchmetrics) so that AUROC is exact and the
        # threshold can be tuned before thresholded metrics are computed.
        # validate_args=False: inputs are 0/1 tensors made here; the checks cost more than the update.
        self.train_recall = MetricCollection(
            {"recall_0": BinarySpecificity(validate_args=False), "recall_1": BinaryRecall(validate_args=False)}
        )
        # Per-step values wait on the device and reach the loggers / metrics every _FLUSH_EVERY
        # steps (see _flush_steps).
        self._pending_losses: list[tuple[int, torch.Tensor]] = []
        self._pending_recall: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Sum of the epoch's step losses, kept on the device: an epoch mean with no per-step sync.
        self.register_buffer("_epoch_loss_sum", torch.zeros(()), persistent=False)
        self._epoch_steps = 0
        # The last evaluation's gathered (probabilities, targets), for figure callbacks.
        self.eval_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # nan_strategy="disable": the default NaN check reads every update back to the host (a
        # device sync per batch on a GPU); a diverged model is caught once per epoch instead.
        self.val_logits, self.val_target = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        self.test_logits, self.test_target = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")

    # --- inputs -------------------------------------------------------------------------------
    def features(self, digits: torch.Tensor) -> torch.Tensor:
        """uint8/int digits (B, seq_len) -> float network input in the model's layout."""
        x = digits.to(self.dtype)
        if self.hparams.normalize_inputs:
            x = x / 9.0
        return x.unsqueeze(-1) if self.hparams.layout == "sequence" else x.unsqueeze(1)

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        """Logits of class 1 for digits (B, seq_len)."""
        return self.net(self.features(digits))

    # --- training -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is not None and data.hparams.get("seq_len", self.hparams.seq_len) != self.hparams.seq_len:
            raise ValueError(
                f"the model reads sequences of {self.hparams.seq_len} digits but data.seq_len is "
                f"{data.hparams.seq_len}: use --data.seq_len {self.hparams.seq_len} with this checkpoint"
            )
        if stage == "fit" and self.hparams.pos_weight == "balanced":
            labels = self.trainer.datamodule.train_set.labels
            n_pos = int(labels.sum())
            if n_pos == 0 or n_pos == len(labels):
                raise ValueError("model.pos_weight='balanced' needs both classes in the training split")
            self.pos_weight.fill_((len(labels) - n_pos) / n_pos)

    def on_fit_start(self) -> None:
        if self.trainer.precision != "16-true":
            return
        # 16-true keeps Adam's moments in float16 too, where an eps such as 1e-8 rounds to 0:
        # the first step divides by ~0 and every weight becomes NaN (seen with Keras' default).
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if group.get("eps", 1.0) < _FLOAT16_TINY:
                    raise ValueError(
                        f"--trainer.precision 16-true with optimizer eps={group['eps']:g}: float16 rounds it "
                        f"to 0 and the weights become NaN; use 16-mixed or bf16-mixed, or an eps >= 1e-4"
                    )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._step_loss(*batch)
        # A group of batches (data.steps_per_execution): each one is a full optimizer step, as
        # Lightning's automatic loop would take it (zero_grad, backward, step; schedulers below).
        optimizer = self.optimizers()
        max_steps = self.trainer.max_steps
        for digits, target in batch:
            if 0 <= max_steps <= self.global_step:
                break
            loss = self._step_loss(digits, target)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self._step_schedulers("step")
        # Lightning logs (and counts log_every_n_steps) by loader items; set the count so that, after
        # its +1 for this item, every logged step is an optimizer step as with one batch per item.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.global_step - 1
        return None

    def _step_schedulers(self, interval: str, plateau: bool = False) -> None:
        """What Lightning's automatic loop does for the schedulers, for the manual path."""
        for config in self.trainer.lr_scheduler_configs:
            is_plateau = isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            if config.interval != interval or is_plateau != plateau:
                continue
            index = self._epoch_steps if interval == "step" else self.current_epoch + 1
            if index % config.frequency:
                continue
            monitored = None
            if plateau:
                # Lightning drops a scheduler dict's "monitor" under manual optimization; LightningCLI's
                # ReduceLROnPlateau (the CLI's lr_scheduler) carries it on the scheduler itself.
                key = getattr(config.scheduler, "monitor", None)
                if key is None or key not in self.trainer.callback_metrics:
                    raise ValueError(
                        f"ReduceLROnPlateau with steps_per_execution > 1 needs a logged metric to monitor, got "
                        f"{key!r}: set it with lr_scheduler.init_args.monitor (e.g. val/min_recall)"
                    )
                monitored = self.trainer.callback_metrics[key]
            self.lr_scheduler_step(config.scheduler, monitored)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning steps epoch schedulers right after the epoch's last batch, before validation
        # (so the checkpoint written at validation end holds the stepped scheduler).
        if not self.automatic_optimization and batch_idx + 1 == self.trainer.num_training_batches:
            self._step_schedulers("epoch")

    def _step_loss(self, digits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self(digits)
        target = target.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self._loss_pos_weight())
        self._epoch_loss_sum.add_(loss.detach())  # in place: `+=` would also re-register the buffer
        self._epoch_steps += 1
        if self.loggers and self.global_step % self.trainer.log_every_n_steps == 0:
            self._pending_losses.append((self.global_step, loss.detach()))
        self._pending_recall.append((torch.sigmoid(logits.detach()) >= self.decision_threshold, target))
        if len(self._pending_recall) >= _FLUSH_EVERY:
            self._flush_steps()
        return loss

    def _loss_pos_weight(self) -> torch.Tensor | None:
        # Unweighted, the loss skips the weighting ops, forward and backward; a weight of 1 gives
        # bitwise the same loss and gradients (tests/test_model.py).
        return None if self.hparams.pos_weight is None else self.pos_weight

    def _flush_steps(self) -> None:
        """Write the buffered per-step ``train/loss`` values and update the training recall.

        ``self.log`` costs about 1 ms per call on a CPU (Lightning moves its result collection on
        every call), as much as a whole flat-layout step, and reading a loss every step would force
        a device sync per step on a GPU. Buffering on the device and writing straight to the
        loggers every ``_FLUSH_EVERY`` steps keeps every point with one sync per flush. The
        recall's stat scores are sums, so one update with the buffered batches gives the same
        counts as one update per step, at a fiftieth of torchmetrics' per-call cost.
        """
        if self._pending_recall:
            preds, target = (torch.cat(parts) for parts in zip(*self._pending_recall))
            self._pending_recall.clear()
            self.train_recall.update(preds.long(), target.long())
        if not self._pending_losses:
            return
        steps = [step for step, _ in self._pending_losses]
        values = torch.stack([loss for _, loss in self._pending_losses]).tolist()
        self._pending_losses.clear()
        for logger in self.loggers:
            for step, value in zip(steps, values):
                logger.log_metrics({"train/loss": value}, step=step)

    def on_train_end(self) -> None:
        self._flush_steps()  # a max_steps stop can end training mid-epoch

    def on_train_epoch_end(self) -> None:
        self._flush_steps()
        if not self.automatic_optimization and not self.trainer.fit_loop.restarting:
            self._step_schedulers("epoch", plateau=True)  # after validation, as Lightning does
        values = self.train_recall.compute()
        values["min_recall"] = torch.minimum(values["recall_0"], values["recall_1"])
        self.log_dict({f"train/{k}": v for k, v in values.items()})
        self.train_recall.reset()
        if self._epoch_steps:
            if not torch.isfinite(self._epoch_loss_sum):  # one host sync per epoch
                raise ValueError(f"training diverged: the loss of epoch {self.current_epoch} is not finite{_precision_hint(self.trainer)}")
            # Mean step loss of the epoch, averaged over ranks: the train curve of the report.
            self.log("train/loss_epoch", self._epoch_loss_sum / self._epoch_steps, sync_dist=True)
        self._epoch_loss_sum.zero_()
        self._epoch_steps = 0

    # --- evaluation ---------------------------------------------------------------------------
    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        digits, target = batch
        # Logits are kept, not logged per step: loss and every metric come from them at epoch end.
        # float32 whatever the precision: metrics and threshold tuning need the resolution.
        getattr(self, f"{stage}_logits").update(self(digits).float())
        getattr(self, f"{stage}_target").update(target)

    def _eval_epoch_end(self, stage: str) -> None:
        logits_metric, target_metric = getattr(self, f"{stage}_logits"), getattr(self, f"{stage}_target")
        logits, target = logits_metric.compute(), target_metric.compute()  # gathered from every rank
        logits_metric.reset()
        target_metric.reset()
        if not torch.isfinite(logits).all():
            raise ValueError(f"the model's {stage} outputs are not finite (NaN or inf): training diverged{_precision_hint(self.trainer)}")
        probs = torch.sigmoid(logits)
        if stage == "val" and self.hparams.decision_threshold == "tuned" and not self.trainer.sanity_checking:
            self.decision_threshold.fill_(tune_threshold(probs, target))
        values = class_metrics(probs, target, self.decision_threshold)
        values["loss"] = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=self._loss_pos_weight())
        values["decision_threshold"] = self.decision_threshold.clone()
        values["sequences"] = torch.tensor(float(len(target)))  # evaluated once each, over all ranks
        self.eval_outputs[stage] = (probs, target)
        # Values are already global (gathered above): no further reduction across ranks.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(self(batch[0]))
        return {"probability": probs, "label": (probs >= self.decision_threshold).long()}

    # --- inference contract -------------------------------------------------------------------
    def _check_digits(self, digits: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(digits)
        seq_len = self.hparams.seq_len
        if tensor.ndim != 2 or tensor.shape[1] != seq_len:
            raise ValueError(f"digits must have shape (N, {seq_len}), got {tuple(tensor.shape)}")
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"digits must be integers 0-9, got dtype {tensor.dtype}")
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 9):
            bad = torch.nonzero((tensor < 0) | (tensor > 9))[0].tolist()
            raise ValueError(f"digits must be integers 0-9, got {int(tensor[bad[0], bad[1]])} at row {bad[0]}, column {bad[1]}")
        return tensor

    @torch.no_grad()
    def predict_proba(self, digits: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Probability of class 1 for each row of ``digits``.

        Args:
            digits: integers 0-9 of shape (N, seq_len), numpy or torch.

        Returns:
            N probabilities, numpy for numpy input, a CPU tensor for tensor input.

        Raises:
            ValueError: wrong shape, dtype or a value outside 0-9.
        """
        tensor = self._check_digits(digits)
        was_training = self.training
        self.eval()
        try:
            chunks = [torch.sigmoid(self(chunk.to(self.device))).cpu() for chunk in tensor.split(_PREDICT_CHUNK)]
        finally:
            self.train(was_training)
        probs = torch.cat(chunks) if chunks else torch.empty(0)
        return probs if isinstance(digits, torch.Tensor) else probs.numpy()

    def predict(self, digits: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """0/1 labels of ``digits`` with the model's decision threshold (see ``predict_proba``)."""
        probs = self.predict_proba(digits)
        labels = probs >= float(self.decision_threshold)
        return labels.long() if isinstance(labels, torch.Tensor) else labels.astype(np.int64)
