"""The real images of FID/KID, and the cache of their Inception features.

The reference side of FID is the same for every evaluation of every checkpoint trained on one
dataset, and on a CPU it is the slow side (50,000 CIFAR-10 images through InceptionV3). So its
features are computed once and cached: files `<name>-inception-v3-compat-features-<layer>.npz`
(key `tensor`, float `[N, D]`) and `<name>-inception-v3-compat-stat-fid-<layer>.npz` (keys `mu`
`[D]`, `sigma` `[D, D]`), torch-fidelity's cache entries under its own names.

The cache folder is data, never code: torch-fidelity unpickles its cache files without
restriction, so it never sees the folder. Entries are `.npz` files read with
`np.load(allow_pickle=False)` (numbers only); `torch_fidelity_cache` copies the valid ones into a
private folder that torch-fidelity uses as its `cache_root` for one call, and stores what it
computed there back as `.npz`. An unreadable entry (empty, truncated, damaged, pickled objects,
unexpected arrays) is deleted with one warning naming it and recomputed; `validate_reference_cache`
does this check before the (slow) sampling of `eval.py`.

The cache name has to change whenever the statistics would:

    <dataset>-<split>-<size>px-<channels>ch-n<number of images>-<12 hex digits>

The readable part says what the statistics are of; the hash covers everything else that changes
them: the data settings that select or transform images (`val_fraction` and `seed` of random
splits, `max_bad_files`), the transform itself (its `repr`, so a changed resize shows), the
subset seed, the source files (the list of files with sizes and modification times for image
folders; torchvision's datasets are fixed by the checksums torchvision verifies, digits by the
scikit-learn version), the SHA-256 of the Inception weights file, the torch-fidelity version and
the uint8 conversion. The inputs of the hash are written next to the cache files as
`<name>.json`, so a cache directory can be read by a person.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_unet.metrics.fidelity import FEATURE_EXTRACTOR, UInt8RGBView
from ddpm_unet.metrics.inception import weights_fingerprint
from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".npz"
"""Cache entries are numpy archives: numbers only, nothing to unpickle."""

UINT8_CONVERSION = "round((x+1)*127.5), grey->RGB by replication, v1"
"""Part of the cache key: change it when `to_uint8`/`to_rgb` change."""

DATA_KEYS = ("dataset", "image_size", "image_channels", "val_fraction", "seed", "max_bad_files")
"""Data settings that select or change the reference images (batch size, workers, flips of
training batches and download do not: reference images are never flipped)."""


def select_indices(total: int, num: int | None, seed: int = 0) -> list[int]:
    """`num` of `range(total)` chosen at random with `seed` (sorted), or all when `num` is None
    or not smaller than `total`."""
    if num is None or num >= total:
        return list(range(total))
    if num < 1:
        raise UserError(f"number of reference images {num} must be >= 1 (or null for all).")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:num].tolist())


def source_fingerprint(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the source files of the dataset (see the module docstring)."""
    dataset = data_cfg["dataset"]
    if dataset == "folder":
        from ddpm_unet.data.folder import find_image_files

        root = Path(os.path.expanduser(os.fspath(data_cfg["root"])))
        digest = hashlib.sha256()
        count = 0
        for path in find_image_files(root):
            stat = path.stat()
            rel = path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count += 1
        return {"files": count, "files_sha256": digest.hexdigest()}
    if dataset == "digits":
        import sklearn

        return {"scikit-learn": sklearn.__version__}
    import torchvision

    # The official files are verified against their published checksums by torchvision.
    return {"torchvision": torchvision.__version__}


@dataclass
class ReferenceSet:
    """The real images of an evaluation and the name of their cached features.

    `images` yields uint8 `[3, H, W]` tensors (grey replicated); `cache_name` is the torch-fidelity
    cache name; `key` is what its hash was made of.
    """

    images: UInt8RGBView
    cache_name: str
    key: dict[str, Any]


