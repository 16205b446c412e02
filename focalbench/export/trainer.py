"""Lightning's Trainer with an ``export`` method: what LightningCLI runs for ``cli.py export``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch import Trainer as LightningTrainer

ExportFormat = Literal["timm", "huggingface", "onnx", "torch-export"]


class Trainer(LightningTrainer):
    """:class:`lightning.pytorch.Trainer` plus :meth:`export` (the CLI's ``export`` subcommand)."""

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: ExportFormat = "torch-export",  # noqa: A002 - the CLI flag users type
        output: str = "export",
    ) -> Path:
        """Export a trained model to timm, Hugging Face, ONNX or torch.export, checked, with a model card.

        Args:
            model: the task, built from the config and the checkpoint's hyperparameters.
            datamodule: the data module of the config (its image size and crop go into the card).
            ckpt_path: the Lightning checkpoint whose weights to export; none exports the config's model as built
                (e.g. from ``model.pretrained``).
            format: ``timm`` / ``huggingface`` (classification; huggingface also the dense tasks' backbone),
                ``onnx``, ``torch-export`` (every task).
            output: the folder to write (created).
        """
        from focalbench.export.core import ExportError
        from focalbench.export.run import export_task

        try:
            return export_task(model, format, output, ckpt_path=ckpt_path, datamodule=datamodule)
        except ExportError as err:  # a refusal or a failed check: one line on the command line, as config errors
            raise SystemExit(f"error: {err}") from None
