"""`ImageDataModule`: the LightningDataModule that feeds images to the DDPM.

Every batch is a float tensor `[batch, channels, image_size, image_size]` in [-1, 1], images
only (no labels), so the LightningModule can write `x0 = batch`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ddpm_unet.data.datasets import (
    DATASET_NAMES,
    TORCHVISION_DATASETS,
    DigitsDataset,
    ImageDataset,
    PrecomputedImages,
    build_transform,
    load_torchvision_split,
    random_split_indices,
)
from ddpm_unet.data.folder import ImageFolderDataset, list_folder_images
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.rules import (
    NON_NEGATIVE_INT,
    OPEN_FRACTION,
    POSITIVE_INT,
    SEED,
    Choice,
    Kind,
    Rule,
    check_arguments,
)

log = logging.getLogger(__name__)

DATA_RULES: tuple[Rule | Choice, ...] = (
    Choice("dataset", DATASET_NAMES),
    Rule("image_size", POSITIVE_INT, "32"),
    Rule("image_channels", Kind(True, lambda v: v in (1, 3), "1 (grey) or 3 (RGB)"), "3"),
    Rule("batch_size", POSITIVE_INT, "64"),
    Rule("num_workers", NON_NEGATIVE_INT, "4"),
    Rule("val_fraction", OPEN_FRACTION, "0.05"),
    Rule("seed", SEED, "0"),
    Rule("max_bad_files", NON_NEGATIVE_INT, "10", null_means="skipping any number"),
)
"""`ImageDataModule`'s arguments (the `data` config); checked at construction and by the early
config check."""


def per_device_batch_size(batch_size: int, world_size: int, world: str = "devices x nodes") -> int:
    """Split the global `batch_size` evenly over `world_size` processes (`world` says where that
    number comes from). The one statement of this rule: `setup` and the early config check
    (before the trainer exists) both call it.

    Raises:
        UserError: `batch_size` is not a multiple of `world_size`.
    """
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be at least 1.")
    if batch_size % world_size:
        lower = batch_size // world_size * world_size
        options = f"{lower} or {lower + world_size}" if lower else f"{world_size}"
        raise UserError(
            f"data.batch_size={batch_size} is the global batch size and must be divisible by the "
            f"world size {world_size} ({world}); set data.batch_size to a multiple of "
            f"{world_size}, e.g. {options}, or change the number of devices."
        )
    return batch_size // world_size


class ResumableRandomSampler(Sampler[int]):
    """A shuffle whose order is a function of `(seed, epoch)`, that can start mid-epoch.

    `torch`'s `RandomSampler` draws each epoch's order from the global RNG, so after a resume the
    order differs, and Lightning cannot skip the batches an interrupted epoch already used.
    Here epoch `e` is `randperm(n)` from a generator seeded with `(seed, e)`; `set_epoch` (called
    by Lightning before each epoch) picks the epoch, and `skip` indices are left out of the first
    pass over `skip_epoch` (the rest of an interrupted epoch). No global RNG is drawn from.
    """

    def __init__(
        self, n: int, seed: int, epoch: int = 0, skip: int = 0, skip_epoch: int | None = None
    ) -> None:
        self.n = n
        self.seed = seed
        self.epoch = epoch
        self.skip = skip
        self.skip_epoch = epoch if skip_epoch is None else skip_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """The indices of `epoch`, in order."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self):  # a generator: the order is fixed at the first item, after set_epoch
        start = self.skip if self.epoch == self.skip_epoch else 0
        self.skip = 0
        yield from self.order(self.epoch)[start:]

    def __len__(self) -> int:
        return self.n  # a full epoch: Lightning counts an epoch's batches from it


