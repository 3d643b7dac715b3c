"""FID, KID, Inception Score (and precision/recall) with torch-fidelity, on uint8 images.

torch-fidelity is the reference implementation: it resizes uint8 RGB images to 299x299 as
TensorFlow 1.x did, runs the ported InceptionV3 and computes in float64. This module adapts our
images to it (model outputs in [-1, 1] rounded to uint8 as image files store them, grey replicated
to RGB) and, on the CPU, runs its Inception with a thread per available core and channels-last
weights (~1.5x faster on a 2-core machine; features differ in the last float bits only;
`benchmarks/inception_speed.py`, `benchmarks/results/inception_cpu.md`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm_unet.metrics.inception import verified_weights_copy
from ddpm_unet.utils.errors import UserError

FEATURE_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's (and torchmetrics') InceptionV3
# The thread count the user set, read at import: Lightning sets it for DDP ranks later.
USER_THREADS = os.environ.get("OMP_NUM_THREADS")
_RESULT_KEYS = {  # torch-fidelity's names -> ours; precision, recall and f_score stay
    "frechet_inception_distance": "fid",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "inception_score_mean": "isc_mean",
    "inception_score_std": "isc_std",
}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """`[N, C, H, W]` floats in [-1, 1] -> uint8 `[N, C, H, W]` in 0..255 (rounded, clamped)."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """`[N, C, H, W]` floats in [-1, 1] -> numpy uint8 `[N, H, W, C]` (the `samples.npz` layout)."""
    return to_uint8(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """`[..., 1 or 3, H, W]` -> `[..., 3, H, W]`: grey replicated to the 3 channels Inception
    takes (the same image a viewer shows), RGB unchanged."""
    channels = images.shape[-3]
    if channels == 3:
        return images
    if channels == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    raise ValueError(f"images have {channels} channels; expected 1 (grey) or 3 (RGB).")


class UInt8Images(Dataset[torch.Tensor]):
    """An array of uint8 images as torch-fidelity's input: item i is `[3, H, W]` uint8.

    Args:
        images: uint8 `[N, H, W, C]` (numpy, `samples.npz` layout) or `[N, C, H, W]` (tensor,
            `channels_first=True`), with C = 1 or 3.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, channels_first: bool = False) -> None:
        tensor = torch.as_tensor(images)
        if tensor.dtype != torch.uint8 or tensor.dim() != 4:
            raise ValueError(
                f"expected uint8 images [N, H, W, C] or [N, C, H, W], got {tuple(tensor.shape)} "
                f"{tensor.dtype}."
            )
        self.images = tensor if channels_first else tensor.permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_rgb(self.images[index]).contiguous()


class UInt8RGBView(Dataset[torch.Tensor]):
    """A dataset of float images `[C, H, W]` in [-1, 1] seen as uint8 `[3, H, W]`."""

    def __init__(self, dataset: Dataset[torch.Tensor]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_rgb(to_uint8(self.dataset[index].unsqueeze(0))[0]).contiguous()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a container's or `taskset`'s)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextmanager
def cpu_threads(device: torch.device) -> Iterator[int]:
    """For CPU work on `device`: torch uses every available core inside the block (restored
    after), unless `OMP_NUM_THREADS` was set by the user. Yields the thread count."""
    before = torch.get_num_threads()
    wanted = available_cores() if device.type == "cpu" and not USER_THREADS else before
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


@contextmanager
def channels_last_inception(device: torch.device) -> Iterator[None]:
    """Inside the block, torch-fidelity builds its InceptionV3 with channels-last weights when
    `device` is the CPU: its registry entry is swapped for a subclass under the same name, so
    cache file names and everything else stay torch-fidelity's."""
    if device.type != "cpu":
        yield
        return
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class ChannelsLastInception(FeatureExtractorInceptionV3):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.to(memory_format=torch.channels_last)

    original = FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTOR]
    FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTOR] = ChannelsLastInception
    try:
        yield
    finally:
        FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTOR] = original