def build_reference_set(
    data_cfg: Mapping[str, Any],
    split: str,
    weights_path: str | os.PathLike[str],
    num_images: int | None = None,
    subset_seed: int = 0,
) -> ReferenceSet:
    """Build the DataModule of `data_cfg` (a `_target_` config such as a checkpoint's
    `run_config["data"]`), take `reference_dataset(split)` (unflipped `[C, H, W]` in [-1, 1]), a
    seeded subset of `num_images` (all when None), and name its cache entry."""
    from hydra.utils import instantiate

    from ddpm_unet.data.datasets import build_transform

    datamodule = instantiate(dict(data_cfg), _convert_="object")
    dataset = datamodule.reference_dataset(split)
    indices = select_indices(len(dataset), num_images, subset_seed)
    images = UInt8RGBView(dataset, indices)
    name, key = reference_cache_name(
        data_cfg,
        split,
        len(indices),
        weights_path,
        subset_seed=subset_seed,
        transform=repr(
            build_transform(
                int(data_cfg["image_size"]), int(data_cfg["image_channels"]), random_flip=False
            )
        ),
    )
    return ReferenceSet(images, name, key)


def reference_cache_name(
    data_cfg: Mapping[str, Any],
    split: str,
    num_images: int,
    weights_path: str | os.PathLike[str],
    subset_seed: int = 0,
    transform: str = "",
) -> tuple[str, dict[str, Any]]:
    """`(name, key)`: the cache name `<dataset>-<split>-<size>px-<ch>ch-n<N>-<hash>` and the dict
    hashed into it (module docstring)."""
    import torch_fidelity

    key: dict[str, Any] = {
        "data": {k: data_cfg.get(k) for k in DATA_KEYS},
        "split": split,
        "num_images": int(num_images),
        "subset_seed": int(subset_seed),
        "transform": transform,
        "source": source_fingerprint(data_cfg),
        "inception_weights_sha256": weights_fingerprint(weights_path),
        "feature_extractor": FEATURE_EXTRACTOR,
        "torch_fidelity": torch_fidelity.__version__,
        "uint8_conversion": UINT8_CONVERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    name = (
        f"{data_cfg['dataset']}-{split}-{data_cfg['image_size']}px-{data_cfg['image_channels']}ch-"
        f"n{num_images}-{digest[:12]}"
    )
    return name, key


def cache_files(cache_root: str | os.PathLike[str], cache_name: str) -> dict[str, int]:
    """The cache entries (`.npz`) of `cache_name` in `cache_root`, with their mtimes (ns)."""
    root = Path(cache_root)
    if not root.is_dir():
        return {}
    prefix = f"{cache_name}-"
    return {
        p.name: p.stat().st_mtime_ns
        for p in root.iterdir()
        if p.name.startswith(prefix) and p.suffix == CACHE_SUFFIX and p.is_file()
    }


CacheItem = torch.Tensor | dict[str, np.ndarray]
"""A torch-fidelity cache item: features `[N, D]` (tensor) or FID statistics `{mu, sigma}`."""


def read_cache_entry(path: str | os.PathLike[str]) -> CacheItem:
    """One cache entry as torch-fidelity holds it in memory, read from its `.npz` file.

    `np.load(allow_pickle=False)`: the file can hold numbers only. Key `tensor` (float `[N, D]`
    features) gives a tensor; keys `mu` (`[D]`) and `sigma` (`[D, D]`) the FID statistics dict.

    Raises:
        ValueError, OSError, EOFError, zipfile.BadZipFile: not such a file (see `_cache_problem`).
    """
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"a single array {loaded.shape}, not an .npz archive")
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    if not all(np.issubdtype(a.dtype, np.floating) for a in arrays.values()):
        raise ValueError(f"arrays of dtype {[str(a.dtype) for a in arrays.values()]}, not floats")
    if set(arrays) == {"tensor"} and arrays["tensor"].ndim == 2:
        return torch.from_numpy(arrays["tensor"])
    if set(arrays) == {"mu", "sigma"}:
        mu, sigma = arrays["mu"], arrays["sigma"]
        if mu.ndim == 1 and sigma.shape == (len(mu), len(mu)):
            return {"mu": mu, "sigma": sigma}
    shapes = {key: list(a.shape) for key, a in arrays.items()}
    raise ValueError(f"arrays {shapes}, not features [N, D] or FID statistics mu [D], sigma [D, D]")


