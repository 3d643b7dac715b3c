"""Learning-rate schedules: built with their settings, then called by
`LitDiffusion.configure_optimizers` with the optimiser and the run's length in optimiser steps
(known only once the trainer has the data).

The run length is never saved in a checkpoint: `LambdaLR` saves the `__dict__` of a callable
object it is given, so a run resumed with more steps restored the old length and trained at
learning rate 0. The multiplier is a `functools.partial`, whose arguments are not in its
`__dict__`: a resumed run's schedule is re-planned over the new length, from the step reached.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)


def lr_factor(step: int, warmup: int, total: int | None = None, min_ratio: float = 0.0) -> float:
    """The multiplier after `step` optimiser steps: linear warm-up over `warmup` steps, then 1,
    or, with `total`, a half cosine from 1 down to `min_ratio` at step `total` (and after)."""
    if step < warmup:
        return (step + 1) / warmup
    if total is None:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ReplannedLambdaLR(LambdaLR):
    """`LambdaLR` whose restored state follows this run's multiplier: loading a checkpoint sets
    the optimiser's lr (restored just before, by Lightning) to the multiplier at the step
    reached. The same run length gives the saved lr exactly; a longer one its own plan's."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        step = self.last_epoch
        lrs = [base * fn(step) for base, fn in zip(self.base_lrs, self.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


class WarmupCosine:
    """Linear warm-up from 0 over `warmup_steps`, then a constant rate (`decay="none"`, DDPM) or
    a half cosine down to `min_lr_ratio * lr` at the run's last step (`decay="cosine"`)."""

    def __init__(self, warmup_steps: int = 0, decay: str = "none", min_lr_ratio: float = 0.0):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise UserError(f"warmup_steps={warmup_steps!r} must be a whole number >= 0.")
        if decay not in ("none", "cosine"):
            raise UserError(f"decay={decay!r} is unknown: use none or cosine.")
        ratio = min_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise UserError(f"min_lr_ratio={min_lr_ratio!r} must be a number from 0 to 1.")
        self.warmup_steps, self.decay, self.min_lr_ratio = warmup_steps, decay, min_lr_ratio

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: float) -> LambdaLR:
        """The schedule of `optimizer` over a run of `total_steps` optimiser steps (stepped once
        per optimiser step; infinite, with no `max_steps`/`max_epochs`, only without decay)."""
        warmup, total = self.warmup_steps, None
        if self.decay == "cosine" and not math.isfinite(total_steps):
            raise UserError(
                "decay=cosine needs a known run length (max_steps or max_epochs of the trainer)."
            )
        if self.decay == "cosine" and total_steps <= warmup:
            # A debug run of the default recipe ends inside the warm-up: say so, not refuse it.
            log.warning(
                "decay=cosine: the run has only %d optimiser steps, within warmup_steps=%d, so "
                "the learning rate only warms up.",
                total_steps,
                warmup,
            )
        elif self.decay == "cosine":
            total = int(total_steps)
        factor = functools.partial(
            lr_factor, warmup=warmup, total=total, min_ratio=self.min_lr_ratio
        )
        return ReplannedLambdaLR(optimizer, factor)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: float,
    warmup_steps: int = 0,
    decay: str = "none",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """`WarmupCosine(...)(optimizer, total_steps)` under its earlier name: the `run_config` of
    checkpoints written before `WarmupCosine` names this function (with `_partial_: true`), and
    they must keep loading, sampling and resuming."""
    return WarmupCosine(warmup_steps, decay, min_lr_ratio)(optimizer, total_steps)
