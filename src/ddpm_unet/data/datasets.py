"""The underlying image datasets, the image transform, and clear errors for missing data.

Everything here yields single images; `ImageDataset` turns any of them into float tensors
`[channels, height, width]` in [-1, 1], dropping labels (a DDPM is unconditional).

Sources:

* `digits`: scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16), read from
  the scikit-learn package itself, so it works offline.
* `mnist`, `fashion_mnist`, `cifar10`, `celeba`: torchvision's real dataset classes, reading the
  datasets' own on-disk formats, through their public constructors only. A class built with
  `download=False` runs its own integrity check; when that fails (torchvision's "Dataset not
  found" `RuntimeError`), `DatasetNotFoundError` names every expected file with its state and how
  to get it, or, with `data.download=true`, the class is built again with `download=True` (which
  also checks first, so present files never touch the network) and a failed download raises
  `DatasetDownloadError` instead of a bare network traceback.
* `folder`: see `ddpm_unet.data.folder`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "celeba", "folder")
"""Every value `ImageDataModule(dataset=...)` accepts."""

TORCHVISION_DATASETS: dict[str, type[VisionDataset]] = {
    "mnist": tv_datasets.MNIST,
    "fashion_mnist": tv_datasets.FashionMNIST,
    "cifar10": tv_datasets.CIFAR10,
    "celeba": tv_datasets.CelebA,
}
"""The names served by torchvision classes (they have an official held-out split)."""

CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


class DatasetNotFoundError(FileNotFoundError, UserError):
    """The dataset's files are missing or corrupt; the message names the paths and the fix."""


class DatasetDownloadError(DatasetNotFoundError):
    """The files were missing and downloading them failed (e.g. no network); see `__cause__`."""


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


class DigitsDataset(Dataset[torch.Tensor]):
    """scikit-learn's 8x8 handwritten digits as float tensors `[1, 8, 8]` in [0, 1].

    The raw values are integers 0..16; they are divided by 16 and kept as float rather than
    rounded to 8-bit, because 16 levels do not map onto 0..255 exactly.
    """

    def __init__(self) -> None:
        # Imported here: scikit-learn is only needed for this dataset and is slow to import.
        from sklearn.datasets import load_digits

        images = torch.from_numpy(load_digits().images).to(torch.float32)  # [1797, 8, 8], 0..16
        self.images = (images / 16.0).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return image `index` as `[1, 8, 8]` float in [0, 1]."""
        return self.images[index]


# --------------------------------------------------------------------------------------------
# transform and the images-only wrapper
# --------------------------------------------------------------------------------------------


class ConvertChannels:
    """Convert a PIL image or a `[C, H, W]` tensor (C in 1, 3) to `channels` (1 = L, 3 = RGB).

    PIL images go through `Image.convert`, which handles every mode a folder may contain (P with
    a palette, RGBA (alpha is dropped), CMYK, LA). 16-bit grey PNGs (mode I;16, or I on older
    Pillow) are first scaled to 8 bits: PIL's `convert("L")` would clip them at 255 instead.
    """

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.mode = "L" if channels == 1 else "RGB"
        # For tensor inputs (the digits); both leave a tensor that already has `channels` as is.
        self._convert_tensor = v2.Grayscale(1) if channels == 1 else v2.RGB()

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        if isinstance(image, Image.Image):
            if image.mode == self.mode:
                return image
            if image.mode.startswith("I;16"):
                image = image.convert("I")
            if image.mode == "I":
                image = image.point(lambda v: v * (1 / 257))  # 0..65535 -> 0..255, still mode I
            return image.convert(self.mode)
        return self._convert_tensor(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


def build_transform(image_size: int, image_channels: int, random_flip: bool) -> v2.Compose:
    """The transform from a source image to a float tensor `[image_channels, image_size,
    image_size]` in [-1, 1].

    Steps: channel conversion (L or RGB), to float in [0, 1], resize so the shorter side is
    `image_size` (bilinear with antialiasing: a convex filter, so values stay in [0, 1]), centre
    crop to a square, optional horizontal flip, then `x * 2 - 1`. Resizing happens in float so a
    resized image is not rounded back to 8 bits.
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


