"""Every PNG/JPEG image under a folder, recursively, as one unlabelled dataset.

Unlike torchvision's `ImageFolder`, no class sub-folders are required: images may sit directly
in the folder or at any depth below it. Files are listed in sorted path order, so the index of an
image (and hence the seeded train/val split) is the same on every machine.

Corrupt files: at construction every candidate file is opened and checked with PIL's
`Image.verify()` (header and, for PNG, chunk checksums; cheap, as it decodes no pixels). Files
that fail are skipped, and one warning is logged with their count and first few paths. If more
than `max_bad_files` fail (`None`: any number may), or none is readable, `CorruptImagesError`
names them. A file that passes `verify()` but still fails to decode later (e.g. a truncated JPEG)
raises `CorruptImagesError` naming it when it is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ddpm_unet.data.datasets import DatasetNotFoundError, resolve_root

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""File name endings (any case) that count as images; everything else is ignored."""

_LISTED_IN_ERRORS = 20  # how many bad paths an error message names before "... and N more"


class CorruptImagesError(ValueError):
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
    """Whether PIL can identify `path` and `verify()` finds no damage (no pixels decoded)."""
    try:
        with Image.open(path) as image:
            image.verify()
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
        for path in candidates:
            (self.files if is_readable_image(path) else self.bad_files).append(path)

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
                f"{path} passed the check at setup but cannot be decoded ({err}); "
                f"delete or re-export it."
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
