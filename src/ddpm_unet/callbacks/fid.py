"""FID (and optionally KID) during training with torchmetrics, logged as `val/fid` (`val/kid`).

Every `every_n_epochs` epochs, at the end of validation, each rank adds the features of its share
of the real images (the first time only: `reset_real_features=False`) and of the generated ones
(images `rank::world_size` of one run with `seed`, by `generate_images` as in `sample.py`: the
same images whatever the number of ranks, and at every evaluation); `compute()` sums the states
over the ranks (`sync_on_compute`), so every rank logs the FID of all images.

Design points:

* The InceptionV3 network belongs to this callback and the metrics get a parameter-free
  pass-through (`PrecomputedFeatures`): checkpoints hold no Inception weights (torchmetrics would
  put ~95 MB into the module's `state_dict`), and one forward pass serves FID and KID.
* The metric states are created anew at fit start: with `ddp_spawn` torch moves the CPU tensors
  of the pickled callback into shared memory, and states made before the fit would be one tensor
  all ranks add into (double-counted statistics).
* `val/fid` exists only in evaluation epochs: a `ModelCheckpoint` monitoring it must use the same
  `every_n_epochs` (`configs/callbacks/fid.yaml`), a multiple of
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

from ddpm_unet.generation.core import sample_model
from ddpm_unet.generation.guidance import ModelCalls, check_guidance_scale, resolve_labels
from ddpm_unet.metrics.fidelity import FEATURE_EXTRACTOR, to_rgb, to_uint8
from ddpm_unet.metrics.inception import resolve_inception_weights, verified_weights_copy
from ddpm_unet.metrics.reference_stats import select_indices
from ddpm_unet.models.samplers import DDIM, Sampler, sampler_or_default
from ddpm_unet.utils.errors import UserError, check_whole_numbers

log = logging.getLogger(__name__)

FEATURE_DIMS = (64, 192, 768, 2048)


class PrecomputedFeatures(nn.Identity):
    """The identity with a `num_features` attribute: makes torchmetrics' FID/KID accept features
    `[N, num_features]` computed elsewhere in place of images."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


