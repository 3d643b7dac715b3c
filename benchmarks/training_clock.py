"""`TrainingClock`: a Lightning callback that records, after every optimiser step, the seconds
since training started and the images seen, for `benchmarks/time_to_quality.py`.

Start-up (imports, data, model build) is before `on_train_start`, so it is not in the clock;
validation is (a user waits for it); the benchmark turns the sample grids off.
Added to a run by the benchmark:
`+callbacks.clock._target_=training_clock.TrainingClock +callbacks.clock.path=<file>.json`
with this folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import time
from typing import Any

import lightning as L


class TrainingClock(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path
        self.start = 0.0
        self.images = 0
        self.rows: list[tuple[int, float, int]] = []  # (step, seconds, images seen)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.images += len(batch) * trainer.world_size
        self.rows.append((trainer.global_step, time.perf_counter() - self.start, self.images))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with open(self.path, "w") as f:
            json.dump(self.rows, f)
