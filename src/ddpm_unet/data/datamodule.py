"""`ImageDataModule`: the LightningDataModule that feeds images to the DDPM.

Every batch is a float tensor `[batch, channels, image_size, image_size]` in [-1, 1], or with
`with_labels` the pair `(images, labels [batch] int64)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ddpm_unet.data.datasets import (
    DATASET_NAMES,
    TORCHVISION_DATASETS,
    ImageDataset,
    PrecomputedImages,
    build_transform,
    load_digits_images,
    load_torchvision_split,
    random_split_indices,
)
from ddpm_unet.data.folder import ImageFolderDataset, list_folder_images
from ddpm_unet.utils.errors import UserError, check_whole_numbers

log = logging.getLogger(__name__)


def per_device_batch_size(batch_size: int, world_size: int) -> int:
    """The global `batch_size` split evenly over `world_size` processes; a `UserError` if it does
    not divide."""
    if batch_size % world_size:
        lower = batch_size // world_size * world_size
        options = f"{lower} or {lower + world_size}" if lower else f"{world_size}"
        raise UserError(
            f"batch_size={batch_size} is the global batch size and must be divisible by the "
            f"world size {world_size} (devices x nodes); set batch_size to a multiple of "
            f"{world_size}, e.g. {options}, or change the number of devices."
        )
    return batch_size // world_size


class ResumableRandomSampler(Sampler[int]):
    """A shuffle whose order is a function of `(seed, epoch)`, that can start mid-epoch.

    `torch`'s `RandomSampler` draws each epoch's order from the global RNG, so after a resume the
    order differs. Here epoch `e` is `randperm(n)` seeded with `(seed, e)` (`set_epoch`, called
    by Lightning, picks `e`), and the first pass over the starting `epoch` leaves out its first
    `skip` indices (those an interrupted epoch already used).
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip
        self.skip_epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # a generator: the order is fixed at the first item, after set_epoch
        start = self.skip if self.epoch == self.skip_epoch else 0
        self.skip = 0
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.n, generator=gen).tolist()[start:]

    def __len__(self) -> int:
        return self.n  # a full epoch: Lightning counts an epoch's batches from it


