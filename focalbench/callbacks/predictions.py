"""Writers for ``python cli.py predict``: files a user opens, under the run's log directory."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def prediction_dir(trainer: Trainer, output_dir: str | None) -> Path:
    """``output_dir`` or ``<log dir>/predictions``, created."""
    path = Path(output_dir) if output_dir else Path(trainer.log_dir or ".") / "predictions"
    path.mkdir(parents=True, exist_ok=True)
    return path


class ClassificationCSVWriter(BasePredictionWriter):
    """``predictions.csv`` with one row per image: path, then label and probability for each of the top k.

    Under DDP each rank writes ``predictions.rank<r>.csv`` for the images it saw.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        names = pl_module.class_names
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.path = prediction_dir(trainer, self.output_dir) / f"predictions{suffix}.csv"
        k = pl_module.hparams.top_k
        with open(self.path, "w", newline="") as handle:
            writer = csv.writer(handle)
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"prob_{i}"]
            writer.writerow(header)
            for batch in predictions:
                for path, indices, probs in zip(batch["path"], batch["indices"], batch["probs"]):
                    row = [path]
                    for index, prob in zip(indices.tolist(), probs.tolist()):
                        row += [names[index], f"{prob:.6f}"]
                    writer.writerow(row)
