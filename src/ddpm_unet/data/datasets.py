"""The image sources, the image transform, and clear errors for missing data.

Sources: scikit-learn's bundled 8x8 `digits` (offline); torchvision's classes, through their
public constructors only (they check their own files, and present files never touch the
network); `folder` (`ddpm_unet.data.folder`). Missing files and failed downloads end in an error
naming every expected file with its state and how to get it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

# The names served by torchvision classes (they have an official held-out split).
TORCHVISION_DATASETS: dict[str, type[VisionDataset]] = {
    "mnist": tv_datasets.MNIST,
    "fashion_mnist": tv_datasets.FashionMNIST,
    "cifar10": tv_datasets.CIFAR10,
    "celeba": tv_datasets.CelebA,
}
DATASET_NAMES = ("digits", *TORCHVISION_DATASETS, "folder")  # what `ImageDataModule` accepts
CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


class DatasetNotFoundError(FileNotFoundError, UserError):
    """The dataset's files are missing or corrupt; the message names the paths and the fix."""


class DatasetDownloadError(DatasetNotFoundError):
    """The files were missing and downloading them failed (e.g. no network); see `__cause__`."""


def load_digits_images() -> TensorDataset:
    """scikit-learn's 1797 8x8 handwritten digits: a tensor `[1797, 1, 8, 8]` in [0, 1] and their
    labels `[1797]` (int64, 0..9; `.classes` names them "0".."9").

    The raw values are integers 0..16; they are divided by 16 and kept as float rather than
    rounded to 8-bit, because 16 levels do not map onto 0..255 exactly.
    """
    # Imported here: scikit-learn is only needed for this dataset and is slow to import.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32)  # [1797, 8, 8], 0..16
    dataset = TensorDataset((images / 16.0).unsqueeze(1), torch.from_numpy(digits.target).long())
    dataset.classes = [str(d) for d in range(10)]  # as torchvision's datasets name theirs
    return dataset