class ImageDataModule(L.LightningDataModule):
    """Images for DDPM training: `[C, H, W]` float tensors in [-1, 1], with labels if asked.

    Args:
        dataset: one of `DATASET_NAMES`: `digits` (scikit-learn's bundled 8x8 digits, offline),
            torchvision's `mnist`, `fashion_mnist`, `cifar10`, `celeba`, or `folder` (every
            PNG/JPEG under `root`, at any depth).
        root: where torchvision datasets live or are downloaded to; for `folder`, the image
            folder itself. Ignored by `digits`.
        image_size: side of the square output (shorter side resized, centre cropped).
        image_channels: 1 (converted to grey) or 3 (converted to RGB).
        batch_size: the GLOBAL batch size; each of the trainer's `world_size` processes loads
            `batch_size // world_size` (`batch_size_per_device`, set in `setup`).
        num_workers: DataLoader worker processes per device (kept alive between epochs if > 0).
        val_fraction: share of images held out for validation (seeded random split), for
            `digits` and `folder` only; torchvision datasets use their official held-out split.
        seed: seed of the random train/val split (not of training).
        random_flip: random horizontal flips of training images (never of val or reference
            images); right for CIFAR-10 and faces, wrong for digits.
        download: let torchvision download missing files (in `prepare_data`, rank 0 only); else
            missing files raise `DatasetNotFoundError`.
        pin_memory: DataLoader `pin_memory` (faster host-to-GPU copies).
        max_bad_files: `folder` only: how many unreadable files may be skipped (with a warning)
            before setup fails with `CorruptImagesError`; None = any number.
        with_labels: yield `(images, labels)` batches, labels int64 `[batch]` class indices:
            the datasets' targets, or for `folder` the sorted top-level sub-folder names (as
            torchvision's `ImageFolder`). `class_names` and `num_classes` are set in `setup`.
            `celeba` has no classes.

    The arguments are kept in `self.hparams` (and in checkpoints). Validation and
    `reference_dataset()` (the real images for FID) use the training transform minus the flip.
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
        with_labels: bool = False,
    ) -> None:
        if dataset not in DATASET_NAMES:
            raise UserError(
                f"dataset={dataset!r} is unknown: use one of {', '.join(DATASET_NAMES)}."
            )
        if with_labels and dataset == "celeba":
            raise UserError(
                "with_labels=True, but dataset='celeba' has no classes: train it unconditionally "
                "(with_labels=False), or use a dataset with labels (a folder of class sub-folders)."
            )
        check_whole_numbers(image_size=image_size, batch_size=batch_size)
        check_whole_numbers(0, num_workers=num_workers, seed=seed)
        if max_bad_files is not None:
            check_whole_numbers(0, max_bad_files=max_bad_files)
        if image_channels not in (1, 3) or isinstance(image_channels, bool):
            raise UserError(f"image_channels={image_channels!r} must be 1 (grey) or 3 (RGB).")
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, int | float)
            or not (0 < val_fraction < 1)
        ):
            raise UserError(f"val_fraction={val_fraction!r} must be a number between 0 and 1.")
        super().__init__()
        # logger=False: these are data settings, stored in checkpoints but not as run metrics.
        self.save_hyperparameters(logger=False)
        self.world_size = 1  # until setup() knows it
        self.batch_size_per_device = batch_size
        self.train_dataset: ImageDataset | PrecomputedImages | None = None
        self.val_dataset: ImageDataset | PrecomputedImages | None = None
        # (source, indices) per split, kept to build reference datasets with another transform.
        self._sources: dict[str, tuple[Dataset[Any], Sequence[int]]] = {}
        # Data order (see ResumableRandomSampler): its seed, and where a resumed run starts.
        self.sampler_seed: int | None = None
        self._resume: tuple[int, int] = (0, 0)  # (epoch, batches already done in it)
        self.with_labels = with_labels
        self.class_names: list[str] | None = None  # index -> name, set in setup if with_labels

    @property
    def num_classes(self) -> int | None:
        """The number of classes the labels index (None without labels, or before `setup`)."""
        return None if self.class_names is None else len(self.class_names)

    def prepare_data(self) -> None:
        """Check that the data is there, downloading it if allowed (Lightning calls this on one
        process per node, before `setup`); `DatasetNotFoundError` / `DatasetDownloadError` if
        not."""
        hp = self.hparams
        if hp.dataset in TORCHVISION_DATASETS:
            # Building the class is torchvision's own (public) check of its files; it reads the
            # train split once more than needed, the price of not calling its private checks.
            load_torchvision_split(hp.dataset, hp.root, "train", download=hp.download)
        elif hp.dataset == "folder":
            list_folder_images(hp.root)  # cheap existence check; images are verified in setup

    def setup(self, stage: str | None = None) -> None:
        """Compute `batch_size_per_device` from the trainer (`UserError` if the world size does
        not divide `batch_size`) and build both splits, once. Every process builds the same
        splits: the random split is seeded, the others official."""
        hp = self.hparams
        self.world_size = self.trainer.world_size if self.trainer is not None else 1
        self.batch_size_per_device = per_device_batch_size(hp.batch_size, self.world_size)
        if self.train_dataset is not None:
            return
        if self.trainer is None:
            # Used on its own (a notebook, the FID script): nobody called prepare_data for us.
            self.prepare_data()
        if hp.dataset in TORCHVISION_DATASETS:
            train = load_torchvision_split(hp.dataset, hp.root, "train")
            val = load_torchvision_split(hp.dataset, hp.root, "val")
            self._sources = {"train": (train, range(len(train))), "val": (val, range(len(val)))}
        else:
            source = (
                load_digits_images()
                if hp.dataset == "digits"
                else ImageFolderDataset(hp.root, hp.max_bad_files, with_labels=hp.with_labels)
            )
            train_idx, val_idx = random_split_indices(len(source), hp.val_fraction, hp.seed)
            self._sources = {"train": (source, train_idx), "val": (source, val_idx)}
        if hp.with_labels:  # torchvision's datasets, the digits and folders name theirs
            self.class_names = [str(name) for name in self._sources["train"][0].classes]
        self.train_dataset = self._images("train", flip=hp.random_flip, labels=hp.with_labels)
        self.val_dataset = self._images("val", flip=False, labels=hp.with_labels)
        log.info(
            f"Dataset {hp.dataset!r}: {len(self.train_dataset)} train / {len(self.val_dataset)} "
            f"val images, {hp.image_channels} x {hp.image_size} x {hp.image_size}, "
            f"{self.batch_size_per_device} per device x {self.world_size} device(s)."
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches `[batch_size_per_device, C, H, W]`; the last partial batch is
        dropped (uneven batches would weigh some images more), unless that would leave none."""
        train = self._require("train")
        per_device = len(train) // self.world_size  # under DDP, each process's share
        drop_last = per_device >= self.batch_size_per_device
        if not drop_last:
            log.warning(
                f"Only {per_device} training images per device for a per-device batch of "
                f"{self.batch_size_per_device}: keeping the partial batch (drop_last=False)."
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
        return self._images(split, flip=False, labels=False)

    def _images(self, split: str, flip: bool, labels: bool) -> ImageDataset | PrecomputedImages:
        source, indices = self._sources[split]
        size, channels = self.hparams.image_size, self.hparams.image_channels
        if isinstance(source, TensorDataset):
            # The digits, small and in memory: transform once instead of per item and epoch.
            fixed = ImageDataset(source, indices, build_transform(size, channels, False), labels)
            return PrecomputedImages(fixed, random_flip=flip)
        return ImageDataset(source, indices, build_transform(size, channels, flip), labels)

    def _require(self, split: str) -> ImageDataset | PrecomputedImages:
        if self.train_dataset is None:
            self.setup()  # convenience when used without a Trainer
        return self.train_dataset if split == "train" else self.val_dataset

    def _loader(
        self, dataset: Dataset, shuffle: bool, drop_last: bool, sampler: Sampler | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            shuffle=shuffle,
            sampler=sampler,
            # Worker seeds come from this generator, not from the global RNG, which then only
            # the training steps draw from (what an exact resume restores).
            generator=torch.Generator().manual_seed(sampler.seed) if sampler is not None else None,
            drop_last=drop_last,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            # Re-spawning workers each epoch costs seconds per epoch on small datasets.
            persistent_workers=self.hparams.num_workers > 0,
        )
