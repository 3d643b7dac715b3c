"""The LightningModule: trains a network with a diffusion process, keeps its EMA weights.

It receives its parts built by Hydra, as lightning-hydra-template's modules do (see "Beyond the
network" in `docs/design.md`), and logs `train/loss`, `val/loss` and `val/loss_ema`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
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
from ddpm_unet.utils.errors import UserError


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
    """Diffusion training of a network `net`, with an EMA copy (`AveragedModel`) updated once
    per optimiser step, saved in checkpoints and sampled from.

    * `net`: `net(x [b, C, H, W], t [b]) -> [b, C, H, W]` (a `UNet`, or any module with that
      call); a net with a `num_classes` attribute that is not None is class-conditional and is
      called `net(x, t, y)`, `y [b]` int64 in `[0, num_classes]` (`num_classes`: no class)
    * `optimizer`: `optimizer(params)`; `scheduler`: `scheduler(optimizer, total_steps=...)`, a
      learning-rate schedule stepped once per optimiser step, or None for a constant rate
    * `image_size`, `image_channels` (default: the net's): the training images' shape
    * `ema_decay`, `ema_warmup`: see `EMAUpdate`; `val_seed`: of the validation steps and noise
      (and label drops)
    * `cond_drop_prob`: conditional nets only: the chance that a training image's label is
      replaced by the no-class token, so one net learns the conditional and the unconditional
      model (classifier-free guidance, Ho & Salimans 2022)
    * `compile`: wrap the training forward in `torch.compile`
    * `channels_last`: weights and batches in NHWC layout (faster convolutions on GPUs and on
      CPUs with several threads; same results)
    * `run_config`: the resolved run configuration (plain data), stored in checkpoints so that
      `sample.py`/`eval.py` can rebuild the dataset and model from a checkpoint alone

    Batches are image tensors `[batch, image_channels, image_size, image_size]` in [-1, 1], or
    `(images, labels [batch])` for a conditional net. `num_classes` (the net's) and
    `class_names` (the data module's, taken at `setup`) are saved in checkpoints.
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        image_size: int = 32,
        image_channels: int | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        compile: bool = False,
        channels_last: bool = False,
        val_seed: int = 1234,
        run_config: Mapping[str, Any] | None = None,
        cond_drop_prob: float = 0.1,
    ) -> None:
        for name, value in (("ema_decay", ema_decay), ("cond_drop_prob", cond_drop_prob)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise UserError(
                    f"{name}={value!r} must be a number from 0 up to (not including) 1."
                )
        if isinstance(val_seed, bool) or not isinstance(val_seed, int) or not 0 <= val_seed < 2**32:
            raise UserError(f"val_seed={val_seed!r} must be a whole number from 0 to 4294967295.")
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
        self.num_classes: int | None = getattr(net, "num_classes", None)
        self.class_names: list[str] | None = None  # the data module's, at setup
        self.image_size = image_size
        self.image_channels = image_channels or int(net.image_channels)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Before the EMA copy is made, so that both hold their weights in the same layout.
        self.net.to(memory_format=self.memory_format)
        self.ema = AveragedModel(
            self.net, multi_avg_fn=EMAUpdate(ema_decay, ema_warmup), use_buffers=True
        )
        # The average is not trained: without this DDP would wait for its gradients.
        self.ema.requires_grad_(False)
        self._compiled_net: Any = None  # set in configure_model when `compile`

    def setup(self, stage: str) -> None:
        """Take the data module's `class_names`; `UserError` if its labels do not fit the net
        (Lightning sets the data module up first, before any step)."""
        data = getattr(self._trainer, "datamodule", None)
        if data is None or not hasattr(data, "num_classes"):
            return  # not ours: its batches are trusted to fit
        if data.num_classes != self.num_classes:
            gives = f"{data.num_classes} classes" if data.num_classes else "no labels"
            raise UserError(
                f"the network has num_classes={self.num_classes} but the data module gives "
                f"{gives} (with_labels={data.with_labels}): give the network num_classes="
                f"{data.num_classes} (None: unconditional), or the data module with_labels="
                f"{self.num_classes is not None}."
            )
        if data.class_names is not None:
            self.class_names = list(data.class_names)

    def configure_model(self) -> None:
        if self.hparams.compile and self._compiled_net is None:
            # Kept out of the module tree (a plain attribute), so checkpoints hold `net.*` only.
            self.__dict__["_compiled_net"] = torch.compile(self.net)

    @property
    def num_parameters(self) -> int:
        """Parameters of the network (the EMA copy not counted)."""
        return sum(p.numel() for p in self.net.parameters())

    def _images_and_labels(
        self, batch: Any, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`images` `[b, C, H, W]` in the weights' layout (NHWC with `channels_last`), and for a
        conditional net the labels `[b]`, each replaced by the no-class token with probability
        `cond_drop_prob` (drawn on the CPU from `generator`). The layout is set here, not in
        `on_after_batch_transfer`: Lightning warns that it competes with the DataModule's."""
        images, labels = (batch, None) if isinstance(batch, torch.Tensor) else batch
        images = images.contiguous(memory_format=self.memory_format)
        if self.num_classes is not None:  # `setup` checked that the data gives labels
            drop = torch.rand(images.shape[0], generator=generator) < self.hparams.cond_drop_prob
            labels = torch.where(drop.to(labels.device), self.num_classes, labels)
        return images, labels

    @staticmethod
    def _with_labels(net: Callable[..., torch.Tensor], labels: torch.Tensor | None) -> Any:
        """`net` as the `model(x_t, t)` that `GaussianDiffusion.loss` calls."""
        return net if labels is None else partial(net, y=labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = self._images_and_labels(batch)
        net = self.net if self._compiled_net is None else self._compiled_net
        loss = self.diffusion.loss(self._with_labels(net, labels), images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this once per optimiser step, not per micro-batch under gradient
        # accumulation (tested in tests/test_lit_module.py).
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.net)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # Fixed draws per batch index (made on the CPU, so identical on every device and epoch),
        # shared by the raw and the EMA weights, so their losses compare.
        gen = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        images, labels = self._images_and_labels(batch, gen)  # no draw if unconditional
        t = torch.randint(0, self.diffusion.num_timesteps, (images.shape[0],), generator=gen)
        noise = torch.randn(images.shape, generator=gen).to(self.device, images.dtype)
        t = t.to(self.device)
        loss = self.diffusion.loss(self._with_labels(self.net, labels), images, t, noise)
        loss_ema = self.diffusion.loss(self._with_labels(self.ema.module, labels), images, t, noise)
        losses = {"val/loss": loss, "val/loss_ema": loss_ema}
        self.log_dict(losses, on_epoch=True, prog_bar=True, sync_dist=True)
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        checkpoint["num_classes"] = self.num_classes
        checkpoint["class_names"] = self.class_names
        if self._trainer is not None:
            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger):
                    # so that resuming continues the same W&B run
                    checkpoint["wandb_run_id"] = logger.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is None and "run_config" in checkpoint:
            self.run_config = checkpoint["run_config"]
        # Older checkpoints have neither: unconditional. `num_classes` is the net's (its config
        # rebuilt it); the stored one is for readers of the file alone.
        self.class_names = checkpoint.get("class_names")

    @torch.no_grad()
    def sample_images(
        self,
        num_samples: int,
        sampler: Sampler | None = None,
        seed: int | None = 0,
        batch_size: int | None = None,
        use_ema: bool = True,
        progress: Progress = False,
    ) -> torch.Tensor:
        """`[num_samples, image_channels, image_size, image_size]` in [-1, 1], unconditional, by
        `generation.core.generate_images` (image `i` depends only on `seed`, `sampler` and `i`).
        `sampler`: DDPM over all T steps when None; `seed=None`: a random one."""
        return generate_images(
            self.ema.module if use_ema else self.net,
            self.diffusion,
            DDPM() if sampler is None else sampler,
            range(num_samples),
            random_seed() if seed is None else seed,
            (self.image_channels, self.image_size, self.image_size),
            effective_model_batch(DEFAULT_MODEL_BATCH, num_samples),
            batch_size=batch_size,
            progress=progress,
        )
