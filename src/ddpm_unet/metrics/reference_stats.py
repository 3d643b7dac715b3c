"""The real images of FID/KID, and the cache of their Inception features.

The reference side of FID is the same for every evaluation of every checkpoint trained on one
dataset, and on a CPU it is the slow side (50,000 CIFAR-10 images through InceptionV3). So its
features are computed once and cached with torch-fidelity's own cache (`cache=True`,
`input2_cache_name=<name>`, `cache_root=<dir>`): files `<name>-inception-v3-compat-features-
<layer>.pt` (or `-stat-fid-<layer>.pt` when only FID is asked for).

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
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm_unet.metrics.fidelity import FEATURE_EXTRACTOR, UInt8RGBView
from ddpm_unet.metrics.inception import weights_fingerprint

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
        raise ValueError(f"number of reference images {num} must be >= 1 (or null for all).")
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
    """The torch-fidelity cache files of `cache_name` in `cache_root`, with their mtimes (ns)."""
    root = Path(cache_root)
    if not root.is_dir():
        return {}
    prefix = f"{cache_name}-"
    return {
        p.name: p.stat().st_mtime_ns
        for p in root.iterdir()
        if p.name.startswith(prefix) and p.suffix == ".pt"
    }


def write_cache_info(
    cache_root: str | os.PathLike[str], cache_name: str, key: Mapping[str, Any]
) -> Path:
    """`<cache_root>/<cache_name>.json`: the inputs of the cache name's hash, for people."""
    path = Path(cache_root) / f"{cache_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(key), indent=2, sort_keys=True, default=str))
    return path
