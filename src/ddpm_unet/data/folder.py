"""Every PNG/JPEG image under a folder, recursively, as one unlabelled dataset.

Unlike torchvision's `ImageFolder`, no class sub-folders are required: images may sit directly
in the folder or at any depth below it. Files are listed in sorted path order, so the index of an
image (and hence the seeded train/val split) is the same on every machine.

Corrupt files: at construction every candidate file is checked with PIL's `Image.verify()`
(header and, for PNG, chunk checksums) and then decoded in full (`load()`), in a few threads.
`verify()` alone decodes no pixels, so a truncated JPEG passes it and would only fail when a
DataLoader worker reads it, mid-epoch, as a worker traceback. Files that fail are skipped, and
one warning is logged with their count and first few paths. If more than `max_bad_files` fail
(`None`: any number may), or none is readable, `CorruptImagesError` names them. A file that
changes after set-up and then fails to decode raises `CorruptImagesError` naming it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ddpm_unet.data.datasets import DatasetNotFoundError, resolve_root
from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File name endings (any case) that count as images; everything else is ignored."""

_LISTED_IN_ERRORS = 20  # how many bad paths an error message names before "... and N more"
# Threads decoding files at set-up: PIL's decoders release the GIL, so threads overlap.
_CHECK_THREADS = min(8, os.cpu_count() or 1)


class CorruptImagesError(UserError):
    """Image files that PIL cannot read; the message names them and the fix."""


def find_image_files(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files under `root` (recursively) whose name ends in one of `extensions`, sorted.

    Symlinked sub-folders are followed (datasets are often assembled from links), each real
    folder once, so a link cycle cannot make the walk run forever.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []  # already walked through another link: do not descend again
            continue
        seen.add(real)
        dirnames.sort()
        found.extend(Path(dirpath, name) for name in filenames if name.lower().endswith(extensions))
    return sorted(found)


def is_readable_image(path: Path) -> bool:
    """Whether PIL can identify `path`, `verify()` finds no damage, and every pixel decodes.

    JPEGs are decoded at reduced scale (`draft`): every byte of the file is still read and
    entropy-decoded, so truncation and corrupt data are found, in about half the time. Assumes
    PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` is False (its default): when some other code sets it,
    PIL pads truncated files with grey and they pass.
    """
    try:
        with Image.open(path) as image:
            image.verify()  # PNG chunk checksums, which load() does not check
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))  # JPEG only (a no-op elsewhere): 1/8-scale decode
            image.load()
    # Any exception: PIL reports damage as OSError, SyntaxError, ValueError, struct.error or
    # DecompressionBombError depending on the format; all mean "not usable as training data".
    except Exception:
        return False
    return True


def _name_files(paths: list[Path]) -> str:
    shown = "\n".join(f"  {p}" for p in paths[:_LISTED_IN_ERRORS])
    more = len(paths) - _LISTED_IN_ERRORS
    return shown + (f"\n  ... and {more} more" if more > 0 else "")


class ImageFolderDataset(Dataset[Image.Image]):
    """The readable images under `root`, recursively, as PIL images (EXIF rotation applied).

    Args:
        root: the folder to scan.
        max_bad_files: how many unreadable files may be skipped before construction fails;
            `None` skips any number (a warning still counts them), `0` fails on the first.
        extensions: file name endings that count as images.

    Raises:
        DatasetNotFoundError: `root` does not exist, is not a folder, or holds no image file.
        CorruptImagesError: more than `max_bad_files` files are unreadable, or none is readable.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bad_files: int | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = resolve_root(root)
        candidates = list_folder_images(self.root, extensions)
        self.files: list[Path] = []
        self.bad_files: list[Path] = []
        with ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
            readable = list(pool.map(is_readable_image, candidates))
        for path, ok in zip(candidates, readable, strict=True):
            (self.files if ok else self.bad_files).append(path)

        if self.bad_files:
            log.warning(
                "Skipping %d of %d files under %s that PIL cannot read: %s%s",
                len(self.bad_files),
                len(candidates),
                self.root,
                ", ".join(str(p) for p in self.bad_files[:5]),
                " ..." if len(self.bad_files) > 5 else "",
            )
        if max_bad_files is not None and len(self.bad_files) > max_bad_files:
            raise CorruptImagesError(
                f"{len(self.bad_files)} of {len(candidates)} files under {self.root} are not "
                f"readable images, more than data.max_bad_files={max_bad_files}:\n"
                f"{_name_files(self.bad_files)}\n"
                f"Delete or re-export them, or raise data.max_bad_files to skip them."
            )
        if not self.files:
            raise CorruptImagesError(
                f"None of the {len(candidates)} image files under {self.root} is readable:\n"
                f"{_name_files(self.bad_files)}"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        """Return image `index` decoded, in its own mode (L, RGB, RGBA, P, ...)."""
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so the file is closed when we return
                # Photos often store their rotation in EXIF instead of in the pixels.
                return ImageOps.exif_transpose(image)
        except Exception as err:
            raise CorruptImagesError(
                f"{path} was readable at set-up but cannot be decoded now ({err}): it changed "
                "during the run; restore, delete or re-export it."
            ) from err


def list_folder_images(
    root: str | os.PathLike[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> list[Path]:
    """The image files under `root` (see `find_image_files`), without opening them.

    Raises:
        DatasetNotFoundError: `root` is missing, not a folder, or has no file with `extensions`.
    """
    root = resolve_root(root)
    hint = "Set data.root to a folder holding PNG/JPEG images (at any depth)."
    if not root.exists():
        raise DatasetNotFoundError(f"Image folder {root.absolute()} does not exist. {hint}")
    if not root.is_dir():
        raise DatasetNotFoundError(f"data.root={root.absolute()} is not a folder. {hint}")
    files = find_image_files(root, extensions)
    if not files:
        raise DatasetNotFoundError(
            f"No image file ({', '.join(extensions)}) under {root.absolute()}. {hint}"
        )
    return files
