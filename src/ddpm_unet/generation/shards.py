"""Generated images on disk: shard files written as they are made, and `samples.npz`.

A run's shards live in `<output_dir>/shards/`:

* `manifest.json`: what the images are of (checkpoint, number of images, seed, sampler,
  EMA or not, `model_batch`, precision, image shape). A rerun in the same folder continues only
  with the same settings; anything else is refused with a `UserError` naming what differs
  (batch size and the number of devices may change: they do not change the images);
* `shard-<first index>-n<count>.npz`: keys `indices` (int64 `[n]`) and `images` (uint8
  `[n, H, W, C]`), one per generated batch, written beside its name and renamed into place, so
  a killed run leaves whole shards or none. A shard that cannot be read all the same (a copy cut
  short, a foreign file) is deleted with a warning and its images are generated again.

`samples.npz` (key `images`, uint8 `[N, H, W, C]`, sorted by index) and the shards are written
by `write_npz`: atomically, and with every zip entry's date and permissions fixed, so that the
same images give the same bytes whatever the clock (`np.savez` happens to do so too, through
`zipfile`'s default entry date, but does not promise it, nor write atomically).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_PREFIX = "shard-"
FORMAT = 1  # of the manifest and shards; bump when their meaning changes
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold

# Manifest entry -> the config key a user changes it with (named in the refusal).
SETTING_KEYS = {
    "checkpoint": "ckpt_path",
    "num_samples": "num_samples",
    "seed": "seed",
    "sampler": "sampler",
    "use_ema": "use_ema",
    "model_batch": "model_batch",
    "precision": "trainer.precision",
    "image_shape": "ckpt_path",
}


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` as an `.npz` archive (what `np.savez` writes, readable by `np.load`), with
    the same bytes for the same arrays: fixed entry dates and permissions, no compression.
    Atomic: written beside `path`, flushed to disk, then renamed."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for key, array in arrays.items():
                    info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                    info.external_attr = 0o644 << 16
                    with archive.open(info, "w", force_zip64=True) as member:
                        np.lib.format.write_array(
                            member, np.ascontiguousarray(array), allow_pickle=False
                        )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def checkpoint_identity(ckpt_path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a checkpoint file for the manifest: its path, size and modification
    time (a `last.ckpt` overwritten by further training is another checkpoint)."""
    stat = os.stat(ckpt_path)
    path = os.path.realpath(ckpt_path)
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class Plan:
    """What is left to do: the run's seed (drawn once for `seed=null`), the indices still to
    generate (ascending) and how many images were found in earlier shards."""

    seed: int
    todo: list[int]
    reused: int
    shards: int


class ShardStore:
    """The shard folder of one run (module docstring). Only rank 0 writes the manifest, deletes
    bad shards and assembles; every rank writes its own shards."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    # ------------------------------------------------------------------ the manifest
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest of an earlier run in this folder, or None."""
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise UserError(
                f"{self.manifest_path} cannot be read ({err}): it records what the images in "
                f"{self.folder} are; delete the folder to start again, or use another output "
                "folder."
            ) from None

    def check_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """`settings` against the manifest of an earlier run in this folder, if any.

        Returns the settings the run continues with: `settings`, with the earlier run's seed when
        `settings["seed"]` is None (a random seed is drawn once per run and recorded).

        Raises:
            UserError: the folder holds images made with other settings; names them.
        """
        recorded = self.read_manifest()
        if recorded is None:
            return dict(settings)
        wanted = dict(settings)
        if wanted.get("seed") is None:
            wanted["seed"] = recorded.get("seed")
        differ = [key for key in wanted if recorded.get(key) != wanted[key]]
        if differ:
            details = "; ".join(
                f"{SETTING_KEYS.get(key, key)}: {_short(recorded.get(key))} then, "
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
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{MANIFEST}.{os.getpid()}.partial"
        partial.write_text(json.dumps(dict(settings), indent=2, sort_keys=True))
        os.replace(partial, self.manifest_path)

    # ------------------------------------------------------------------ shards
    def write_shard(self, indices: np.ndarray, images: np.ndarray) -> Path:
        """Store one batch: `indices` int `[n]`, `images` uint8 `[n, H, W, C]`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{SHARD_PREFIX}{int(indices[0]):09d}-n{len(indices)}.npz"
        arrays = {"indices": np.asarray(indices, dtype=np.int64), "images": images}
        return write_npz(self.folder / name, arrays)

    def shard_paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{SHARD_PREFIX}*.npz") if p.is_file())

    def _read_shard(
        self, path: Path, num_samples: int, image_hwc: tuple[int, int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(indices, images)` of a shard, checked (raises ValueError and friends if unusable)."""
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
        return indices, images

    def valid_shards(
        self, num_samples: int, image_hwc: tuple[int, int, int], delete_bad: bool = False
    ) -> list[tuple[Path, np.ndarray, np.ndarray]]:
        """`(path, indices, images)` of every readable shard; an unreadable one is skipped
        (deleted with a warning when `delete_bad`)."""
        shards = []
        for path in self.shard_paths():
            try:
                indices, images = self._read_shard(path, num_samples, image_hwc)
            except Exception as err:  # noqa: BLE001 - any unreadable shard is generated again
                if delete_bad:
                    log.warning(
                        "shard %s is unusable (%s: %s); deleted, its images will be generated "
                        "again.",
                        path,
                        type(err).__name__,
                        err,
                    )
                    path.unlink(missing_ok=True)
                continue
            shards.append((path, indices, images))
        return shards

    def plan(self, num_samples: int, image_hwc: tuple[int, int, int], seed: int) -> Plan:
        """Scan the shards (deleting bad ones): which of `range(num_samples)` remain."""
        done = np.zeros(num_samples, dtype=bool)
        shards = self.valid_shards(num_samples, image_hwc, delete_bad=True)
        for _, indices, _ in shards:
            done[indices] = True
        todo = np.flatnonzero(~done).tolist()
        return Plan(seed=seed, todo=todo, reused=int(done.sum()), shards=len(shards))

    def assemble(self, num_samples: int, image_hwc: tuple[int, int, int]) -> np.ndarray:
        """All `num_samples` images, uint8 `[N, H, W, C]` in index order, from the shards
        (an index written twice, e.g. by a padded sampler, is the same image: the first wins).

        Raises:
            RuntimeError: some index is in no shard (generation did not finish).
        """
        images = np.zeros((num_samples, *image_hwc), dtype=np.uint8)
        filled = np.zeros(num_samples, dtype=bool)
        for _, indices, shard_images in self.valid_shards(num_samples, image_hwc):
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
        """Delete the shards and the manifest (after `samples.npz` and the results are written)."""
        for path in self.shard_paths():
            path.unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (a user's file) or already gone
            self.folder.rmdir()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
