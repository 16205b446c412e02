"""Image classification: the paper's ImageNet recipe and transfer learning on a user's own classes."""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from focalbench.models import create_model
from focalbench.models.factory import drop_focalnet_kwargs, is_focalnet, timm_pretrained_kwargs
from focalbench.tasks.base import BaseTask


class ClassificationTask(BaseTask):
    """Classifier with cross-entropy (label smoothing), or soft-target CE under timm Mixup/CutMix, optional EMA.

    Metrics over the whole split (torchmetrics, synchronised under DDP): ``val_acc1``, ``val_acc5``, ``val_loss``,
    per-class accuracy (``val_acc_class/<name>``) and the confusion matrix (``evaluation_results["val"]
    ["confusion"]``, drawn by ``ConfusionMatrixImage``); the same with ``test_`` for ``test``; with ``ema_decay`` the
    EMA weights are validated too (``val_ema_acc1`` …).

    Args (besides :class:`BaseTask`'s):
        label_smoothing: for the hard-label loss and inside Mixup's soft targets.
        mixup_alpha / cutmix_alpha: Beta parameters (0 = off); ``mixup_prob``, ``mixup_switch_prob`` as timm.
        ema_decay: keep an exponential moving average of the weights (e.g. 0.9998); None = off.
        top_k: how many classes ``predict`` writes per image.
    """

    monitor = "val_acc1"
    checkpoint_filename = "epoch{epoch:03d}-acc1{val_acc1:.4f}"
    prediction_writer = "focalbench.callbacks.predictions.ClassificationCSVWriter"
    pretrained_includes_heads = True  # the classifier is loaded with the weights when its class count matches

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
        if is_focalnet(hp.backbone):
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
                **drop_focalnet_kwargs(hp.backbone, hp.backbone_kwargs or {}),
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

    def make_metrics(self) -> MetricCollection:
        k = self.hparams.num_classes
        # Top-k accuracy over all samples (micro), as ImageNet results are reported. No compute groups: top-1 and
        # top-5 hold states of the same shape, and torchmetrics would merge them after a batch where they agree.
        return MetricCollection(
            {
                "acc1": MulticlassAccuracy(k, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(k, top_k=min(5, k), average="micro"),
                "acc_class": MulticlassAccuracy(k, average=None),
                "confusion": MulticlassConfusionMatrix(k),
                "loss": MeanMetric(),
            },
            compute_groups=False,
        )

    def configure_metrics(self) -> None:
        super().configure_metrics()
        if self.hparams.ema_decay:
            self.eval_metrics["val_ema"] = self.make_metrics()

    def summarize(self, computed: dict, stage: str) -> dict[str, torch.Tensor]:
        """``acc1``, ``acc5``, ``loss`` and ``acc_class/<name>``; the confusion matrix is drawn, not logged."""
        scores = {name: computed[name] for name in ("acc1", "acc5", "loss")}
        scores.update({f"acc_class/{name}": acc for name, acc in zip(self.class_names, computed["acc_class"])})
        return scores

    def backbone_module(self) -> nn.Module:
        return self.model

    def head_modules(self) -> list[nn.Module]:
        # Inside the model: trained at full lr (timm's group_matcher would put it in the top group anyway) and never
        # frozen, so a linear probe (freeze_backbone) trains exactly the classifier.
        return [self.model.get_classifier()]

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

    def _update(self, metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
        for name, metric in metrics.items(keep_base=True):
            if name == "loss":  # a per-sample mean weighted by batch size, so uneven DDP shards average exactly
                metric.update(self.eval_loss(logits, labels), weight=len(labels))
            else:
                metric.update(logits, labels)

    def evaluation_step(self, batch: dict, stage: str) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        logits = self(images)
        self._update(self.stage_metrics(stage), logits, labels)
        if stage == "val" and self.model_ema is not None:
            self._update(self.stage_metrics("val_ema"), self.model_ema(images), labels)
        return logits

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch["image"]).softmax(-1)
        top = probs.topk(min(self.hparams.top_k, probs.shape[-1]), dim=-1)
        return {"path": batch["path"], "indices": top.indices.cpu(), "probs": top.values.cpu()}