def write_cache_entry(path: str | os.PathLike[str], item: CacheItem) -> None:
    """Store a torch-fidelity cache item as `.npz` (see `read_cache_entry`), atomically: written
    beside `path`, then renamed, so a killed run never leaves half a file under its name."""
    if isinstance(item, torch.Tensor):
        arrays = {"tensor": item.detach().cpu().numpy()}
    else:
        arrays = {"mu": np.asarray(item["mu"]), "sigma": np.asarray(item["sigma"])}
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _cache_problem(path: Path, err: BaseException) -> str:
    """Why cache entry `path` is unusable, in words (never a loader's advice to unpickle)."""
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    if isinstance(err, ValueError) and "pickle" in str(err):
        return "it holds pickled Python objects, which the cache never does (not unpickled)"
    if isinstance(err, zipfile.BadZipFile | EOFError):
        return "it is not a complete .npz archive (truncated or damaged)"
    if isinstance(err, ValueError):
        return f"it holds {err}"
    return f"it cannot be read ({type(err).__name__})"


def _valid_entries(
    cache_root: str | os.PathLike[str], cache_name: str
) -> Iterator[tuple[Path, CacheItem]]:
    """`(path, item)` for each readable entry of `cache_name`; an unreadable one is deleted with
    one warning naming it (torch-fidelity then recomputes it)."""
    root = Path(cache_root)
    for name in sorted(cache_files(root, cache_name)):
        path = root / name
        try:
            item = read_cache_entry(path)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            log.warning(
                "FID reference cache entry %s is unusable: %s; deleted, it will be recomputed.",
                path,
                _cache_problem(path, err),
            )
            path.unlink(missing_ok=True)
            continue
        yield path, item


def validate_reference_cache(cache_root: str | os.PathLike[str], cache_name: str) -> list[Path]:
    """Read every cache entry of `cache_name` now; delete (with a warning) the unreadable ones.

    Called by `eval.py` before sampling, so a damaged entry costs a recomputation, never a
    failure after the slow part. Returns the valid entries.
    """
    return [path for path, _ in _valid_entries(cache_root, cache_name)]


@contextmanager
def torch_fidelity_cache(cache_root: str | os.PathLike[str], cache_name: str) -> Iterator[Path]:
    """A private `cache_root` for one torch-fidelity call on the reference set `cache_name`.

    torch-fidelity unpickles its cache files without restriction; here it only ever reads
    files written a moment before by this function from validated `.npz` arrays. Entries it
    computes in the private folder are stored back into `cache_root` as `.npz` (read as data,
    `weights_only=True`) when the call succeeds. The folder is removed afterwards.
    """
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    # Beside the cache (same filesystem): the features of 50,000 images are hundreds of MB.
    with tempfile.TemporaryDirectory(prefix=".torch-fidelity-", dir=root) as folder:
        private = Path(folder)
        for path, item in _valid_entries(root, cache_name):
            torch.save(item, private / f"{path.stem}.pt")
        staged = {p.name for p in private.iterdir()}
        yield private
        for computed in sorted(private.glob(f"{cache_name}-*.pt")):
            if computed.name not in staged:
                write_cache_entry(root / f"{computed.stem}{CACHE_SUFFIX}", _read_computed(computed))


def _read_computed(path: Path) -> CacheItem:
    """An entry torch-fidelity has just written (a tensor or a dict of numpy arrays), read with
    `weights_only=True`, numpy's array reconstruction allowed for the FID statistics."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

    allowed = [_reconstruct, np.ndarray, np.dtype, *(type(np.dtype(t)) for t in "fdeg")]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def write_cache_info(
    cache_root: str | os.PathLike[str], cache_name: str, key: Mapping[str, Any]
) -> Path:
    """`<cache_root>/<cache_name>.json`: the inputs of the cache name's hash, for people."""
    path = Path(cache_root) / f"{cache_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(key), indent=2, sort_keys=True, default=str))
    return path