class ConvertChannels:
    """Convert a PIL image (any mode: P, RGBA, CMYK, LA, ...) or a `[C, H, W]` tensor (C in 1,
    3) to `channels` (1 = L, 3 = RGB). 16-bit grey PNGs (mode I;16, or I on older Pillow) are
    first scaled to 8 bits: PIL's `convert("L")` would clip them at 255 instead."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.mode = "L" if channels == 1 else "RGB"
        # For tensor inputs (the digits); both leave a tensor that already has `channels` as is.
        self._convert_tensor = v2.Grayscale(1) if channels == 1 else v2.RGB()

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        if not isinstance(image, Image.Image):
            return self._convert_tensor(image)
        if image.mode == self.mode:
            return image
        if image.mode.startswith("I;16"):
            image = image.convert("I")
        if image.mode == "I":
            image = image.point(lambda v: v * (1 / 257))  # 0..65535 -> 0..255, still mode I
        return image.convert(self.mode)

    def __repr__(self) -> str:  # part of the reference-statistics cache key: keep it stable
        return f"{type(self).__name__}(channels={self.channels})"


def build_transform(image_size: int, image_channels: int, random_flip: bool) -> v2.Compose:
    """The transform from a source image to a float tensor `[image_channels, image_size,
    image_size]` in [-1, 1]. Resizing (shorter side, antialiased bilinear: a convex filter, so
    values stay in [0, 1]) happens in float, so a resized image is not rounded back to 8 bits.
    """
    steps: list[Callable[[Any], Any]] = [
        ConvertChannels(image_channels),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize(image_size, antialias=True),
        v2.CenterCrop(image_size),
    ]
    if random_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        v2.Normalize(mean=[0.5] * image_channels, std=[0.5] * image_channels),  # [0,1] -> [-1,1]
        v2.ToPureTensor(),  # plain tensors collate and compute without tv_tensors' subclassing
    ]
    return v2.Compose(steps)


class ImageDataset(Dataset[Any]):
    """`source[indices[i]]` (an image, PIL or `[C, H, W]`, or an `(image, target, ...)` tuple)
    passed through `transform` (e.g. `build_transform(...)`: `[C, H, W]` float in [-1, 1]); with
    `with_labels`, the pair `(image, int(target))`."""

    def __init__(
        self,
        source: Dataset[Any],
        indices: Sequence[int],
        transform: Callable[[Any], torch.Tensor],
        with_labels: bool = False,
    ) -> None:
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        item = self.source[self.indices[index]]
        image = item[0] if isinstance(item, tuple) else item
        if self.with_labels:
            return self.transform(image), int(item[1])
        return self.transform(image)


class PrecomputedImages(Dataset[Any]):
    """A small dataset transformed once, held as one tensor `[N, C, H, W]` in [-1, 1] (and its
    labels `[N]` when `images.with_labels`); only the horizontal flip (`random_flip`,
    probability 0.5) is applied per item. For in-memory sources such as the digits, where the
    per-item pipeline is pure overhead (a fifth of a training step at batch 256 on a CPU)."""

    def __init__(self, images: ImageDataset, random_flip: bool = False) -> None:
        self.source, self.indices = images.source, images.indices  # as ImageDataset has them
        items = [images[i] for i in range(len(images))]
        self.labels: torch.Tensor | None = None
        if images.with_labels:
            items, labels = zip(*items)
            self.labels = torch.tensor(labels, dtype=torch.long)
        self.images = torch.stack(list(items))
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image if self.labels is None else (image, self.labels[index])


def random_split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of `range(n)` into (train, val); `round(n * val_fraction)` (at least 1) go to
    val. The same `(n, val_fraction, seed)` always gives the same split, on every rank."""
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise UserError(
            f"cannot split {n} image(s) into train and val with val_fraction={val_fraction}: "
            f"at least one image must be left for training; add images or lower val_fraction."
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _expected_files(
    cls: type[VisionDataset], root: str
) -> tuple[list[tuple[str, str | None, bool]], str]:
    """What class `cls` checks under `root`, read from its public attributes (file lists,
    checksums, folder names, URLs): `(path, md5 or None, is_dir)` for each, and how to fetch
    them by hand."""
    root = os.path.abspath(root)
    if issubclass(cls, tv_datasets.MNIST):  # FashionMNIST subclasses MNIST
        # `<root>/<class name>/raw`, the documented layout (its `raw_folder` needs an instance).
        # The gunzipped files are checked, without checksums (those are for the .gz archives).
        raw = os.path.join(root, cls.__name__, "raw")
        files = [(os.path.join(raw, os.path.splitext(f)[0]), None, False) for f, _ in cls.resources]
        gz = ", ".join(f for f, _ in cls.resources)
        return files, f"download {gz} from {cls.mirrors[0]} and gunzip them into {raw}"
    folder = os.path.join(root, cls.base_folder)
    if issubclass(cls, tv_datasets.CIFAR10):
        names = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [(os.path.join(folder, name), md5, False) for name, md5 in names], (
            f"download {cls.url} (md5 {cls.tgz_md5}) and extract it inside {root} "
            f"(it creates {cls.base_folder}/)"
        )
    # CelebA accepts the unzipped images only. Its own downloader fetches from Google Drive
    # through `gdown`, which is often refused (daily quota): the manual route usually works.
    files = [
        (os.path.join(folder, name), md5, False)
        for _, md5, name in cls.file_list
        if not name.endswith((".zip", ".7z"))
    ]
    return [*files, (os.path.join(folder, "img_align_celeba"), None, True)], (
        f"download {', '.join(name for _, _, name in cls.file_list)} from the CelebA Google "
        f"Drive linked at {CELEBA_PAGE} into {folder} and unzip img_align_celeba.zip there "
        f"(torchvision needs every annotation file, not only list_eval_partition.txt; its own "
        f"downloader needs the `gdown` package and often hits Google Drive's quota)"
    )


def _not_found_message(cls: type[VisionDataset], root: str, headline: str) -> str:
    files, how_to_get = _expected_files(cls, root)
    lines = [headline, f"Files torchvision.datasets.{cls.__name__} expects:"]
    for path, md5, is_dir in files:
        status = "ok"
        if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
            status = "missing"
        elif md5 is not None and not check_integrity(path, md5):
            status = "checksum mismatch (corrupt, truncated or another version)"
        lines.append(f"  {path}  [{status}]")
    lines.append(
        f"To get them: {how_to_get}; or run with download=True on a machine with network "
        f"access and root={os.path.abspath(root)} (or copy that folder here afterwards)."
    )
    return "\n".join(lines)


def load_torchvision_split(
    name: str, root: str | os.PathLike[str], split: str, download: bool = False
) -> VisionDataset:
    """The torchvision dataset `name`, split `"train"` or `"val"`, items `(PIL image, target)`.

    `val` is the official held-out split: the test set of MNIST, Fashion-MNIST and CIFAR-10, and
    CelebA's `valid` partition. Raises `DatasetNotFoundError` when the files are missing and not
    `download`, `DatasetDownloadError` when the download fails or leaves them wrong. No socket
    timeout is set (`socket.setdefaulttimeout` would change every socket of the process); the
    download is logged first, with the manual way.
    """
    cls, root = TORCHVISION_DATASETS[name], os.fspath(root)
    # CelebA with target_type=[]: no targets are built (items are (image, None)); the class
    # still reads all of its annotation files, which its integrity check requires.
    kwargs: dict[str, Any] = (
        {"split": "train" if split == "train" else "valid", "target_type": []}
        if cls is tv_datasets.CelebA
        else {"train": split == "train"}
    )
    where = os.path.abspath(root)
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError as err:
        if "not found" not in str(err):  # not torchvision's "Dataset not found ...": a bug
            raise
    if not download:
        raise DatasetNotFoundError(
            _not_found_message(
                cls, root, f"Dataset {name!r} not found under {where} and download=False."
            )
        )
    log.info(
        f"Dataset {name!r} not found under {where}: downloading it. If the download stalls, "
        f"stop it and {_expected_files(cls, root)[1]}."
    )
    # Any exception: downloads fail in many ways (URLError, socket errors, MNIST's mirror loop's
    # RuntimeError, gdown missing, a truncated archive, files still failing their check); each
    # ends in the same actionable message, with the original kept as __cause__.
    try:
        return cls(root, download=True, **kwargs)
    except Exception as err:
        raise DatasetDownloadError(
            _not_found_message(
                cls,
                root,
                f"Dataset {name!r} is not under {where} and downloading it failed "
                f"({type(err).__name__}: {err}). This machine may have no network access.",
            )
        ) from err
