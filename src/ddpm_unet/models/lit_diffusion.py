"""The LightningModule: trains an eps-network with a diffusion process, keeps its EMA weights.

It receives its parts built (as lightning-hydra-template's modules do): the network (`net`, any
`nn.Module` with `forward(x, t)`, e.g. `models/unet.py`), the diffusion process
(`models/diffusion.py`), and the optimiser and learning-rate schedule as partial callables
(`_partial_: true` in `configs/model/*.yaml`). The configs say what is built; this module says
how it trains:

* `train/loss`: the diffusion loss on random steps and noise;
* `val/loss` and `val/loss_ema`: the same loss of the raw and of the EMA weights, on steps and
  noise drawn from a generator seeded per validation batch, so the numbers are comparable between
  epochs (and between the two weight sets);
* an exponential moving average of the weights (`torch.optim.swa_utils.AveragedModel`), updated
  once per optimiser step (not per micro-batch under gradient accumulation), saved in checkpoints
  and used for sampling;
* optional `torch.compile` of the training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddpm_unet.generation.core import (
    DEFAULT_MODEL_BATCH,
    effective_model_batch,
    generate_images,
    random_seed,
)
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import DDPM, Sampler
from ddpm_unet.models.samplers.base import Progress
from ddpm_unet.utils.rules import DECAY, SEED, Rule, check_arguments

OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""`optimizer(params) -> Optimizer`: a `_partial_` optimiser (lr, betas, ... bound)."""
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
"""`scheduler(optimizer, total_steps=N) -> LRScheduler`, stepped once per optimiser step."""
LIT_RULES = (Rule("ema_decay", DECAY, "0.9999"), Rule("val_seed", SEED, "1234"))
"""`LitDiffusion`'s single-valued arguments (under `model.` in the config)."""


