"""What a run produced, printed when it ends: no digging through ``runs/…/version_N/checkpoints``."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from focalbench.callbacks.predictions import PredictionWriter, skipped_files
from focalbench.callbacks.tensorboard import tensorboard


class RunSummary(Callback):
    """Prints (rank 0) at the end of ``fit``: the best checkpoint and its metric, the last checkpoint, where the
    TensorBoard logs are and the command to open them, and the ``predict`` command for the best checkpoint; at the
    end of ``validate`` / ``test``: the split's metrics and the logs; at the end of ``predict``: where the outputs
    were written and for how many images (and the skipped ones). The hooks run on every rank: ``trainer.log_dir``
    is broadcast from rank 0, so it is read once, everywhere, before rank 0 prints."""

    def __init__(self, max_metrics: int = 12) -> None:
        self.max_metrics = max_metrics
        self.text = ""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        lines = ["fit finished"]
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            best = checkpoint.best_model_path
            score = checkpoint.best_model_score
            metric = f" ({checkpoint.monitor} = {float(score):.4f})" if checkpoint.monitor and score is not None else ""
            lines.append(f"  best checkpoint   {best}{metric}")
        else:
            best = None
        if checkpoint is not None and checkpoint.last_model_path and checkpoint.last_model_path != best:
            lines.append(f"  last checkpoint   {checkpoint.last_model_path}")
        log_dir = trainer.log_dir
        lines += self._logs(trainer, log_dir)
        if best:
            lines.append(
                f"  predict a folder  python cli.py predict --config {self._config(log_dir)} --ckpt_path {best} "
                "--data.predict_root DIR"
            )
        self._print(lines)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._evaluation(trainer, "validate", "val_")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluation(trainer, "test", "test_")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lines = ["predict finished"]
        for writer in trainer.callbacks:
            if isinstance(writer, PredictionWriter):
                written = getattr(writer, "path", None) or writer.directory(trainer)
                lines.append(f"  predictions       {len(writer.predicted)} images -> {written}")
        skipped = skipped_files(trainer)
        if skipped:
            lines.append(f"  skipped           {len(skipped)} unreadable images, listed in skipped.txt beside them")
        log_dir = trainer.log_dir
        if log_dir is not None:
            lines.append(f"  run folder        {log_dir}")  # the resolved config.yaml is there
        self._print(lines)

    # ------------------------------------------------------------------ helpers
    def _evaluation(self, trainer: Trainer, verb: str, prefix: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix) and "/" not in k}
        monitor = getattr(trainer.lightning_module, "monitor", None)
        names = sorted(metrics, key=lambda k: (k != monitor.replace("val_", prefix, 1) if monitor else True, k))
        lines = [f"{verb} finished"]
        lines += [f"  {name:<17} {metrics[name]:.4f}" for name in names[: self.max_metrics]]
        if len(names) > self.max_metrics:
            lines.append(f"  (and {len(names) - self.max_metrics} more, per class among them, in the logs)")
        self._print(lines + self._logs(trainer, trainer.log_dir))

    @staticmethod
    def _logs(trainer: Trainer, log_dir: str | None) -> list[str]:
        if log_dir is None:
            return []
        if tensorboard(trainer) is None:
            return [f"  logs              {log_dir}"]
        return [f"  TensorBoard logs  {log_dir}", f"  open them         tensorboard --logdir {Path(log_dir).parent}"]

    @staticmethod
    def _config(log_dir: str | None) -> str:
        """The config LightningCLI saved beside the logs (the whole resolved run), else a placeholder."""
        saved = Path(log_dir or ".") / "config.yaml"
        return str(saved) if saved.is_file() else "CONFIG.yaml"

    def _print(self, lines: list[str]) -> None:
        self.text = "\n".join(lines)
        if rank_zero_only.rank == 0:
            print(self.text, flush=True)
