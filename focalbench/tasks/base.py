"""The LightningModule every task builds on: backbone by name, freezing, optimizer groups, per-step lr schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import Metric, MetricCollection

from focalbench.errors import ConfigError
from focalbench.models import fused
from focalbench.models.contract import Normalization, freeze_stages, input_normalization
from focalbench.models.factory import build_backbone
from focalbench.tasks.optim import Schedule, default_optimizer, lr_lambda, param_groups

# Architecture overrides for the backbone (``embed_dim``, ``depths``, ``focal_windows`` …), typed so YAML is checked.
BackboneKwargs = dict[str, int | float | bool | str | list[int] | None]


class BaseTask(LightningModule):
    """Template for the tasks (torchgeo-style): ``__init__`` saves the hyperparameters and calls
    ``configure_models``, ``configure_losses`` and ``configure_metrics``, which the subclasses fill.

    Evaluation has one path for every task: the subclass gives :meth:`make_metrics` (one fresh metric object,
    cloned per stage), :meth:`evaluation_step` (inference + ``stage_metrics(stage).update``; its return value is
    what picture callbacks receive as the batch's ``outputs``) and :meth:`summarize` (the computed, rank-synchronised
    metric as flat scalars). At the end of each validation / test epoch the metrics are computed once, logged as
    ``{stage}_{name}`` and reset; the computed values stay in ``evaluation_results[stage]`` for callbacks to draw
    (read them in ``on_validation_end``, after the task's epoch-end hook).

    Args:
        backbone: a FocalNet variant (``focalnet_tiny_srf`` …) or any timm model name.
        pretrained: weights for the backbone: a local file (official, timm or Hugging Face layout) or a hub id.
        backbone_kwargs: architecture overrides passed to the backbone (e.g. ``focal_windows: 9``, or a tiny
            ``embed_dim``/``depths`` for a demo); an unknown name is an error from the model's constructor.
        num_classes: number of classes; linked from the data module by ``cli.py``.
        class_names: class names for logs and predictions; linked from the data module.
        drop_path_rate: stochastic depth of the backbone.
        freeze_backbone: train only the heads (a classifier's ``head`` included).
        frozen_stages: freeze the stem and the first N stages (timm's coarse parameter groups, which count a
            stage's downsampling with the next stage; FocalNet and timm backbones alike).
        layer_decay: layer-wise lr decay (e.g. 0.9); None = same lr everywhere.
        backbone_lr_mult: the backbone's lr relative to the heads' (0.1 in the Mask2Former and DINO recipes).
        optimizer: the optimizer class and its arguments (``torch.optim.AdamW`` by default); it receives the groups.
        schedule: lr decay after warm-up, stepped every optimizer step.
        warmup_epochs / warmup_steps: linear warm-up length (steps win when both are set).
        milestones: epochs at which ``schedule: step`` multiplies the lr by ``gamma``.
        channels_last: run the model in channels_last memory format (FocalNet does so internally anyway).
        compile: ``torch.compile`` the model's forward for training and evaluation.
        grad_checkpointing: recompute activations in the backward pass (FocalNet and timm models).
    """

    def __init__(
        self,
        backbone: str = "focalnet_tiny_srf",
        pretrained: str | None = None,
        backbone_kwargs: BackboneKwargs | None = None,
        num_classes: int = 1000,
        class_names: Sequence[str] | None = None,
        drop_path_rate: float = 0.1,
        freeze_backbone: bool = False,
        frozen_stages: int = 0,
        layer_decay: float | None = None,
        backbone_lr_mult: float = 1.0,
        optimizer: OptimizerCallable = default_optimizer,
        schedule: Schedule = "cosine",
        warmup_epochs: float = 0.0,
        warmup_steps: int | None = None,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_lr_ratio: float = 0.0,
        poly_power: float = 1.0,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self.evaluation_results: dict[str, Any] = {}
        self._apply_freezing()
        if grad_checkpointing:
            self.backbone_module().set_grad_checkpointing(True)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._compiled = None

    # ------------------------------------------------------------ template hooks
    def configure_models(self) -> None:
        raise NotImplementedError

    def configure_losses(self) -> None:
        pass

    def configure_metrics(self) -> None:
        """One clone of :meth:`make_metrics` per evaluation stage (``val``, ``test``)."""
        self.eval_metrics = nn.ModuleDict({stage: self.make_metrics() for stage in ("val", "test")})

    def make_metrics(self) -> Metric | MetricCollection:
        """A fresh instance of the task's metrics (state summed over the whole split, synchronised across ranks)."""
        raise NotImplementedError

    def evaluation_step(self, batch: Any, stage: str) -> Any:
        """Predict on an evaluation batch and update ``self.stage_metrics(stage)``; returns the predictions."""
        raise NotImplementedError

    def summarize(self, computed: Any, stage: str) -> dict[str, Tensor]:
        """The computed metrics as flat scalars named without the stage prefix (``acc1``, ``IoU/<class>`` …)."""
        return dict(computed)

    def backbone_module(self) -> nn.Module:
        """The pretrained part: frozen by ``freeze_backbone``, lr-decayed by depth with ``layer_decay``."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Newly initialised parts, trained at the full lr and never frozen (they may lie inside the backbone
        module, as a classifier's head does)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared by the tasks
    # What the run's default callbacks (``focalbench.callbacks.defaults``, added by the CLI) need to know, so that
    # the tasks import no callbacks: the metric the best checkpoint is chosen by (maximised), its file name, and the
    # class path of the writer ``predict`` uses.
    monitor: str
    checkpoint_filename: str
    prediction_writer: str | None = None
    pretrained_includes_heads = False  # whether ``pretrained`` weights carry the heads too (a classifier's do)

    def build_dense_backbone(self, out_indices: Sequence[int] | None = None) -> nn.Module:
        """The multi-scale backbone of the dense tasks (:func:`build_backbone`) from the hyperparameters; the levels
        ``out_indices`` (every stage by default; negative ones count from the deepest)."""
        hp = self.hparams
        return build_backbone(
            hp.backbone,
            pretrained=hp.pretrained,
            out_indices=out_indices,
            drop_path_rate=hp.drop_path_rate,
            **(hp.backbone_kwargs or {}),
        )

    # ------------------------------------------------------------------ running
    def network(self) -> nn.Module:
        """The module the steps call: compiled once on first use when ``compile`` is set."""
        if not self.hparams.compile:
            return self.model
        if self._compiled is None:
            # kept out of the module tree so the state dict keeps its plain keys
            object.__setattr__(self, "_compiled", torch.compile(self.model))
        return self._compiled

    @cached_property
    def normalization(self) -> Normalization:
        """The input mean / std of the backbone's weights, decided once for the data, the model and the pictures."""
        return input_normalization(self.backbone_module())

    def _apply_freezing(self) -> None:
        backbone = self.backbone_module()
        if self.hparams.freeze_backbone:
            backbone.requires_grad_(False)
        elif self.hparams.frozen_stages:
            freeze_stages(backbone, self.hparams.frozen_stages)
        for head in self.head_modules():
            head.requires_grad_(True)

    def log_losses(self, losses: dict[str, Tensor], batch_size: int) -> Tensor:
        """Log each loss as ``train_<name>`` and their sum as ``train_loss`` (progress bar); returns the sum."""
        loss = sum(losses.values())
        self.log_dict({f"train_{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def train(self, mode: bool = True) -> BaseTask:
        """As ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode: a frozen backbone keeps its running
        statistics too (mmdet's ``norm_eval``), so a linear probe changes nothing but the head."""
        super().train(mode)
        if mode:
            self._frozen_norms_to_eval()
        return self

    def _frozen_norms_to_eval(self) -> None:
        for module in self.backbone_module().modules():
            params = list(module.parameters(recurse=False))
            frozen = params and not any(p.requires_grad for p in params)
            if frozen and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    # ------------------------------------------------------------------ evaluation
    def stage_metrics(self, stage: str) -> Metric | MetricCollection:
        return self.eval_metrics[stage]

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self.evaluation_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        return self.evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        for stage in self.eval_metrics:
            if stage.startswith("val"):  # ``val`` and variants such as ``val_ema``
                self.log_scores(stage)

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def log_scores(self, stage: str) -> None:
        """Compute the stage's metrics over the split (synchronised across ranks), log them, keep them, reset."""
        metrics = self.stage_metrics(stage)
        computed = metrics.compute()
        self.evaluation_results[stage] = computed
        scores = {f"{stage}_{name}": value for name, value in self.summarize(computed, stage).items()}
        # Identical on every rank (computed from the synchronised state), so logged without another reduction.
        self.log_dict({k: v for k, v in scores.items() if k != self.monitor})
        if self.monitor in scores:
            self.log(self.monitor, scores[self.monitor], prog_bar=True)
        metrics.reset()

    def setup(self, stage: str) -> None:
        """Warns when bf16 is asked of a CPU that has no bf16 kernels: the run would not fail, only crawl."""
        trainer = self._trainer
        if trainer is None:  # called directly, outside a run
            return
        precision = str(trainer.precision)
        if precision.startswith("bf16") and trainer.strategy.root_device.type == "cpu" and not fused.ONEDNN_BF16:
            rank_zero_warn(
                f"trainer.precision {precision} on a CPU without bf16 kernels (oneDNN's need AVX-512 or "
                "AVX-NE-CONVERT): convolutions and matrix products run on reference kernels many times slower than "
                "fp32's; set trainer.precision: 32-true"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._has_weights = True  # by --ckpt_path or load_from_checkpoint: predict is not from random weights

    def on_train_start(self) -> None:
        self._has_weights = True  # trained in this process (fit, then predict with the same module)

    def on_predict_start(self) -> None:
        """Warns when nothing but random initialisation stands behind the predictions (a forgotten flag)."""
        if self.trainer.ckpt_path is not None or getattr(self, "_has_weights", False):
            return
        if not self.hparams.pretrained:
            rank_zero_warn(
                "predicting with random weights: no checkpoint and no pretrained weights were given, so the outputs "
                "are noise; pass --ckpt_path PATH (a checkpoint of this task) or --model.pretrained PATH|HUB_ID"
            )
        elif not self.pretrained_includes_heads:
            rank_zero_warn(
                "predicting with untrained heads: --model.pretrained loads the backbone only; pass --ckpt_path PATH "
                "(a checkpoint of this task)"
            )

    def on_train_epoch_start(self) -> None:
        self._frozen_norms_to_eval()  # Lightning does not call train() on the module; evaluation restores modes
        # Streamed (iterable) data sets shuffle by seed + epoch; samplers get their epoch from Lightning itself.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> dict:
        groups = param_groups(self.backbone_module(), self.head_modules(), self.hparams.layer_decay)
        if self.hparams.backbone_lr_mult != 1.0:
            heads = {id(p) for head in self.head_modules() for p in head.parameters()}
            backbone = {id(p) for p in self.backbone_module().parameters()} - heads
            for group in groups:  # groups are all-backbone or all-head (param_groups keeps them apart)
                if id(group["params"][0]) in backbone:
                    group["lr_scale"] = group.get("lr_scale", 1.0) * self.hparams.backbone_lr_mult
        optimizer = self.optimizer(groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.pop("lr_scale", 1.0)
        trainer = self.trainer
        if optimizer.defaults.get("fused") and trainer.gradient_clip_val and "mixed" in str(trainer.precision):
            raise ConfigError(  # Lightning would stop at the first step, naming neither key
                f"trainer.gradient_clip_val with trainer.precision {trainer.precision}: Lightning cannot clip a fused "
                "optimizer's gradients under mixed precision; set model.optimizer.init_args.fused: false"
            )
        total, steps_per_epoch = self._optimizer_steps()
        hp = self.hparams
        epoch_counts = (hp.warmup_steps is None and hp.warmup_epochs) or (hp.schedule == "step" and hp.milestones)
        if steps_per_epoch is None and epoch_counts:
            raise ConfigError(
                "model.warmup_epochs and model.milestones count epochs, whose length is unknown for this streamed "
                "data (no size in its metadata): set model.warmup_steps, or train on data of known size"
            )
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(hp.warmup_epochs * (steps_per_epoch or 0))
        schedule = lr_lambda(
            total,
            warmup,
            hp.schedule,
            min_lr_ratio=hp.min_lr_ratio,
            poly_power=hp.poly_power,
            milestones=[m * steps_per_epoch for m in hp.milestones] if steps_per_epoch else [],
            gamma=hp.gamma,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
        }

    def _optimizer_steps(self) -> tuple[int, int | None]:
        """Optimizer steps in the whole run and in one epoch (None when the data's size is unknown: a stream
        without a size in its metadata); as Lightning steps, the last accumulated batches of an epoch count."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches  # loads the train loader: its length is known after this
        batches = trainer.num_training_batches
        if batches == math.inf:
            if trainer.max_steps == -1:
                raise ConfigError(
                    "the training data's size is unknown (a stream without a size in its metadata), so the lr "
                    "schedule has no length: set trainer.max_steps"
                )
            return trainer.max_steps, None
        if total == math.inf:  # max_epochs -1: open-ended
            raise ConfigError("trainer.max_epochs -1 leaves the lr schedule without a length: set trainer.max_steps")
        return int(total), max(1, math.ceil(batches / trainer.accumulate_grad_batches))
