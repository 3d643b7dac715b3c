"""Generated images on disk: a run's shards, written as they are made, and `samples.npz`.

`<output_dir>/shards/` holds `manifest.json` (the settings the images depend on: a rerun in the
same folder continues only with the same ones; batch size and device count may change) and one
`shard-<first index>-n<count>.npz` per generated batch (keys `indices` int64 `[n]`, `images`
uint8 `[n, H, W, C]`). Every file is written beside its name and renamed into place, so a killed
run leaves whole shards or none; a shard unreadable all the same (a copy cut short, a foreign
file) is deleted with a warning and its images made again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.files import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_PREFIX = "shard-"
FORMAT = 1  # of the manifest and shards; bump when their meaning changes
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` as an `.npz` atomically, the same bytes for the same arrays: fixed entry dates
    and permissions, no compression (`np.savez` happens to fix the dates, but does not promise)."""

    def write(handle: IO[bytes]) -> None:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        member, np.ascontiguousarray(array), allow_pickle=False
                    )

    atomic_write(path, write)
    return Path(path)


@dataclass
class Plan:
    """What is left to do: the run's seed, the indices still to generate (ascending), and how
    many images were found in how many earlier shards."""

    seed: int
    todo: list[int]
    reused: int
    shards: int


class ShardStore:
    """The shard folder of one run. Only rank 0 writes the manifest, deletes bad shards and
    assembles; every rank writes its own shards. `setting_names`: how the refusal names a
    manifest entry (e.g. the option a user changes it with), where that differs from the entry."""

    def __init__(
        self, folder: str | os.PathLike[str], setting_names: Mapping[str, str] | None = None
    ) -> None:
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST
        self.setting_names = dict(setting_names or {})

    def check_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """`settings`, with an earlier run's recorded seed when `settings["seed"]` is None (a
        random seed is drawn once per run); `UserError` naming those that differ from the manifest.
        """
        wanted = dict(settings)
        try:
            recorded = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return wanted
        except (OSError, ValueError) as err:
            raise UserError(
                f"{self.manifest_path} cannot be read ({err}): it records what the images in "
                f"{self.folder} are; delete the folder to start again, or use another output "
                "folder."
            ) from None
        if wanted.get("seed") is None:
            wanted["seed"] = recorded.get("seed")
        differ = [key for key in wanted if recorded.get(key) != wanted[key]]
        if differ:
            details = "; ".join(
                f"{self.setting_names.get(key, key)}: {_short(recorded.get(key))} then, "
                f"{_short(wanted.get(key))} now"
                for key in differ
            )
            raise UserError(
                f"{self.folder} holds the images of an interrupted run with other settings "
                f"({details}): rerun with that run's settings to continue it, or give another "
                "output folder (a new hydra.run.dir) to start a new one."
            )
        return wanted

    def write_manifest(self, settings: Mapping[str, Any]) -> None:
        """Record `settings` (atomically), unless a manifest is there already."""
        if self.manifest_path.exists():
            return
        text = json.dumps(dict(settings), indent=2, sort_keys=True)
        atomic_write(self.manifest_path, lambda handle: handle.write(text.encode()))

    def write_shard(self, indices: np.ndarray, images: np.ndarray) -> Path:
        """Store one batch: `indices` int `[n]`, `images` uint8 `[n, H, W, C]`."""
        name = f"{SHARD_PREFIX}{int(indices[0]):09d}-n{len(indices)}.npz"
        arrays = {"indices": np.asarray(indices, dtype=np.int64), "images": images}
        return write_npz(self.folder / name, arrays)

    def shard_paths(self) -> list[Path]:
        return sorted(p for p in self.folder.glob(f"{SHARD_PREFIX}*.npz") if p.is_file())

    def valid_shards(
        self, num_samples: int, image_hwc: tuple[int, int, int], delete_bad: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(indices, images)` of every readable shard; an unreadable one is skipped (deleted
        with a warning when `delete_bad`)."""
        for path in self.shard_paths():
            try:
                with np.load(path, allow_pickle=False) as data:
                    if set(data.files) != {"indices", "images"}:
                        raise ValueError(f"entries {sorted(data.files)}, not indices and images")
                    indices, images = data["indices"], data["images"]
                if indices.dtype != np.int64 or indices.ndim != 1:
                    raise ValueError(f"indices of dtype {indices.dtype} and shape {indices.shape}")
                if images.dtype != np.uint8 or images.shape != (len(indices), *image_hwc):
                    raise ValueError(f"images of dtype {images.dtype} and shape {images.shape}")
                if len(indices) and (indices.min() < 0 or indices.max() >= num_samples):
                    raise ValueError(f"indices outside 0..{num_samples - 1}")
            except Exception as err:  # noqa: BLE001 - any unreadable shard is generated again
                if delete_bad:
                    msg = "shard %s is unusable (%s: %s); deleted, its images will be made again."
                    log.warning(msg, path, type(err).__name__, err)
                    path.unlink(missing_ok=True)
                continue
            yield indices, images

    def plan(self, num_samples: int, image_hwc: tuple[int, int, int], seed: int) -> Plan:
        """Scan the shards (deleting bad ones): which of `range(num_samples)` remain."""
        done = np.zeros(num_samples, dtype=bool)
        shards = 0
        for indices, _ in self.valid_shards(num_samples, image_hwc, delete_bad=True):
            done[indices] = True
            shards += 1
        todo, reused = np.flatnonzero(~done).tolist(), int(done.sum())
        if reused:
            msg = "continuing: %d of %d images found in %d shards of %s; generating the other %d"
            log.info(msg, reused, num_samples, shards, self.folder, len(todo))
        return Plan(seed=seed, todo=todo, reused=reused, shards=shards)

    def assemble(self, num_samples: int, image_hwc: tuple[int, int, int]) -> np.ndarray:
        """All `num_samples` images, uint8 `[N, H, W, C]` in index order (an index written twice,
        e.g. by a padded sampler, is the same image: the first wins); `RuntimeError` if some index
        is in no shard (generation did not finish)."""
        images = np.zeros((num_samples, *image_hwc), dtype=np.uint8)
        filled = np.zeros(num_samples, dtype=bool)
        for indices, shard_images in self.valid_shards(num_samples, image_hwc):
            new = ~filled[indices]
            images[indices[new]] = shard_images[new]
            filled[indices] = True
        if not filled.all():
            missing = np.flatnonzero(~filled)
            raise RuntimeError(
                f"{len(missing)} of {num_samples} images are in no shard of {self.folder} "
                f"(e.g. index {int(missing[0])})"
            )
        return images

    def remove(self) -> None:
        """Delete the shards and the manifest (once `samples.npz` and the results are written)."""
        for path in self.shard_paths():
            path.unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (a user's file) or already gone
            self.folder.rmdir()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