class EMAUpdate:
    """An `AveragedModel` `multi_avg_fn`: `ema <- ema + (1 - d) * (param - ema)`.

    With `warmup`, `d = min(decay, (1 + n) / (10 + n))` after `n` updates, so that early in
    training the average is not dominated by the random initialisation (a decay of 0.9999 would
    otherwise need ~10^4 steps to forget it). A class, not a closure, so the module pickles
    (`ddp_spawn` sends it to the other processes).
    """

    def __init__(self, decay: float, warmup: bool) -> None:
        self.decay = decay
        self.warmup = warmup

    def __call__(
        self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        n = int(num_averaged)
        d = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        torch._foreach_lerp_(ema_params, params, 1.0 - d)


class LitDiffusion(L.LightningModule):
    """Diffusion training of an eps-network `net`.

    * `net`: the network, `net(x [b, C, H, W], t [b]) -> [b, C, H, W]` (a `UNet`, or any module
      with that call)
    * `diffusion`: the process (`GaussianDiffusion`): loss and samplers
    * `optimizer`: `optimizer(params)` builds the optimiser (`_partial_` in the config)
    * `scheduler`: `scheduler(optimizer, total_steps=...)` builds the per-step learning-rate
      schedule, or None for a constant rate
    * `image_size`, `image_channels`: shape of the training images (used for sampling)
    * `ema_decay`, `ema_warmup`: EMA of the weights (see `EMAUpdate`)
    * `compile`: wrap the training forward in `torch.compile`
    * `channels_last`: keep weights and batches in NHWC layout (faster convolutions on GPUs and on
      CPUs with several threads; same results)
    * `val_seed`: seed of the fixed validation steps and noise
    * `run_config`: the resolved run configuration (plain data), stored in checkpoints so that
      `sample.py`/`eval.py` can rebuild the dataset and model from a checkpoint alone

    Batches are image tensors `[batch, image_channels, image_size, image_size]` in [-1, 1].
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        image_size: int = 32,
        image_channels: int | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        compile: bool = False,
        channels_last: bool = False,
        val_seed: int = 1234,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        # Named as their `model.` config keys; the early config check runs the same rules.
        check_arguments(locals(), LIT_RULES, prefix="model.")
        super().__init__()
        # The built objects are not hyper-parameters: the checkpoint's `run_config` says how to
        # build them again (and a pickled partial would not load with weights_only=True).
        self.save_hyperparameters(
            ignore=["net", "diffusion", "optimizer", "scheduler", "run_config"], logger=False
        )
        self.run_config = run_config
        self.net = net
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        check_image_size = getattr(net, "check_image_size", None)
        if check_image_size is not None:  # a UNet knows which sizes its levels can halve
            check_image_size(image_size, size_key="data.image_size")
        self.image_size = image_size
        self.image_channels = (
            image_channels if image_channels is not None else int(net.image_channels)
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Before the EMA copy is made, so that both hold their weights in the same layout.
        self.net.to(memory_format=self.memory_format)
        self.ema = AveragedModel(
            self.net, multi_avg_fn=EMAUpdate(ema_decay, ema_warmup), use_buffers=True
        )
        # The average is not trained: without this DDP would wait for its gradients.
        self.ema.requires_grad_(False)
        self._ema_step = 0  # the optimiser step the average last took in
        self._compiled_net: Any = None  # set in configure_model when `compile`

    # ----------------------------------------------------------------- set-up
    def configure_model(self) -> None:
        if self.hparams.compile and self._compiled_net is None:
            # Kept out of the module tree (a plain attribute), so checkpoints hold `net.*` only.
            self.__dict__["_compiled_net"] = torch.compile(self.net)

    @property
    def num_parameters(self) -> int:
        """Parameters of the network (the EMA copy not counted)."""
        return sum(p.numel() for p in self.net.parameters())

    # ----------------------------------------------------------------- training
    def _in_layout(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch `[batch, C, H, W]` in the weights' layout (NHWC with `channels_last`).

        Done in the steps, not in `on_after_batch_transfer`: with a DataModule, Lightning warns
        that the module's transfer hooks compete with the DataModule's."""
        return batch.contiguous(memory_format=self.memory_format)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        batch = self._in_layout(batch)
        loss = self.diffusion.loss(
            self.net if self._compiled_net is None else self._compiled_net, batch
        )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def on_train_start(self) -> None:
        # After a resume the average already holds the steps before `global_step`.
        self._ema_step = self.trainer.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Once per optimiser step: under gradient accumulation `global_step` advances only on the
        # micro-batch that steps the optimiser (the test of this is in tests/test_lit_module.py).
        if self.trainer.global_step > self._ema_step:
            self.ema.update_parameters(self.net)
            self._ema_step = self.trainer.global_step

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        batch = self._in_layout(batch)
        # Fixed draws per batch index (made on the CPU, so identical on every device and epoch),
        # shared by the raw and the EMA weights, so their losses compare.
        gen = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (batch.shape[0],), generator=gen)
        t, noise = t.to(self.device), torch.randn(batch.shape, generator=gen).to(self.device)
        noise = noise.to(batch.dtype)
        loss = self.diffusion.loss(self.net, batch, t, noise)
        loss_ema = self.diffusion.loss(self.ema.module, batch, t, noise)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/loss_ema", loss_ema, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        # The run length in optimiser steps, for schedules that decay to its end.
        scheduler = self.scheduler_factory(
            optimizer, total_steps=self.trainer.estimated_stepping_batches
        )
        return {
            "optimizer": optimizer,
            # "name": what LearningRateMonitor logs it as
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        if self._trainer is not None:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    # so that resuming continues the same W&B run
                    checkpoint["wandb_run_id"] = logger.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is None and "run_config" in checkpoint:
            self.run_config = checkpoint["run_config"]

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_images(
        self,
        num_samples: int,
        sampler: Sampler | None = None,
        seed: int | None = 0,
        batch_size: int | None = None,
        use_ema: bool = True,
        progress: Progress = False,
        indices: Sequence[int] | None = None,
        model_batch: int = DEFAULT_MODEL_BATCH,
    ) -> torch.Tensor:
        """Images of a run of `num_samples`: `[len(indices), image_channels, image_size,
        image_size]` in [-1, 1] (all `num_samples` when `indices` is None).

        Through `ddpm_unet.generation.generate_images`, as `sample.py` and `eval.py`: image `i`
        depends only on `seed`, `sampler` and `i` (and `model_batch`), whatever `batch_size`
        and whichever other indices are asked for with it; a DDP rank can make its share
        (`indices=range(rank, num_samples, world_size)`). `sampler`: DDPM over all T steps when
        None; EMA weights unless `use_ema=False`; `seed=None`: a random one; `batch_size` bounds
        memory (default: all at once); `progress`: True for a bar per batch, or a callable
        wrapping each batch's step indices.
        """
        sampler = DDPM() if sampler is None else sampler
        model = self.ema.module if use_ema else self.net
        shape = (self.image_channels, self.image_size, self.image_size)
        return generate_images(
            model,
            self.diffusion,
            sampler,
            range(num_samples) if indices is None else indices,
            random_seed() if seed is None else seed,
            shape,
            effective_model_batch(model_batch, num_samples),
            batch_size=batch_size,
            progress=progress,
        )
