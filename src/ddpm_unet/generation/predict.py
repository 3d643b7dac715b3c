"""Generation on any number of devices: Lightning's `trainer.predict` over image indices.

Every rank checks the run's settings against the shard folder's manifest (`shards.py`); rank 0
scans the finished shards and broadcasts the seed and the indices left; Lightning splits those
over the ranks, each writing a shard per batch; rank 0 assembles the images in index order.
cuDNN autotuning (`trainer.benchmark`) stays off: it picks kernels by timing, per process, which
could change the last bits of an image between runs and ranks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ddpm_unet.generation.core import generate_images, random_seed
from ddpm_unet.generation.guidance import ModelCalls
from ddpm_unet.generation.shards import Plan, ShardStore
from ddpm_unet.metrics.fidelity import to_uint8_hwc
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import Sampler


class GenerationModule(L.LightningModule):
    """`predict_step`: a batch of global image indices `[n]` -> the path of its shard, written as
    soon as the images are made. `net` (e.g. the EMA copy) is moved to the device by Lightning;
    `seed` is rank 0's (`generate` sets it; the other ranks get it in the plan); `batch_size`
    images are sampled together per rank, one shard each; `labels`: int64 `[num_samples]`, image
    i's class, or None; `guidance_scale`: w (None: unconditional model).
    """

    plan: Plan  # set in `setup`: the seed and the indices still to generate

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        sampler: Sampler,
        store: ShardStore,
        num_samples: int,
        seed: int | None,
        image_shape: tuple[int, int, int],
        model_batch: int,
        batch_size: int,
        progress: bool = True,
        labels: np.ndarray | None = None,
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        # float64 coefficients: kept out of the module tree, so precision plugins never cast them
        self.__dict__["diffusion"] = diffusion
        self.sampler = sampler
        self.store = store
        self.num_samples = num_samples
        self.seed = seed
        self.image_shape = image_shape
        self.model_batch = model_batch
        self.batch_size = batch_size
        self.progress = progress
        self.labels = labels
        self.guidance_scale = guidance_scale
        self.calls = ModelCalls()  # this rank's model calls (`nfe`)
        self._bar: Any = None

    @property
    def image_hwc(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return (h, w, c)

    def setup(self, stage: str) -> None:
        # After the process group is up: rank 0 decides, every rank gets the same plan.
        plan = None
        if self.trainer.is_global_zero:
            plan = self.store.plan(self.num_samples, self.image_hwc, self.seed)
        self.plan = self.trainer.strategy.broadcast(plan, src=0)

    def predict_dataloader(self) -> DataLoader:
        todo = torch.tensor(self.plan.todo, dtype=torch.long)
        # Lightning splits it over the ranks (rank r: every world_size-th index, none twice).
        return DataLoader(todo, batch_size=self.batch_size, shuffle=False)

    def on_predict_start(self) -> None:
        if self.progress and self.trainer.is_global_zero:
            world = self.trainer.world_size
            steps = self.sampler.num_model_calls(self.diffusion.num_timesteps)
            self._bar = tqdm(
                total=int(self.trainer.num_predict_batches[0]) * steps,
                desc=f"{self.sampler.name} sampling {self.num_samples} images"
                + (f" on {world} ranks" if world > 1 else ""),
                unit="step",
            )

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> Path:
        images = generate_images(
            self.net,
            self.diffusion,
            self.sampler,
            batch,
            self.plan.seed,
            self.image_shape,
            self.model_batch,
            progress=self._advance if self._bar is not None else False,
            labels=None if self.labels is None else self.labels[batch.cpu().numpy()],
            guidance_scale=self.guidance_scale,
            calls=self.calls,
        )
        return self.store.write_shard(batch.cpu().numpy(), to_uint8_hwc(images))

    def _advance(self, steps: Iterable[int]) -> Iterator[int]:  # advances rank 0's bar
        for step in steps:
            yield step
            self._bar.update(1)

    def on_predict_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.trainer.strategy.barrier("shards_written")  # rank 0 then reads complete shards


def generate(
    trainer: L.Trainer, module: GenerationModule, settings: Mapping[str, Any]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Run `module` on `trainer` (every rank calls this). Rank 0 gets all the images, uint8
    `[N, H, W, C]` in index order, and what `sample_info.json`/`metrics.json` record of how they
    were made; the other ranks get `(None, {})`. Every rank first checks `settings` against an
    earlier run's manifest; rank 0 records them, with the seed it draws for a None seed.
    """
    settings = module.store.check_settings(settings)
    if trainer.is_global_zero:
        if settings["seed"] is None:
            settings["seed"] = random_seed()
        module.store.write_manifest(settings)
    module.seed = settings["seed"]
    start = time.perf_counter()
    trainer.predict(module, return_predictions=False)
    if not trainer.is_global_zero:
        return None, {}
    images = module.store.assemble(module.num_samples, module.image_hwc)
    seconds = time.perf_counter() - start
    conditional = module.labels is not None
    return images, {
        "sampler": module.sampler.name,
        # Denoising steps (DDPM: all T). Model calls can differ (Heun: 2 steps - 1): `nfe`,
        # counted (rank 0's images; None when every image came from an earlier run's shards).
        "steps": getattr(module.sampler, "steps", module.diffusion.num_timesteps),
        "nfe": module.calls.nfe,
        "guidance_scale": module.guidance_scale,
        "labels": module.labels.tolist() if conditional else None,
        "sampler_settings": {k: v for k, v in module.sampler.settings().items() if k != "sampler"},
        "use_ema": settings["use_ema"],
        "seed": module.seed,
        "model_batch": module.model_batch,
        "batch_size": module.batch_size,
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "trainer_precision": str(trainer.precision),  # not "precision": a metric's name
        "generated": len(module.plan.todo),
        "reused": module.plan.reused,
        "sampling_s": seconds,
    }
