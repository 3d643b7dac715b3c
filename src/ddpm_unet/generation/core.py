"""`generate_images`, the one function every image of this project is made by.

Image `i` of a run depends only on the seed, the sampler, its label and guidance scale, and `i`
(docs/design.md, "Beyond the network"): its noise comes from its own CPU generator
(`image_seed(seed, i)`), and the network always runs on exactly `model_batch` images
(`FixedBatch`): kernels pick their algorithm, and so the last bits, by the batch's shape (unpadded
batches of 1, 7 and 32 differed by ~1e-6 here, enough to flip uint8 pixels; padded ones are
bit-identical). `model_batch` is therefore part of what the seed means, like the sampler.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm_unet.generation.guidance import GuidedModel, ModelCalls, runs_both_halves
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import ImageGenerators, Sampler
from ddpm_unet.models.samplers.base import Progress

# Images per network call: keeps a GPU busy (a run of fewer uses `effective_model_batch`)
DEFAULT_MODEL_BATCH = 64


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index`'s generator: 63 bits of numpy's `SeedSequence(seed,
    spawn_key=(index,))`, so no two `(seed, index)` pairs share a stream (as `seed + index`
    would: seed 0's image 1 is seed 1's image 0)."""
    state = np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def image_generators(seed: int, indices: Iterable[int]) -> ImageGenerators:
    """One CPU generator per image of `indices`, seeded with `image_seed(seed, index)`."""
    return ImageGenerators([torch.Generator().manual_seed(image_seed(seed, i)) for i in indices])


def effective_model_batch(model_batch: int, num_samples: int, both_halves: bool = False) -> int:
    """`model_batch`, or the network rows of a run of fewer images: `num_samples`, twice that
    when guidance runs both halves (`guidance.runs_both_halves`), so they share one call."""
    return max(1, min(int(model_batch), int(num_samples) * (2 if both_halves else 1)))


def random_seed() -> int:
    """A seed for `seed=null`: drawn from the OS, in the range the config accepts."""
    return secrets.randbelow(2**32)


class FixedBatch(nn.Module):
    """`net` run on exactly `size` images per call: `[N, C, H, W]` is cut into chunks of `size`,
    the last one padded with copies of its first image; the padding's outputs are dropped.
    Class labels `y` `[N]` (for a conditional net) are cut and padded the same way.

    The input is cast to the network's parameter dtype and the output returned as float32, so
    the sampler's arithmetic stays float32 under autocast (`bf16-mixed`) or `*-true` precisions.
    """

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self.train(net.training)  # samplers restore this mode afterwards: the net's own

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        param = next(iter(self.net.parameters()), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else x.dtype
        outputs = []
        for start in range(0, x.shape[0], self.size):
            parts = [v[start : start + self.size] for v in (x, t, y) if v is not None]
            pad = self.size - parts[0].shape[0]
            if pad:
                parts = [torch.cat([v, v[:1].expand(pad, *v.shape[1:])]) for v in parts]
            parts[0] = parts[0].to(dtype)
            out = self.net(*parts)
            outputs.append(out[: self.size - pad].float())
        return torch.cat(outputs)


@torch.no_grad()
def generate_images(
    net: nn.Module,
    diffusion: GaussianDiffusion,
    sampler: Sampler,
    indices: Sequence[int] | torch.Tensor,
    seed: int,
    image_shape: tuple[int, int, int],
    model_batch: int,
    batch_size: int | None = None,
    progress: Progress = False,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    guidance_scale: float | None = None,
    calls: ModelCalls | None = None,
) -> torch.Tensor:
    """Images `indices` (global indices, any order) of the run `seed`: `[len(indices), C, H, W]`
    floats in [-1, 1] on the network's device.

    Args:
        net: the network (`forward(x, t)`, or `forward(x, t, y)` with a `num_classes`
            attribute for a class-conditional one), e.g. the EMA copy.
        image_shape: `(C, H, W)` of one image.
        model_batch: images per network call (`FixedBatch`; use `effective_model_batch`).
        batch_size: images sampled together (their states stay in memory for all steps; None:
            all of `indices`). Does not change the images.
        progress: as `Sampler.sample`, for each batch.
        labels: the class of each image of `indices` (`[len(indices)]`; `guidance.resolve_labels`),
            None for an unconditional net (or all no-class on a conditional one).
        guidance_scale: classifier-free guidance w (`guidance.GuidedModel`; None: 1).
        calls: counts the sampler's model calls (`nfe`).
    """
    indices = [int(i) for i in indices]
    if not indices:  # e.g. `sample_images(0)` in a notebook: say so, not `range()`'s complaint
        raise ValueError("no image indices to generate: ask for at least one image")
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if labels.shape != (len(indices),):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected [{len(indices)}]")
    calls = calls if calls is not None else ModelCalls()
    fixed = FixedBatch(net, model_batch)
    num_classes = getattr(net, "num_classes", None)
    batch_size = batch_size or len(indices)
    chunks = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        chunk_labels = None if labels is None else labels[start : start + batch_size]
        model = GuidedModel(fixed, chunk_labels, guidance_scale, num_classes, calls)
        shape = (len(chunk), *image_shape)
        generators = image_generators(seed, chunk)
        chunks.append(sampler.sample(model, diffusion, shape, generators, progress=progress))
        calls.images += len(chunk)
    return torch.cat(chunks)


def sample_model(
    model: Any,
    num_samples: int,
    sampler: Sampler,
    seed: int,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: Progress = False,
    labels: Sequence[int] | np.ndarray | None = None,
    guidance_scale: float | None = None,
    calls: ModelCalls | None = None,
) -> torch.Tensor:
    """`generate_images` of a `LitDiffusion`'s EMA network: images `indices` (default: all) of a
    run of `num_samples` (`labels`: one per entry of `indices`); the training callbacks' way."""
    return generate_images(
        model.ema.module,
        model.diffusion,
        sampler,
        range(num_samples) if indices is None else indices,
        seed,
        (model.image_channels, model.image_size, model.image_size),
        effective_model_batch(
            DEFAULT_MODEL_BATCH, num_samples, runs_both_halves(labels, guidance_scale)
        ),
        batch_size=batch_size,
        progress=progress,
        labels=labels,
        guidance_scale=guidance_scale,
        calls=calls,
    )
