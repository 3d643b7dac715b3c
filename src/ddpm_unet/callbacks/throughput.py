"""Training throughput in images per second, logged as `train/img_per_s`."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class ImagesPerSecond(L.Callback):
    """Logs the images processed per second by all ranks together, averaged over each epoch.

    Timed from the first batch's start to the last batch's end of the epoch, so data loading
    between batches is included (it is part of what a user waits for). Validation, sample grids
    and FID all run after the last batch has ended (Lightning validates inside the training
    epoch, before `on_train_epoch_end`), so they are not: the figure compares training speed.
    Lightning's `ThroughputMonitor` would count the epoch's end (tests/test_logs.py shows it).
    """

    _start: float | None = None  # perf_counter at the epoch's first batch start
    _end = 0.0  # ... and at its last batch end
    _images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._end, self._images = None, 0.0, 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        images = batch[0] if isinstance(batch, list | tuple) else batch  # (images, labels)
        self._images += images.shape[0] * trainer.world_size
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None and self._images:
            rate = self._images / max(self._end - self._start, 1e-9)
            pl_module.log("train/img_per_s", rate, rank_zero_only=True)