class FIDCallback(L.Callback):
    """Log `val/fid` (torchmetrics `FrechetInceptionDistance`) every `every_n_epochs` epochs.

    Args:
        every_n_epochs: evaluate at the end of validation of epochs `k * every_n_epochs - 1`
            (a multiple of `trainer.check_val_every_n_epoch`).
        num_samples: generated images per evaluation, over all ranks.
        num_real: real images (a seeded subset of `real_split`; None = all of it).
        real_split: "val" or "train": which split of the DataModule the samples are compared with.
        sampler: a `Sampler` for the generated images (None: DDIM with 25 steps, an estimate
            cheap enough for training; `eval.py` does the full evaluation).
        seed: noise seed of the generated images: every evaluation sees the same noise, so
            changes in FID come from the weights.
        batch_size: generated images sampled at once per rank (bounds sampling memory; does
            not change the images).
        feature: Inception feature layer (64, 192, 768 or 2048; FID is defined on 2048).
        inception_batch_size: images per Inception forward pass.
        compute_kid: also log `val/kid` (KID mean; keeps all features in memory).
        kid_subset_size: KID subset size (clamped to the number of images).
        inception_weights: path of the weights file (see `ddpm_unet.metrics.inception`).
        download: allow downloading the weights into torch.hub's cache when they are missing.
        subset_seed: seed of the choice of `num_real` real images.
        progress: progress bars on rank zero, so a long FID epoch does not look like a hang.
        guidance_scale: classifier-free guidance w for a class-conditional model (its images
            get balanced labels, image i class `i % num_classes`); None: 1 (plain conditional).
            Unconditional models take None only.

    Also logs `val/fid_nfe`, the sampler's counted model calls per image.
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
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__()
        check_whole_numbers(every_n_epochs=every_n_epochs, batch_size=batch_size)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise UserError(f"num_samples={num_samples!r} must be >= 2 (a covariance needs two).")
        if feature not in FEATURE_DIMS:
            raise UserError(f"feature={feature} must be one of {FEATURE_DIMS}.")
        if real_split not in ("train", "val"):
            raise UserError(f"real_split={real_split!r} must be 'train' or 'val'.")
        if guidance_scale is not None:  # whether the model is conditional is known at fit
            check_guidance_scale(guidance_scale, num_classes=1)
        self.guidance_scale = guidance_scale
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_real = num_real
        self.real_split = real_split
        self.sampler = sampler_or_default(sampler, DDIM(steps=25))
        self.seed = seed
        self.batch_size = batch_size
        self.feature = feature
        self.inception_batch_size = inception_batch_size
        self.compute_kid = compute_kid
        self.kid_subset_size = kid_subset_size
        self.subset_seed = subset_seed
        self.progress = progress
        # Resolved now: a missing file stops the run before any training or sampling.
        self.weights_path = resolve_inception_weights(inception_weights, download)
        self.inception: nn.Module | None = None  # built in `setup`, in each process
        self.fid: Any = None  # torchmetrics metrics, created at fit start
        self.kid: Any = None
        self._real_done = False
        self._num_real_total = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_guidance_scale(self.guidance_scale, getattr(pl_module, "num_classes", None))
        if self.inception is None:  # in each process
            self.inception = self._build_inception()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Fresh states in this process (module docstring: ddp_spawn shares pre-existing ones).
        self.reset(pl_module.device)

    def reset(self, device: torch.device | str = "cpu") -> None:
        """Create empty FID (and KID) metrics on `device`; real features are recomputed."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        # Real features are computed once per fit; compute() sums the states of all ranks.
        common: dict[str, Any] = {"reset_real_features": False, "sync_on_compute": True}
        self.fid = FrechetInceptionDistance(PrecomputedFeatures(self.feature), **common).to(device)
        self.kid = None
        if self.compute_kid:
            self.kid = KernelInceptionDistance(
                PrecomputedFeatures(self.feature), subset_size=self.kid_subset_size, **common
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
                # torch-fidelity's resize, so `val/fid` is eval.py's FID on the same images
                # (torchmetrics' default antialiased resize gives other numbers).
                antialias=False,
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        fid, kid, nfe = self.evaluate(trainer, pl_module)
        nfe = None if nfe is None else float(nfe)
        for name, value in (("val/fid", fid), ("val/fid_nfe", nfe), ("val/kid", kid)):
            # Every rank holds the same all-gathered value; sync_dist averages identical numbers,
            # and keeps Lightning from warning about unsynced epoch-level logging under DDP.
            if value is not None:
                pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    @torch.no_grad()
    def _add(
        self, images: torch.Tensor, real: bool, device: torch.device, show: bool = False
    ) -> None:
        """Add the Inception features of uint8 `images` `[N, 1 or 3, H, W]` to the metrics, in
        batches on `device`."""
        assert self.inception is not None
        batches = images.split(self.inception_batch_size)
        for batch in tqdm(batches, desc="FID: generated images' features", disable=not show):
            features = self.inception(to_rgb(batch).to(device)).float()
            for metric in (self.fid, self.kid):
                if metric is not None:
                    metric.update(features, real=real)

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
        """Update the metrics with this rank's images, compute over all ranks, clear the fakes.

        Returns `(fid, kid_mean or None)` as 0-d tensors on the module's device, and the
        sampler's model calls per image (`nfe`).
        """
        device = pl_module.device
        if self.fid is None:
            self.reset(device)
        assert self.inception is not None  # built in `setup`
        self.inception.to(device)  # once per evaluation, not per batch of `_add`
        rank, world = trainer.global_rank, trainer.world_size
        show = self.progress and trainer.is_global_zero
        if self.num_samples < 2 * world:
            raise UserError(
                f"num_samples={self.num_samples} leaves fewer than 2 samples per "
                f"rank on {world} ranks."
            )
        if not self._real_done:  # this rank's share of the real images ([C, H, W] in [-1, 1])
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "reference_dataset"):
                raise TypeError(
                    "FIDCallback needs the trainer's DataModule to have reference_dataset(split) "
                    "(ddpm_unet.data.ImageDataModule has it)."
                )
            dataset = datamodule.reference_dataset(self.real_split)
            indices = select_indices(len(dataset), self.num_real, self.subset_seed)
            self._num_real_total = len(indices)
            real = DataLoader(Subset(dataset, indices[rank::world]), self.inception_batch_size)
            for batch in tqdm(real, desc="FID: real images' features", disable=not show):
                self._add(to_uint8(batch), True, device)
            self._real_done = True

        num_classes = getattr(pl_module, "num_classes", None)
        labels = resolve_labels(None, self.num_samples, num_classes)  # balanced, or None
        calls = ModelCalls()
        images = sample_model(
            pl_module,
            self.num_samples,
            self.sampler,
            seed=self.seed,
            batch_size=self.batch_size,
            progress=show,
            indices=range(rank, self.num_samples, world),  # this rank's share
            labels=None if labels is None else labels[rank::world],
            guidance_scale=check_guidance_scale(self.guidance_scale, num_classes),
            calls=calls,
        )
        self._add(to_uint8(images), False, device, show)

        fid = self.fid.compute().to(device).float()
        kid = None
        if self.kid is not None:
            self.kid.subset_size = min(self.kid_subset_size, self.num_samples, self._num_real_total)
            kid = self.kid.compute()[0].to(device).float()
            self.kid.reset()  # fake features only (reset_real_features=False)
        self.fid.reset()
        log.info(
            "epoch %d: FID %.4f (%s model calls per image)", trainer.current_epoch, fid, calls.nfe
        )
        return fid, kid, calls.nfe
