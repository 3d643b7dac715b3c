"""FID (and optionally KID) during training with torchmetrics, logged as `val/fid` (`val/kid`).

Every `every_n_epochs` epochs, at the end of validation:

1. the first time only, each rank pushes its share of the real images
   (`datamodule.reference_dataset(real_split)`, indices `rank::world_size`) through InceptionV3
   and into the metrics' real state, which is kept between evaluations
   (`reset_real_features=False`);
2. each rank samples its share of the `num_samples` images from the EMA weights (the images
   `rank::world_size` of one run with `seed`, made by `ddpm_unet.generation.generate_images`
   as in `sample.py` and `eval.py`: the same images whatever the number of ranks, and the same
   ones every time) and adds their features to the fake state;
3. `compute()` sums the states over the ranks (torchmetrics' `sync_on_compute`, an all-gather),
   so every rank gets the FID of all images, and logs it; the fake state is then cleared.

Design points:

* The InceptionV3 network belongs to this callback, not to the LightningModule, and the
  torchmetrics metrics get a parameter-free pass-through as their "feature extractor" with the
  features computed here. So checkpoints hold no Inception weights (torchmetrics would put its
  ~95 MB network into the module's `state_dict`), and one forward pass serves FID and KID.
* The network is torchmetrics' `NoTrainInceptionV3` with `antialias=False`: the TensorFlow-1.x
  compatible resize of torch-fidelity, so `val/fid` equals torch-fidelity's FID on the same images
  (torchmetrics' default antialiased resize gives different numbers).
* The metric states are created anew at fit start. With `ddp_spawn` the callback is pickled into
  the worker processes and torch moves every CPU tensor it holds into shared memory: states
  created before the fit would then be one tensor that all ranks add into, and FID would be
  computed from double-counted statistics.
* The weights file is resolved and checked in the constructor (`resolve_inception_weights`), so
  a missing file, or one that is not InceptionV3 weights, stops the run before training starts,
  not after the first epochs. It is read as data only (`weights_only=True`): torchmetrics loads
  a private copy written from the checked tensors (`verified_weights_copy`), never the file.
* `val/fid` exists only in evaluation epochs: a `ModelCheckpoint` monitoring it must use the same
  `every_n_epochs` (see `configs/callbacks/fid.yaml`), and `every_n_epochs` must be a multiple of
  `trainer.check_val_every_n_epoch` (this hook runs only when validation does).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ddpm_unet.metrics.fidelity import FEATURE_EXTRACTOR, to_rgb, to_uint8
from ddpm_unet.metrics.inception import resolve_inception_weights, verified_weights_copy
from ddpm_unet.metrics.reference_stats import select_indices
from ddpm_unet.models.samplers import DDIM, Sampler, sampler_or_default
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.rules import AT_LEAST_TWO, POSITIVE_INT, Rule, check_arguments

log = logging.getLogger(__name__)

FEATURE_DIMS = (64, 192, 768, 2048)
FID_RULES = (
    Rule("every_n_epochs", POSITIVE_INT, "50"),
    Rule("num_samples", AT_LEAST_TWO, "1000"),  # a covariance needs two images
    Rule("batch_size", POSITIVE_INT, "250"),
)
"""`FIDCallback`'s single-valued arguments (under `callbacks.fid.` in the config)."""