class ImageDataset(Dataset[torch.Tensor]):
    """Images only: `source[indices[i]]`, label dropped, passed through `transform`.

    Args:
        source: a dataset whose items are images (PIL or `[C, H, W]` tensors) or `(image, ...)`
            tuples, as torchvision's classes return.
        indices: which items of `source` belong to this split.
        transform: e.g. `build_transform(...)`; returns `[C, H, W]` float in [-1, 1].
    """

    def __init__(
        self,
        source: Dataset[Any],
        indices: Sequence[int],
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.source = source
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return one image `[C, H, W]`, float32 in [-1, 1]."""
        item = self.source[self.indices[index]]
        if isinstance(item, tuple):  # torchvision's (image, target): a DDPM needs only the image
            item = item[0]
        return self.transform(item)


class PrecomputedImages(Dataset[torch.Tensor]):
    """A small dataset transformed once, held as one tensor `[N, C, H, W]` in [-1, 1].

    For in-memory sources such as the digits, where running the per-image transform pipeline on
    every item of every batch is pure overhead (about a fifth of a training step at batch 256 on a
    CPU, for the same tensors every epoch). The deterministic part of the transform runs once
    here; the only random step, the horizontal flip, is applied per item (probability 0.5) when
    `random_flip`.
    """

    def __init__(self, images: ImageDataset, random_flip: bool = False) -> None:
        self.source, self.indices = images.source, images.indices  # as ImageDataset has them
        self.images = torch.stack([images[i] for i in range(len(images))])
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return one image `[C, H, W]`, float32 in [-1, 1] (mirrored half of the time with
        `random_flip`)."""
        image = self.images[index]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image


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


# --------------------------------------------------------------------------------------------
# torchvision datasets: their own check, guarded download, clear messages
# --------------------------------------------------------------------------------------------


def _mnist_raw_folder(cls: type[VisionDataset], root: str) -> str:
    """`<root>/<class name>/raw`: where the MNIST classes keep their files (their documented
    layout; the class's `raw_folder` property needs an instance, which missing files prevent)."""
    return os.path.join(root, cls.__name__, "raw")


def _expected_files(cls: type[VisionDataset], root: str) -> list[tuple[str, str | None, bool]]:
    """`(path, md5 or None, is_dir)` for every file class `cls` checks under `root`, read from
    the class's public attributes (its file lists, checksums and folder names)."""
    if issubclass(cls, tv_datasets.MNIST):  # FashionMNIST subclasses MNIST
        # It checks the gunzipped files, without checksums (those are for the .gz archives).
        raw = _mnist_raw_folder(cls, root)
        return [(os.path.join(raw, os.path.splitext(f)[0]), None, False) for f, _ in cls.resources]
    folder = os.path.join(root, cls.base_folder)
    if issubclass(cls, tv_datasets.CIFAR10):
        files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [(os.path.join(folder, name), md5, False) for name, md5 in files]
    if issubclass(cls, tv_datasets.CelebA):
        expected: list[tuple[str, str | None, bool]] = [
            (os.path.join(folder, name), md5, False)
            for _, md5, name in cls.file_list
            if not name.endswith((".zip", ".7z"))  # the class accepts the unzipped images only
        ]
        expected.append((os.path.join(folder, "img_align_celeba"), None, True))
        return expected
    raise TypeError(f"no file list for {cls.__name__}")


def _file_status(path: str, md5: str | None, is_dir: bool) -> str:
    if is_dir:
        return "ok" if os.path.isdir(path) else "missing"
    if not os.path.isfile(path):
        return "missing"
    if md5 is not None and not check_integrity(path, md5):
        return "checksum mismatch (corrupt, truncated or another version)"
    return "ok"


def _how_to_get(cls: type[VisionDataset], root: str) -> str:
    """Instructions for fetching the dataset by hand, built from the class's own URLs."""
    root = os.path.abspath(root)
    if issubclass(cls, tv_datasets.MNIST):
        gz = ", ".join(f for f, _ in cls.resources)
        raw = _mnist_raw_folder(cls, root)
        return f"download {gz} from {cls.mirrors[0]} and gunzip them into {raw}"
    if issubclass(cls, tv_datasets.CIFAR10):
        return (
            f"download {cls.url} (md5 {cls.tgz_md5}) and extract it inside {root} "
            f"(it creates {cls.base_folder}/)"
        )
    # CelebA: torchvision downloads it from Google Drive through `gdown`, which is often refused
    # (daily quota), so the manual route is the one that usually works.
    names = ", ".join(name for _, _, name in cls.file_list)
    return (
        f"download {names} from the CelebA Google Drive linked at {CELEBA_PAGE} into "
        f"{os.path.join(root, cls.base_folder)} and unzip img_align_celeba.zip there "
        f"(torchvision needs every annotation file, not only list_eval_partition.txt; its own "
        f"downloader needs the `gdown` package and often hits Google Drive's quota)"
    )


def _not_found_message(cls: type[VisionDataset], root: str, headline: str) -> str:
    lines = [
        headline,
        f"Files torchvision.datasets.{cls.__name__} expects:",
        *(
            f"  {os.path.abspath(path)}  [{_file_status(path, md5, is_dir)}]"
            for path, md5, is_dir in _expected_files(cls, root)
        ),
        f"To get them: {_how_to_get(cls, root)}; or run with data.download=true on a machine "
        f"with network access and data.root={os.path.abspath(root)} (or copy that folder "
        f"here afterwards).",
    ]
    return "\n".join(lines)


def load_torchvision_split(
    name: str, root: str | os.PathLike[str], split: str, download: bool = False
) -> VisionDataset:
    """The torchvision dataset `name`, split `"train"` or `"val"`, items `(PIL image, target)`.

    `val` is the official held-out split: the test set of MNIST, Fashion-MNIST and CIFAR-10, and
    CelebA's `valid` partition (its `test` partition is left unused). The class's constructor
    checks the files (and, for CIFAR-10 and CelebA, their checksums) itself; only when that check
    fails and `download` is set does it download.

    No socket timeout is set for the download: torchvision's downloader takes none, and the only
    other way, `socket.setdefaulttimeout`, would change every socket of the process (loggers'
    threads included). The download is logged first, with the way to fetch the files by hand.

    Raises:
        DatasetNotFoundError: the files are missing or fail their checksum, and not `download`.
        DatasetDownloadError: the download raised (no network, HTTP error, quota, bad archive),
            or the files are still wrong after it.
    """
    if split not in ("train", "val"):
        raise UserError(f"split={split!r} must be 'train' or 'val'.")
    cls = TORCHVISION_DATASETS[name]
    root = os.fspath(root)
    if cls is tv_datasets.CelebA:
        # target_type=[]: no targets are built (items are (image, None)); the class still reads
        # all of its annotation files, which its integrity check requires.
        kwargs: dict[str, Any] = {"split": "train" if split == "train" else "valid"}
        kwargs["target_type"] = []
    else:
        kwargs = {"train": split == "train"}
    where = os.path.abspath(root)
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError as err:
        if "not found" not in str(err):  # not torchvision's "Dataset not found ...": a bug
            raise
    if not download:
        raise DatasetNotFoundError(
            _not_found_message(
                cls, root, f"Dataset {name!r} not found under {where} and data.download=false."
            )
        )
    log.info(
        "Dataset %r not found under %s: downloading it. If the download stalls, stop it and %s.",
        name,
        where,
        _how_to_get(cls, root),
    )
    # Any exception: downloads fail in many ways (URLError, socket errors, HTTP errors wrapped in
    # RuntimeError by the MNIST mirror loop, gdown missing, a truncated archive, the files still
    # failing their check), and each should end in the same actionable message, with the
    # original kept as __cause__.
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


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """`root` with `~` expanded (Hydra passes strings through unexpanded)."""
    return Path(os.path.expanduser(os.fspath(root)))
