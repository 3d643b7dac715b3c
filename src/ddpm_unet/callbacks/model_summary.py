"""Lightning's model summary, counting the network once (not its EMA copy as well)."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import summarize

log = logging.getLogger(__name__)


class _Parts(L.LightningModule):
    """The submodules of `module` but its EMA copy (shared, not copied), as one module for
    Lightning's `summarize`."""

    def __init__(self, module: L.LightningModule) -> None:
        super().__init__()
        for name, child in module.named_children():
            if name != "ema":
                self.add_module(name, child)


class NetworkSummary(ModelSummary):
    """Lightning's summary table (`summarize`) without copies of the network such as the EMA
    weights: `LitDiffusion.ema` holds a second copy of every U-Net weight, which would double the
    parameters and the size a user reads (3.1 M for a 1.5 M network).

    A `ModelSummary`, so Lightning adds no summary of its own (`trainer.enable_model_summary`).
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)
        self.depth = max_depth

    def table(self, pl_module: L.LightningModule) -> str:
        """The summary of `pl_module` without its EMA copy."""
        return str(summarize(_Parts(pl_module), max_depth=self.depth))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.depth and trainer.is_global_zero:
            log.info("\n%s", self.table(pl_module))