class PrecomputedFeatures(nn.Module):
    """The identity with a `num_features` attribute: makes torchmetrics' FID/KID accept features
    `[N, num_features]` computed elsewhere in place of images."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FIDCallback(L.Callback):
    """Log `val/fid` (torchmetrics `FrechetInceptionDistance`) every `every_n_epochs` epochs.

    Args:
        every_n_epochs: evaluate at the end of validation of epochs `k * every_n_epochs - 1`
            (a multiple of `trainer.check_val_every_n_epoch`).
        num_samples: generated images per evaluation, over all ranks.
        num_real: real images (a seeded subset of `real_split`; None = all of it).
        real_split: "val" or "train": which split of the DataModule the samples are compared with.
        sampler: a `ddpm_unet.models.samplers.Sampler` for the generated images (None: DDIM with
            25 steps, an estimate cheap enough to run during training; `eval.py` does the full
            evaluation).
        seed: noise seed of the generated images (image `i` depends on `seed` and `i` only):
            every evaluation sees the same noise, so changes in FID come from the weights.
        batch_size: images sampled at once per rank.
        feature: Inception feature layer (64, 192, 768 or 2048; FID is defined on 2048).
        inception_batch_size: images per Inception forward.
        compute_kid: also log `val/kid` (KID mean; keeps all features in memory).
        kid_subset_size: KID subset size (clamped to the number of images).
        inception_weights: path of the weights file (see `ddpm_unet.metrics.inception`).
        download: allow downloading the weights into torch.hub's cache when they are missing.
        subset_seed: seed of the choice of `num_real` real images.
        progress: progress bars on rank zero (real features once, then sampling and fake
            features at each evaluation), so a long FID epoch does not look like a hang.
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        num_samples: int = 1000,
        num_real: int | None = None,
        real_split: str = "val",
        sampler: Sampler | None = None,
        seed: int = 0,
        batch_size: int = 250,
        feature: int = 2048,
        inception_batch_size: int = 64,
        compute_kid: bool = False,
        kid_subset_size: int = 1000,
        inception_weights: str | os.PathLike[str] | None = None,
        download: bool = True,
        subset_seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__()
        # Named as their `callbacks.fid.` config keys; the early config check runs them too.
        check_arguments(locals(), FID_RULES, prefix="callbacks.fid.")
        if feature not in FEATURE_DIMS:
            raise UserError(f"callbacks.fid.feature={feature} must be one of {FEATURE_DIMS}.")
        if real_split not in ("train", "val"):
            raise UserError(f"callbacks.fid.real_split={real_split!r} must be 'train' or 'val'.")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_real = num_real
        self.real_split = real_split
        self.sampler = sampler_or_default(sampler, "callbacks.fid.sampler", DDIM(steps=25))
        self.seed = seed
        self.batch_size = batch_size
        self.feature = feature
        self.inception_batch_size = inception_batch_size
        self.compute_kid = compute_kid
        self.kid_subset_size = kid_subset_size
        self.subset_seed = subset_seed
        self.progress = progress
        # Resolved now: a missing file stops the run before any training or sampling.
        self.weights_path = resolve_inception_weights(
            inception_weights,
            download,
            config_key="callbacks.fid.inception_weights",
            download_key="callbacks.fid.download",
        )
        self.inception: nn.Module | None = None  # built in `setup`, in each process
        self.fid: Any = None  # torchmetrics metrics, created at fit start
        self.kid: Any = None
        self._real_done = False
        self._num_real_total = 0
        self.last_value: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.inception is None:
            self.inception = self._build_inception()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Fresh states in this process (module docstring: ddp_spawn shares pre-existing ones).
        self.reset(pl_module.device)

    def reset(self, device: torch.device | str = "cpu") -> None:
        """Create empty FID (and KID) metrics on `device`; real features are recomputed."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.fid = FrechetInceptionDistance(
            feature=PrecomputedFeatures(self.feature),
            reset_real_features=False,  # real features are computed once per fit
            sync_on_compute=True,  # compute() sums the states of all ranks
        ).to(device)
        self.kid = None
        if self.compute_kid:
            self.kid = KernelInceptionDistance(
                feature=PrecomputedFeatures(self.feature),
                subset_size=self.kid_subset_size,
                reset_real_features=False,
                sync_on_compute=True,
            ).to(device)
        self._real_done = False

    def _build_inception(self) -> nn.Module:
        from torchmetrics.image.fid import NoTrainInceptionV3

        # The network unpickles its weights file unrestricted: it gets a private copy written
        # from the checked tensors, never the user's file.
        with verified_weights_copy(self.weights_path) as weights_copy:
            return NoTrainInceptionV3(
                name=FEATURE_EXTRACTOR,
                features_list=[str(self.feature)],
                feature_extractor_weights_path=os.fspath(weights_copy),
                antialias=False,  # torch-fidelity's resize: the same numbers as eval.py
            )

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        fid, kid = self.evaluate(trainer, pl_module)
        # Every rank holds the same all-gathered value; sync_dist averages identical numbers, and
        # keeps Lightning from warning about unsynced epoch-level logging under DDP.
        pl_module.log("val/fid", fid, on_step=False, on_epoch=True, sync_dist=True)
        if kid is not None:
            pl_module.log("val/kid", kid, on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ the work
    @torch.no_grad()
    def features(
        self, images: torch.Tensor, device: torch.device, show: bool = False
    ) -> torch.Tensor:
        """uint8 `[N, 1 or 3, H, W]` -> Inception features `[N, feature]` (float32), in batches."""
        assert self.inception is not None
        self.inception.to(device)
        out = []
        starts = range(0, images.shape[0], self.inception_batch_size)
        for start in tqdm(starts, desc="FID: generated images' features", disable=not show):
            batch = to_rgb(images[start : start + self.inception_batch_size]).to(device)
            out.append(self.inception(batch).float())
        return torch.cat(out)

    def real_images(self, trainer: L.Trainer) -> tuple[Subset, int]:
        """This rank's real images (`[C, H, W]` in [-1, 1]) and the total over all ranks."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "reference_dataset"):
            raise TypeError(
                "FIDCallback needs the trainer's DataModule to have reference_dataset(split) "
                "(ddpm_unet.data.ImageDataModule has it)."
            )
        dataset = datamodule.reference_dataset(self.real_split)
        indices = select_indices(len(dataset), self.num_real, self.subset_seed)
        return Subset(dataset, indices[trainer.global_rank :: trainer.world_size]), len(indices)

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Update the metrics with this rank's images, compute over all ranks, clear the fakes.

        Returns `(fid, kid_mean or None)` as 0-d tensors on the module's device.
        """
        if self.inception is None:
            self.inception = self._build_inception()
        if self.fid is None:
            self.reset(pl_module.device)
        device = pl_module.device
        rank, world = trainer.global_rank, trainer.world_size
        show = self.progress and trainer.is_global_zero
        if self.num_samples < 2 * world:
            raise UserError(
                f"callbacks.fid.num_samples={self.num_samples} leaves fewer than 2 samples per "
                f"rank on {world} ranks."
            )
        if not self._real_done:
            real, self._num_real_total = self.real_images(trainer)
            loader = DataLoader(real, batch_size=self.inception_batch_size, shuffle=False)
            for batch in tqdm(loader, desc="FID: real images' features", disable=not show):
                self._update(self.features(to_uint8(batch), device), real=True)
            self._real_done = True

        images = pl_module.sample_images(
            self.num_samples,
            self.sampler,
            seed=self.seed,
            batch_size=self.batch_size,
            progress=show,
            indices=range(rank, self.num_samples, world),  # this rank's share
        )
        self._update(self.features(to_uint8(images), device, show), real=False)

        fid = self.fid.compute()
        kid = None
        if self.kid is not None:
            self.kid.subset_size = min(self.kid_subset_size, self.num_samples, self._num_real_total)
            kid = self.kid.compute()[0]
            self.kid.reset()  # fake features only (reset_real_features=False)
        self.fid.reset()
        self.last_value = float(fid)
        log.info("epoch %d: FID %.4f", trainer.current_epoch, self.last_value)
        return fid.to(device).float(), None if kid is None else kid.to(device).float()

    def _update(self, features: torch.Tensor, real: bool) -> None:
        self.fid.update(features, real=real)
        if self.kid is not None:
            self.kid.update(features, real=real)
