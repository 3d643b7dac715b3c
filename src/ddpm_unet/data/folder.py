"""Every PNG/JPEG image under a folder, at any depth, as one dataset.

Unlike torchvision's `ImageFolder`, no class sub-folders are required; with `with_labels` they
are, with its convention: each top-level sub-folder is a class, classes in sorted name order.
Files are listed in sorted path order, so an image's index (and hence the seeded train/val
split) is the same on every machine. Every file is decoded in full at construction, so a damaged
one is skipped with a warning there instead of killing a DataLoader worker mid-epoch
(`is_readable_image`).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ddpm_unet.data.datasets import DatasetNotFoundError
from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # file name endings (any case) that are images
_LISTED_IN_ERRORS = 20  # how many bad paths an error message names before "... and N more"


class CorruptImagesError(UserError):
    """Image files that PIL cannot read; the message names them and the fix."""


def find_image_files(root: Path) -> list[Path]:
    """All image files under `root` (recursively; `IMAGE_EXTENSIONS`), sorted.

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
        # Walk sub-folders in name order: which of two links to one folder is walked (and so
        # names its files) must not depend on the filesystem's listing order.
        dirnames.sort()
        found += [
            Path(dirpath, name) for name in filenames if name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def list_folder_images(root: str | os.PathLike[str]) -> list[Path]:
    """The image files under `root` (`~` expanded), without opening them; `DatasetNotFoundError`
    if `root` is missing, not a folder, or has no image file."""
    root = Path(root).expanduser()
    hint = "Set root to a folder holding PNG/JPEG images (at any depth)."
    if not root.exists():
        raise DatasetNotFoundError(f"Image folder {root.absolute()} does not exist. {hint}")
    if not root.is_dir():
        raise DatasetNotFoundError(f"root={root.absolute()} is not a folder. {hint}")
    files = find_image_files(root)
    if not files:
        raise DatasetNotFoundError(
            f"No image file ({', '.join(IMAGE_EXTENSIONS)}) under {root.absolute()}. {hint}"
        )
    return files


def is_readable_image(path: Path) -> bool:
    """Whether PIL can identify `path`, `verify()` finds no damage, and every pixel decodes
    (`verify()` alone decodes none, so a truncated JPEG passes it). Assumes PIL's
    `ImageFile.LOAD_TRUNCATED_IMAGES` is False (its default): set, it pads truncated files."""
    try:
        with Image.open(path) as image:
            image.verify()  # PNG chunk checksums, which load() does not check
        with Image.open(path) as image:
            # JPEG only (a no-op elsewhere): a 1/8-scale decode still reads and entropy-decodes
            # every byte, so damage is found, in half the time.
            image.draft(image.mode, (1, 1))
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


class ImageFolderDataset(Dataset[Any]):
    """The readable images under `root`, recursively, as PIL images (EXIF rotation applied), or
    with `with_labels` as `(image, class index)`: the classes (`classes`, sorted) are the
    top-level sub-folders holding images, as in torchvision's `ImageFolder`; an image directly
    in `root` is then a `UserError`.

    Up to `max_bad_files` unreadable files (`None`: any number) are skipped with one warning;
    more, or none readable, raise `CorruptImagesError` naming them, as does `__getitem__` for a
    file that changed after set-up. A missing or empty `root`: `DatasetNotFoundError`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bad_files: int | None = None,
        with_labels: bool = False,
    ) -> None:
        candidates = list_folder_images(root)
        self.root = Path(root).expanduser()
        self.classes: list[str] | None = None
        if with_labels:
            tops = [path.relative_to(self.root).parts for path in candidates]
            loose = [path for path, parts in zip(candidates, tops) if len(parts) == 1]
            if loose:
                raise UserError(
                    f"with_labels=True takes each sub-folder of {self.root} as a class, but "
                    f"{len(loose)} image(s) lie directly in it, e.g. {loose[0]}: move them into "
                    "class sub-folders, or train without labels."
                )
            self.classes = sorted({parts[0] for parts in tops})
        # Threads: PIL's decoders release the GIL, so they overlap.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            readable = list(pool.map(is_readable_image, candidates))
        self.files = [path for path, ok in zip(candidates, readable) if ok]
        self.bad_files = [path for path, ok in zip(candidates, readable) if not ok]
        if self.bad_files:
            first = ", ".join(str(p) for p in self.bad_files[:5])
            log.warning(
                f"Skipping {len(self.bad_files)} of {len(candidates)} files under {self.root} "
                f"that PIL cannot read: {first}{' ...' if len(self.bad_files) > 5 else ''}"
            )
        if max_bad_files is not None and len(self.bad_files) > max_bad_files:
            raise CorruptImagesError(
                f"{len(self.bad_files)} of {len(candidates)} files under {self.root} are not "
                f"readable images, more than max_bad_files={max_bad_files}:\n"
                f"{_name_files(self.bad_files)}\n"
                f"Delete or re-export them, or raise max_bad_files to skip them."
            )
        if not self.files:
            raise CorruptImagesError(
                f"None of the {len(candidates)} image files under {self.root} is readable:\n"
                f"{_name_files(self.bad_files)}"
            )
        if self.classes is not None:
            index = {name: i for i, name in enumerate(self.classes)}
            self.targets = [index[path.relative_to(self.root).parts[0]] for path in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image | tuple[Image.Image, int]:
        """Image `index` decoded, in its own mode (L, RGB, RGBA, P, ...), with its class index
        when the dataset has `classes`."""
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so the file is closed when we return
                # Photos often store their rotation in EXIF instead of in the pixels.
                image = ImageOps.exif_transpose(image)
        except Exception as err:
            raise CorruptImagesError(
                f"{path} was readable at set-up but cannot be decoded now ({err}): it changed "
                "during the run; restore, delete or re-export it."
            ) from err
        return image if self.classes is None else (image, self.targets[index])
