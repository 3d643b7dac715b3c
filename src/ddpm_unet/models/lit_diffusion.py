"""The LightningModule: owns the U-Net, the diffusion process, the EMA weights and the optimiser.

The network (`models/unet.py`) and the diffusion maths (`models/diffusion.py`) know nothing of
Lightning; this module wires them into a training loop:

* `train/loss`: the simple epsilon-prediction MSE on random steps and noise;
* `val/loss`: the same loss on steps and noise drawn from a generator seeded per validation batch,
  so the number is comparable between epochs;
* an exponential moving average of the weights (`torch.optim.swa_utils.AveragedModel`), updated
  after every optimiser step, saved in checkpoints and used for sampling;
* AdamW with a linear learning-rate warm-up; gradient clipping comes from the trainer config;
* optional `torch.compile` of the training forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.optim.swa_utils import AveragedModel

from ddpm_unet.models.diffusion import GaussianDiffusion, SamplerName
from ddpm_unet.models.unet import UNet
from ddpm_unet.utils.errors import UserError


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so hyperparameters and checkpoints hold data."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


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


class LRFactor:
    """`LambdaLR` multiplier after `step` optimiser steps: linear warm-up over `warmup` steps,
    then 1, or, with `total`, a half cosine from 1 down to `min_ratio` at step `total`.

    A class, not a closure, so the module pickles (`ddp_spawn`)."""

    def __init__(self, warmup: int, total: int | None = None, min_ratio: float = 0.0) -> None:
        self.warmup = warmup
        self.total = total
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LitDiffusion(L.LightningModule):
    """DDPM training of a `UNet` noise predictor.

    * `net`: `UNet` keyword arguments (`image_channels`, `n_channels`, `ch_mults`, ...)
    * `diffusion`: `GaussianDiffusion` keyword arguments (`num_timesteps`, `schedule`, ...)
    * `image_size`: height and width of the training images (used for sampling)
    * `optimizer`: AdamW keyword arguments (`lr`, `betas`, `weight_decay`, `eps`)
    * `warmup_steps`: linear learning-rate warm-up from 0 over this many optimiser steps
    * `lr_decay`: after the warm-up, `none` keeps the rate constant (DDPM); `cosine` decays it to
      `min_lr_ratio * lr` at the run's last step (`trainer.max_steps` or `max_epochs`)
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
        net: Mapping[str, Any],
        diffusion: Mapping[str, Any] | None = None,
        image_size: int = 32,
        optimizer: Mapping[str, Any] | None = None,
        warmup_steps: int = 0,
        lr_decay: str = "none",
        min_lr_ratio: float = 0.0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        compile: bool = False,
        channels_last: bool = False,
        val_seed: int = 1234,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        net, diffusion, optimizer = _plain(net), _plain(diffusion or {}), _plain(optimizer or {})
        if not 0.0 <= ema_decay < 1.0:
            raise UserError(f"ema_decay={ema_decay} must be in [0, 1), e.g. 0.9999.")
        if warmup_steps < 0:
            raise UserError(f"warmup_steps={warmup_steps} must be >= 0.")
        if lr_decay not in ("none", "cosine"):
            raise UserError(f"lr_decay={lr_decay!r} must be 'none' (DDPM) or 'cosine'.")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1].")
        self.save_hyperparameters(
            {
                "net": net,
                "diffusion": diffusion,
                "image_size": image_size,
                "optimizer": optimizer,
                "warmup_steps": warmup_steps,
                "lr_decay": lr_decay,
                "min_lr_ratio": min_lr_ratio,
                "ema_decay": ema_decay,
                "ema_warmup": ema_warmup,
                "compile": compile,
                "channels_last": channels_last,
                "val_seed": val_seed,
            }
        )
        self.run_config = _plain(run_config)
        self.net = UNet(**net)
        self.diffusion = GaussianDiffusion(**diffusion)
        factor = self.net.downsampling_factor
        if image_size % factor:
            raise UserError(
                f"image_size={image_size} is not divisible by {factor} = 2 ** (len(ch_mults) - 1) "
                f"for ch_mults={list(self.net.ch_mults)}: set data.image_size to a multiple of "
                f"{factor} or use fewer levels in model.net.ch_mults."
            )
        self.image_size = image_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Before the EMA copy is made, so that both hold their weights in the same layout.
        self.net.to(memory_format=self.memory_format)
        self.ema = AveragedModel(
            self.net, multi_avg_fn=EMAUpdate(ema_decay, ema_warmup), use_buffers=True
        )
        # The average is not trained: without this DDP would wait for its gradients.
        self.ema.requires_grad_(False)
        self._compiled_net: Any = None  # set in configure_model when `compile`

    # ----------------------------------------------------------------- set-up
    def configure_model(self) -> None:
        if self.hparams.compile and self._compiled_net is None:
            # Kept out of the module tree (a plain attribute), so checkpoints hold `net.*` only.
            self.__dict__["_compiled_net"] = torch.compile(self.net)

    @property
    def num_parameters(self) -> int:
        """Parameters of the U-Net (the EMA copy not counted)."""
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
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.net)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        batch = self._in_layout(batch)
        # Fixed draws per batch index (made on the CPU, so identical on every device and epoch).
        gen = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (batch.shape[0],), generator=gen)
        noise = torch.randn(batch.shape, generator=gen)
        loss = self.diffusion.loss(
            self.net, batch, t.to(self.device), noise.to(self.device, batch.dtype)
        )
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        opt_kwargs = {
            "lr": 2e-4,
            "betas": (0.9, 0.999),
            "weight_decay": 0.0,
            **self.hparams.optimizer,
        }
        opt_kwargs["betas"] = tuple(opt_kwargs["betas"])
        optimizer = torch.optim.AdamW(self.net.parameters(), **opt_kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor_fn())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def _lr_factor_fn(self) -> LRFactor:
        """The learning-rate multiplier per optimiser step: linear warm-up, then constant (DDPM)
        or a cosine decay to `min_lr_ratio` at the run's last step."""
        warmup = self.hparams.warmup_steps
        if self.hparams.get("lr_decay", "none") == "none":
            return LRFactor(warmup)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserError(
                "model.lr_decay=cosine needs a known run length: set trainer.max_steps or "
                "trainer.max_epochs, or use model.lr_decay=none."
            )
        if total <= warmup:
            raise UserError(
                f"model.lr_decay=cosine decays after the warm-up, but the run has only {total} "
                f"optimiser steps and model.warmup_steps={warmup}: lower the warm-up or train "
                f"longer."
            )
        return LRFactor(warmup, int(total), self.hparams.get("min_lr_ratio", 0.0))

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
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        seed: int | None = 0,
        batch_size: int | None = None,
        use_ema: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate `[num_samples, image_channels, image_size, image_size]` images in [-1, 1].

        Uses the EMA weights unless `use_ema=False`; `seed` fixes the noise (same seed, same
        images for the same `batch_size`); `batch_size` bounds memory (default: all at once).
        """
        model = self.ema.module if use_ema else self.net
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        batch_size = batch_size or num_samples
        shape = (self.net.image_channels, self.image_size, self.image_size)
        chunks = []
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            chunks.append(
                self.diffusion.sample(
                    model, (n, *shape), sampler, steps, eta, generator, progress=progress
                )
            )
        return torch.cat(chunks)