def fidelity_metrics(
    samples: Dataset[torch.Tensor],
    reference: Dataset[torch.Tensor],
    weights_path: str | os.PathLike[str],
    *,
    fid: bool = True,
    kid: bool = True,
    isc: bool = True,
    prc: bool = False,
    feature_layer_fid: str = "2048",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    isc_splits: int = 10,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    reference_cache_name: str | None = None,
    cache_root: str | os.PathLike[str] | None = None,
    save_cpu_ram: bool = False,
    verbose: bool = False,
) -> dict[str, float]:
    """torch-fidelity's `calculate_metrics` with `samples` as input1 and `reference` as input2.

    Args:
        samples, reference: datasets of uint8 `[3, H, W]` tensors (`UInt8Images`, `UInt8RGBView`).
        weights_path: the InceptionV3 weights file (`resolve_inception_weights`): torch-fidelity
            never downloads, and loads a checked private copy (`verified_weights_copy`).
        fid, kid, isc, prc: which metrics; ISC is computed on `samples` only. Precision/recall use
            the Inception 2048-d features (torch-fidelity's default for them is VGG-16, whose
            weights would be a second download), so they are not comparable with VGG-based ones.
        feature_layer_fid: Inception layer of FID and KID ("64", "192", "768", "2048").
        kid_subset_size: clamped to the smaller set's size (torch-fidelity refuses larger ones).
        reference_cache_name: when given, the reference features are cached under this name in
            `cache_root` (`reference_stats.torch_fidelity_cache`).
        save_cpu_ram: load in the main process (no DataLoader workers) and compute
            precision/recall in parts.

    Returns:
        `{"fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall", "f_score"}`,
        the requested ones.
    """
    import torch_fidelity

    n_samples, n_reference = len(samples), len(reference)  # type: ignore[arg-type]
    if (fid or kid or prc) and min(n_samples, n_reference) < 2:
        raise UserError(
            f"FID/KID need at least 2 images per set, got {n_samples} samples and {n_reference} "
            "reference images."
        )
    if isc and n_samples < isc_splits:
        raise UserError(
            f"the Inception Score splits the {n_samples} samples into isc_splits={isc_splits} "
            "groups: use more samples or fewer splits."
        )
    from ddpm_unet.metrics.reference_stats import torch_fidelity_cache

    device = torch.device(device)
    # torch-fidelity unpickles the weights and cache files unrestricted: it gets private copies.
    if reference_cache_name is None:
        cache: AbstractContextManager[Path | None] = nullcontext()
    else:
        cache = torch_fidelity_cache(cache_root, reference_cache_name)
    with (
        verified_weights_copy(weights_path) as weights_copy,
        cache as private_cache_root,
        cpu_threads(device),
        channels_last_inception(device),
    ):
        raw = torch_fidelity.calculate_metrics(
            input1=samples,
            input2=reference if (fid or kid or prc) else None,
            fid=fid,
            kid=kid,
            isc=isc,
            prc=prc,
            # One extractor (Inception) for all metrics, also for precision/recall.
            feature_extractor=FEATURE_EXTRACTOR,
            feature_extractor_weights_path=os.fspath(weights_copy),
            feature_layer_fid=str(feature_layer_fid),
            feature_layer_kid=str(feature_layer_fid),
            feature_layer_prc="2048",
            kid_subsets=kid_subsets,
            kid_subset_size=min(kid_subset_size, n_samples, n_reference),
            isc_splits=isc_splits,
            batch_size=batch_size,
            cuda=device.type == "cuda",
            save_cpu_ram=save_cpu_ram,
            verbose=verbose,
            cache=reference_cache_name is not None,
            input2_cache_name=reference_cache_name,
            cache_root=private_cache_root,
        )
    return {_RESULT_KEYS.get(k, k): float(v) for k, v in raw.items()}
