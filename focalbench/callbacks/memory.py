"""Freed memory kept for reuse on CPU runs: no page faults for each step's large activations."""

from __future__ import annotations

import logging

from lightning.pytorch import Callback, LightningModule, Trainer

from focalbench.memory import retain_freed_memory

log = logging.getLogger(__name__)


class RetainFreedMemory(Callback):
    """On a run whose model is on the CPU, has glibc's malloc keep freed memory for reuse
    (:func:`focalbench.memory.retain_freed_memory`), from ``setup`` on, in every rank and in the data loader
    workers it starts later. A CPU train step then no longer faults its large activations in page by page each
    step; the process keeps its peak memory instead of returning it between steps. GPU runs are left as they are.

    The CLI adds it to every run; ``enabled: false`` (configured as a trainer callback) turns it off.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.applied = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.enabled or self.applied or trainer.strategy.root_device.type != "cpu":
            return
        self.applied = retain_freed_memory()
        if not self.applied:
            log.info("RetainFreedMemory: this C library has no glibc mallopt; freed memory is handled as before")
