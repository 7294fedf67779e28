"""The run's hyperparameters beside its validation metrics in TensorBoard's HPARAMS tab."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

# Metrics shown beside the hyperparameters in TensorBoard's HPARAMS tab: five, the number of
# columns it shows unasked (per-class miss counts tell 0.997 from 0.9995; the boundary set is
# where runs differ; recall_1 is 1 - missed_1 / its class size).
HPARAM_METRICS = ("val/min_recall", "val/boundary_accuracy", "val/recall_0", "val/missed_0", "val/missed_1")


class HparamsSession(pl.Callback):
    """Declares the run's hyperparameters (every ``model.*`` and ``data.*`` argument) and validation
    metrics to TensorBoard's HPARAMS tab.

    TensorBoard ticks 5 hyperparameter columns unasked, those that differ between the runs shown
    first (the rest are one click away in its left pane).

    Lightning's own ``log_hyperparams(params, metrics)`` writes the metrics as scalars at step 0,
    which would put a fake point on every validation curve. Writing the session summaries
    directly declares the metric tags only; TensorBoard then reads their real values.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        params = {f"model.{k}": v for k, v in pl_module.hparams.items()}
        schema = pl_module.hparams.get("schema")
        if schema:  # a vocabulary can be thousands of tokens: the tab gets what tells runs apart
            size = (
                f"{schema['features']} features"
                if schema["steps"] == "numbers"
                else f"{len(schema['vocabulary'])} tokens"
            )
            params["model.schema"] = f"{schema['steps']} ({size}), classes {' / '.join(map(str, schema['classes']))}"
        if trainer.datamodule is not None:
            params.update({f"data.{k}": v for k, v in trainer.datamodule.hparams.items()})
        # TensorBoard accepts only numbers, strings and booleans; "_instantiator" is Lightning's bookkeeping.
        params = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in params.items()
            if not k.rsplit(".", 1)[-1].startswith("_")
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for summary in hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0)):
                    logger.experiment.file_writer.add_summary(summary)