class ImageDataModule(L.LightningDataModule):
    """Images for DDPM training: `[C, H, W]` float tensors in [-1, 1], no labels.

    Args:
        dataset: one of `digits` (scikit-learn's bundled 8x8 digits, offline), `mnist`,
            `fashion_mnist`, `cifar10`, `celeba` (torchvision's classes), `folder` (every
            PNG/JPEG under `root`, recursively).
        root: where torchvision datasets live or are downloaded to; for `folder`, the image
            folder itself. Ignored by `digits`.
        image_size: side of the square output; sources are resized (shorter side) and centre
            cropped.
        image_channels: 1 (converted to grey) or 3 (converted to RGB).
        batch_size: the GLOBAL batch size; each of the trainer's `world_size` processes loads
            `batch_size // world_size` (`batch_size_per_device`, set in `setup`).
        num_workers: DataLoader worker processes per device (kept alive between epochs if > 0).
        val_fraction: share of images held out for validation, for `digits` and `folder` only
            (seeded random split). `mnist`, `fashion_mnist`, `cifar10` validate on their
            official test split and `celeba` on its official `valid` partition, so every run
            validates on the same images whatever the seed.
        seed: seed of the random train/val split (not of training).
        random_flip: random horizontal flips of training images (never of val or reference
            images); right for CIFAR-10 and faces, wrong for digits.
        download: let torchvision download missing files (in `prepare_data`, rank 0 only). With
            False, missing files raise `DatasetNotFoundError` naming the paths and the fix.
        pin_memory: DataLoader `pin_memory` (faster host-to-GPU copies).
        max_bad_files: `folder` only: how many unreadable files may be skipped (with a warning)
            before setup fails with `CorruptImagesError`; None = any number.

    Validation uses the same transform as training minus the flip. `reference_dataset()` gives
    un-flipped images of either split, e.g. as the real images for FID.
    """

    def __init__(
        self,
        dataset: str,
        root: str | os.PathLike[str] = "data/",
        image_size: int = 32,
        image_channels: int = 3,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        seed: int = 0,
        random_flip: bool = False,
        download: bool = True,
        pin_memory: bool = False,
        max_bad_files: int | None = None,
    ) -> None:
        # Every argument, named as its `data.` config key (self is ignored).
        check_arguments(locals(), DATA_RULES, prefix="data.")
        super().__init__()
        # logger=False: these are data settings, stored in checkpoints but not as run metrics.
        self.save_hyperparameters(logger=False)
        self.dataset = dataset
        self.root = os.fspath(root)
        self.image_size = image_size
        self.image_channels = image_channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.random_flip = random_flip
        self.download = download
        self.pin_memory = pin_memory
        self.max_bad_files = max_bad_files

        # Until setup() knows the world size, assume one process.
        self.world_size = 1
        self.batch_size_per_device = batch_size
        self.train_dataset: ImageDataset | PrecomputedImages | None = None
        self.val_dataset: ImageDataset | PrecomputedImages | None = None
        # (source, indices) per split, kept to build reference datasets with another transform.
        self._sources: dict[str, tuple[Dataset[Any], list[int]]] = {}
        # Data order (see ResumableRandomSampler): its seed, and where a resumed run starts.
        self.sampler_seed: int | None = None
        self._resume: tuple[int, int] = (0, 0)  # (epoch, batches already done in it)

    # ---------------------------------------------------------------------------------------
    # Lightning hooks
    # ---------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Check that the data is there, downloading it if allowed (Lightning calls this on one
        process per node, before `setup`).

        Raises:
            DatasetNotFoundError: files missing (download=False) or folder missing/empty.
            DatasetDownloadError: the download failed (e.g. no network).
        """
        if self.dataset in TORCHVISION_DATASETS:
            # Building the class is torchvision's own (public) check of its files; it reads the
            # train split once more than needed, the price of not calling its private checks.
            load_torchvision_split(self.dataset, self.root, "train", download=self.download)
        elif self.dataset == "folder":
            list_folder_images(self.root)  # cheap existence check; images are verified in setup

    def setup(self, stage: str | None = None) -> None:
        """Compute `batch_size_per_device` from the trainer and build both splits (once).

        Every process builds the same splits: the random split is seeded, the others official.

        Raises:
            UserError: `batch_size` not divisible by the trainer's world size.
            DatasetNotFoundError / CorruptImagesError: see `prepare_data` and `folder`.
        """
        self.world_size = self.trainer.world_size if self.trainer is not None else 1
        self.batch_size_per_device = per_device_batch_size(self.batch_size, self.world_size)
        if self.train_dataset is not None:
            return
        if self.trainer is None:
            # Used on its own (a notebook, the FID script): nobody called prepare_data for us.
            self.prepare_data()
        self._sources = self._build_sources()
        self.train_dataset = self._images("train", flip=self.random_flip)
        self.val_dataset = self._images("val", flip=False)
        log.info(
            "Dataset %r: %d train / %d val images, %d x %d x %d, %d per device x %d device(s).",
            self.dataset,
            len(self.train_dataset),
            len(self.val_dataset),
            self.image_channels,
            self.image_size,
            self.image_size,
            self.batch_size_per_device,
            self.world_size,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches `[batch_size_per_device, C, H, W]`; the last partial batch is
        dropped (uneven batches would weigh some images more), unless that would leave none."""
        train = self._require("train")
        # Under DDP each process sees ~1/world_size of the images.
        drop_last = len(train) // self.world_size >= self.batch_size_per_device
        if not drop_last:
            log.warning(
                "Only %d training images per device for a per-device batch of %d: keeping the "
                "partial batch (drop_last=False).",
                len(train) // self.world_size,
                self.batch_size_per_device,
            )
        if self.world_size > 1:
            # Lightning swaps in a DistributedSampler (order seeded per epoch; a resumed epoch
            # restarts from its first batch).
            return self._loader(train, shuffle=True, drop_last=drop_last)
        if self.sampler_seed is None:
            # The run's seed (seed_everything), so `seed=` changes the order; stored in checkpoints.
            self.sampler_seed = torch.initial_seed() % 2**31
        epoch, batches_done = self._resume
        sampler = ResumableRandomSampler(
            len(train), self.sampler_seed, epoch, skip=batches_done * self.batch_size_per_device
        )
        return self._loader(train, shuffle=False, drop_last=drop_last, sampler=sampler)

    def resume_at(self, epoch: int, batches_done: int, sampler_seed: int | None) -> None:
        """Start training at `batches_done` batches into `epoch`, in the order of `sampler_seed`
        (called by `ddpm_unet.callbacks.ResumeState` when a checkpoint is loaded)."""
        self._resume = (epoch, batches_done)
        if sampler_seed is not None:
            self.sampler_seed = int(sampler_seed)

    def val_dataloader(self) -> DataLoader:
        """Batches `[<= batch_size_per_device, C, H, W]` in a fixed order, all images kept."""
        return self._loader(self._require("val"), shuffle=False, drop_last=False)

    def reference_dataset(self, split: str = "train") -> Dataset:
        """The images of `split` ("train" or "val") as `[C, H, W]` in [-1, 1], never flipped:
        the real images to compare samples with (FID/KID)."""
        if split not in ("train", "val"):
            raise UserError(f"split={split!r} must be 'train' or 'val'.")
        self._require(split)
        return self._images(split, flip=False)

    # ---------------------------------------------------------------------------------------
    # helpers
    # ---------------------------------------------------------------------------------------

    def _build_sources(self) -> dict[str, tuple[Dataset[Any], list[int]]]:
        if self.dataset in TORCHVISION_DATASETS:
            train = load_torchvision_split(self.dataset, self.root, "train")
            val = load_torchvision_split(self.dataset, self.root, "val")
            return {"train": (train, list(range(len(train)))), "val": (val, list(range(len(val))))}
        source: Dataset[Any]
        if self.dataset == "digits":
            source = DigitsDataset()
        else:
            source = ImageFolderDataset(self.root, max_bad_files=self.max_bad_files)
        train_idx, val_idx = random_split_indices(len(source), self.val_fraction, self.seed)
        return {"train": (source, train_idx), "val": (source, val_idx)}

    def _images(self, split: str, flip: bool) -> ImageDataset | PrecomputedImages:
        source, indices = self._sources[split]
        if isinstance(source, DigitsDataset):
            # Small and in memory: transform once instead of per item and epoch.
            fixed = build_transform(self.image_size, self.image_channels, random_flip=False)
            return PrecomputedImages(ImageDataset(source, indices, fixed), random_flip=flip)
        transform = build_transform(self.image_size, self.image_channels, random_flip=flip)
        return ImageDataset(source, indices, transform)

    def _require(self, split: str) -> ImageDataset | PrecomputedImages:
        if self.train_dataset is None:
            self.setup()  # convenience when used without a Trainer
        dataset = self.train_dataset if split == "train" else self.val_dataset
        assert dataset is not None
        return dataset

    def _loader(
        self, dataset: Dataset, shuffle: bool, drop_last: bool, sampler: Sampler | None = None
    ) -> DataLoader:
        generator = None
        if sampler is not None:
            # Worker seeds come from this generator, not from the global RNG, which then only the
            # training steps draw from (what an exact resume restores).
            generator = torch.Generator().manual_seed(sampler.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Re-spawning workers each epoch costs seconds per epoch on small datasets.
            persistent_workers=self.num_workers > 0,
        )
