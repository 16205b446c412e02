"""Image classification: the paper's ImageNet recipe and transfer learning on a user's own classes."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from focalbench.callbacks.predictions import ClassificationCSVWriter
from focalbench.models import VARIANTS, create_model
from focalbench.models.factory import timm_pretrained_kwargs
from focalbench.tasks.base import BaseTask


class ClassificationTask(BaseTask):
    """Classifier with cross-entropy (label smoothing), or soft-target CE under timm Mixup/CutMix, optional EMA.

    Metrics over the whole validation split (torchmetrics, synchronised under DDP): ``val_acc1``, ``val_acc5``,
    per-class accuracy (``val_acc_class/<name>``) and the confusion matrix (drawn by ``ConfusionMatrixImage``);
    with ``ema_decay`` the EMA weights are validated too (``val_ema_acc1``).

    Args (besides :class:`BaseTask`'s):
        label_smoothing: for the hard-label loss and inside Mixup's soft targets.
        mixup_alpha / cutmix_alpha: Beta parameters (0 = off); ``mixup_prob``, ``mixup_switch_prob`` as timm.
        ema_decay: keep an exponential moving average of the weights (e.g. 0.9998); None = off.
        top_k: how many classes ``predict`` writes per image.
    """

    monitor = "val_acc1"

    def __init__(
        self,
        *,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float | None = None,
        top_k: int = 5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ building
    def configure_models(self) -> None:
        hp = self.hparams
        if hp.backbone in VARIANTS:
            self.model = create_model(
                hp.backbone,
                num_classes=hp.num_classes,
                pretrained=hp.pretrained,
                drop_path_rate=hp.drop_path_rate,
                **(hp.backbone_kwargs or {}),
            )
        else:
            import timm

            self.model = timm.create_model(
                hp.backbone,
                num_classes=hp.num_classes,
                drop_path_rate=hp.drop_path_rate,
                **timm_pretrained_kwargs(hp.pretrained),
                **(hp.backbone_kwargs or {}),
            )
        self.mixup = None
        if hp.mixup_alpha > 0 or hp.cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=hp.mixup_alpha,
                cutmix_alpha=hp.cutmix_alpha,
                prob=hp.mixup_prob,
                switch_prob=hp.mixup_switch_prob,
                label_smoothing=hp.label_smoothing,
                num_classes=hp.num_classes,
            )
        self.model_ema = ModelEmaV3(self.model, decay=hp.ema_decay) if hp.ema_decay else None

    def configure_losses(self) -> None:
        self.soft_loss = SoftTargetCrossEntropy()
        self.hard_loss = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()

    def configure_metrics(self) -> None:
        k = self.hparams.num_classes
        # Top-k accuracy over all samples (micro), as ImageNet results are reported. No compute groups: top-1 and
        # top-5 hold states of the same shape, and torchmetrics would merge them after a batch where they agree.
        accuracy = MetricCollection(
            {
                "acc1": MulticlassAccuracy(k, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(k, top_k=min(5, k), average="micro"),
                "loss": MeanMetric(),
            },
            compute_groups=False,
        )
        self.val_metrics = accuracy.clone(prefix="val_")
        self.test_metrics = accuracy.clone(prefix="test_")
        self.val_ema_metrics = accuracy.clone(prefix="val_ema_") if self.hparams.ema_decay else None
        self.val_class_accuracy = MulticlassAccuracy(k, average=None)
        self.val_confusion = MulticlassConfusionMatrix(k)

    def backbone_module(self) -> nn.Module:
        return self.model

    def head_modules(self) -> list[nn.Module]:
        return []  # the head is part of the model: timm's group_matcher puts it in the top group at full lr

    def configure_callbacks(self) -> list[Callback]:
        return [
            *self.checkpoint_callbacks("epoch{epoch:03d}-acc1{val_acc1:.4f}"),
            *self.default_callbacks(ClassificationCSVWriter()),
        ]

    # ------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network()(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None and len(images) % 2 == 0:  # timm's batch-wise mixing pairs samples: even sizes
            images, targets = self.mixup(images, labels)
            loss = self.soft_loss(self(images), targets)
        else:
            loss = self.hard_loss(self(images), labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.global_step)

    @staticmethod
    def _update(metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        for name, metric in metrics.items(keep_base=True):
            # the loss is a per-sample mean weighted by batch size, so uneven DDP shards average exactly
            metric.update(loss, weight=len(labels)) if name == "loss" else metric.update(logits, labels)

    def _evaluate(self, batch: dict, metrics: MetricCollection) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        logits = self(images)
        self._update(metrics, logits, labels, self.eval_loss(logits, labels))
        self.log_dict(metrics, batch_size=len(images), prog_bar=True)
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._evaluate(batch, self.val_metrics)
        self.val_class_accuracy.update(logits, batch["label"])
        self.val_confusion.update(logits, batch["label"])
        if self.val_ema_metrics is not None:
            ema_logits = self.model_ema(batch["image"])
            self._update(self.val_ema_metrics, ema_logits, batch["label"], self.eval_loss(ema_logits, batch["label"]))
            self.log_dict(self.val_ema_metrics, batch_size=len(batch["label"]))

    def on_validation_epoch_end(self) -> None:
        per_class = self.val_class_accuracy.compute()
        self.log_dict({f"val_acc_class/{name}": acc for name, acc in zip(self.class_names, per_class)})
        self.val_class_accuracy.reset()
        self.val_confusion.reset()  # drawn by the ConfusionMatrixImage callback, which runs before this hook

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch["image"]).softmax(-1)
        top = probs.topk(min(self.hparams.top_k, probs.shape[-1]), dim=-1)
        return {"path": batch["path"], "indices": top.indices.cpu(), "probs": top.values.cpu()}
