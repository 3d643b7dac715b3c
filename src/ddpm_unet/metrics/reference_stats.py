"""The real images of FID/KID, and the cache of their Inception features.

The reference side is the same for every evaluation on one dataset, and on a CPU the slow side
(50,000 CIFAR-10 images through InceptionV3), so its features are cached under torch-fidelity's
own entry names: `<name>-inception-v3-compat-features-<layer>.npz` (key `tensor`, float `[N, D]`)
and `<name>-inception-v3-compat-stat-fid-<layer>.npz` (keys `mu` `[D]`, `sigma` `[D, D]`).

The cache folder is data, never code: torch-fidelity unpickles its cache files unrestricted, so it
only sees a private folder (`torch_fidelity_cache`) holding copies of the `.npz` entries that
`np.load(allow_pickle=False)` read as valid; what it computes there is stored back as `.npz`. An
unreadable entry is deleted with one warning and recomputed (`validate_reference_cache` checks
before the slow sampling of `eval.py`).

The cache name, `<dataset>-<split>-<size>px-<channels>ch-n<images>-<12 hex digits>`, changes
whenever the statistics would: the hash covers the data settings that select or transform images
(`DATA_KEYS`, the transform's `repr`), the subset seed, the source files (list, sizes and mtimes
for image folders; torchvision verifies its datasets' checksums; digits: the scikit-learn
version), the Inception weights' SHA-256, the torch-fidelity version and the uint8 conversion.
Its inputs are written beside the entries as `<name>.json`, for people.
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
from torch.utils.data import Subset

from ddpm_unet.metrics.fidelity import FEATURE_EXTRACTOR, UInt8RGBView
from ddpm_unet.metrics.inception import weights_fingerprint
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.files import atomic_write

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".npz"  # numpy archives: numbers only, nothing to unpickle
UINT8_CONVERSION = "round((x+1)*127.5), grey->RGB by replication, v1"  # change with to_uint8/to_rgb
# Data settings that select or change the reference images (batch size, workers, training flips
# and download do not: reference images are never flipped).
DATA_KEYS = ("dataset", "image_size", "image_channels", "val_fraction", "seed", "max_bad_files")
# A torch-fidelity cache item: features `[N, D]` (tensor) or FID statistics `{mu, sigma}`.
CacheItem = torch.Tensor | dict[str, np.ndarray]


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
    """What identifies the source files of the dataset (module docstring)."""
    dataset = data_cfg["dataset"]
    if dataset == "folder":
        from ddpm_unet.data.folder import find_image_files

        root = Path(os.path.expanduser(os.fspath(data_cfg["root"])))
        files, digest = find_image_files(root), hashlib.sha256()
        for path in files:
            stat = path.stat()
            rel = path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"files": len(files), "files_sha256": digest.hexdigest()}
    if dataset == "digits":
        import sklearn

        return {"scikit-learn": sklearn.__version__}
    import torchvision

    return {"torchvision": torchvision.__version__}


@dataclass
class ReferenceSet:
    """The real images of an evaluation (uint8 `[3, H, W]` items), the torch-fidelity cache name
    of their features, and the `key` its hash was made of."""

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
    images = UInt8RGBView(Subset(dataset, indices))
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
    entries = Path(cache_root).glob(f"{cache_name}-*{CACHE_SUFFIX}")
    return {p.name: p.stat().st_mtime_ns for p in entries if p.is_file()}


def read_cache_entry(path: str | os.PathLike[str]) -> CacheItem:
    """One cache entry as torch-fidelity holds it in memory (a tensor or the FID statistics
    dict), read from its `.npz` file with `np.load(allow_pickle=False)`; `ValueError`, `OSError`,
    `EOFError` or `zipfile.BadZipFile` for another file (`_cache_problem` says which)."""
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
    """Store a torch-fidelity cache item as `.npz` (see `read_cache_entry`), atomically."""
    if isinstance(item, torch.Tensor):
        arrays = {"tensor": item.detach().cpu().numpy()}
    else:
        arrays = {"mu": np.asarray(item["mu"]), "sigma": np.asarray(item["sigma"])}
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


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
    """The valid cache entries of `cache_name`, read now; the unreadable ones are deleted (with a
    warning), so they cost a recomputation, never a failure after `eval.py`'s sampling."""
    return [path for path, _ in _valid_entries(cache_root, cache_name)]


@contextmanager
def torch_fidelity_cache(
    cache_root: str | os.PathLike[str] | None, cache_name: str
) -> Iterator[Path]:
    """A private `cache_root` for one torch-fidelity call on the reference set `cache_name`,
    holding copies of its valid `.npz` entries; what torch-fidelity computes there is stored back
    into `cache_root` (default `$TORCH_HOME/fidelity_cache`) as `.npz` when the call succeeds."""
    root = Path(cache_root or Path(torch.hub.get_dir()).parent / "fidelity_cache")
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
) -> None:
    """`<cache_root>/<cache_name>.json`: the inputs of the cache name's hash, for people."""
    path = Path(cache_root) / f"{cache_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(key), indent=2, sort_keys=True, default=str))
