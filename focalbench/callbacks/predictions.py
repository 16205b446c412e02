"""Writers for ``python cli.py predict``: files a user opens, under the run's log directory."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only


def prediction_dir(trainer: Trainer, output_dir: str | None) -> Path:
    """``output_dir`` or ``<log dir>/predictions`` (``<default_root_dir>/predictions`` without a log dir, as under
    ``fast_dev_run``), created."""
    path = Path(output_dir) if output_dir else Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_name(source: str | Path, root: str | Path | None = None, suffix: str = ".png") -> Path:
    """The relative output path for the input ``source``: its path under ``root`` (or ``source`` itself when it is
    relative) with ``suffix`` appended to the whole name (``sub/flower.tif`` -> ``sub/flower.tif.png``), so inputs
    that differ only by extension or folder never overwrite each other; the bare file name otherwise."""
    source = Path(source)
    if root is not None and source.is_relative_to(root):
        relative = source.relative_to(root)
    else:
        relative = source if not source.is_absolute() else Path(source.name)
    return relative.with_name(relative.name + suffix)


def skipped_files(trainer: Trainer) -> list[str]:
    """The unreadable inputs ``predict`` left out (``data.skip_corrupt``), as the data module recorded them."""
    return list(getattr(trainer.datamodule, "skipped_predict", None) or []) if trainer.datamodule is not None else []


class PredictionWriter(BasePredictionWriter):
    """What the prediction writers share: the output folder (``output_dir`` or ``<log dir>/predictions``), the
    inputs predicted so far (``predicted``, for the run summary) and ``skipped.txt`` beside the outputs (one path a
    line) when unreadable inputs were skipped."""

    def __init__(self, output_dir: str | None = None, write_interval: str = "batch") -> None:
        super().__init__(write_interval=write_interval)
        self.output_dir = output_dir
        self.predicted: list[str] = []

    def directory(self, trainer: Trainer) -> Path:
        return prediction_dir(trainer, self.output_dir)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.predicted = []

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on every rank: the default folder comes from trainer.log_dir, which is broadcast from rank 0
        self._write_skipped(trainer, self.directory(trainer) / "skipped.txt")

    @rank_zero_only
    def _write_skipped(self, trainer: Trainer, path: Path) -> None:
        skipped = skipped_files(trainer)
        if skipped:
            path.write_text("".join(f"{name}\n" for name in skipped))
        elif path.is_file():  # a stale list from an earlier run into the same folder
            path.unlink()


class ClassificationCSVWriter(PredictionWriter):
    """``predictions.csv`` with one row per image: path, then label and probability for each of the top k
    (k = ``top_k``, at most the number of classes).

    Under DDP each rank writes ``predictions.rank<r>.csv`` for the images it saw.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(output_dir, write_interval="epoch")
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        names = pl_module.class_names
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.path = self.directory(trainer) / f"predictions{suffix}.csv"
        k = min(pl_module.hparams.top_k, len(names))  # as many pairs as predict_step returns
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
                    self.predicted.append(path)
