"""Lightning's model summary, counting the network once (not its EMA copy as well)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary as Summary
from torch import nn


class _SummaryWithout(Summary):
    """Lightning's `ModelSummary` table without the submodules named in `excluded`."""

    def __init__(self, model: L.LightningModule, max_depth: int, excluded: Sequence[str]) -> None:
        self._excluded = tuple(excluded)  # read by named_modules() during super().__init__
        super().__init__(model, max_depth=max_depth)

    def _kept(self, name: str) -> bool:
        return not any(name == x or name.startswith(x + ".") for x in self._excluded)

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in super().named_modules if self._kept(n)]

    def _parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self._model.named_parameters() if self._kept(n)]

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self._parameters())

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._parameters() if p.requires_grad)


class NetworkSummary(ModelSummary):
    """`ModelSummary` that leaves out copies of the network such as the EMA weights.

    `LitDiffusion.ema` holds a second copy of every U-Net weight: counted, it would double the
    parameters and the size a user reads (3.1 M for a 1.5 M network).
    """

    def __init__(self, max_depth: int = 1, exclude: Sequence[str] = ("ema",)) -> None:
        super().__init__(max_depth=max_depth)
        self.exclude = tuple(exclude)

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Summary:
        return _SummaryWithout(pl_module, self._max_depth, self.exclude)
