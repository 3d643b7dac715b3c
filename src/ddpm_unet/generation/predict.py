"""Generation on any number of devices: Lightning's `trainer.predict` over image indices.

`sample.py` and `eval.py` build a Trainer from the same `trainer` config group as `train.py`
(`trainer=ddp` every GPU, `trainer=ddp_sim` two CPU processes, `trainer.num_nodes`, SLURM) and
call `generate`:

1. every rank checks the run's settings against the shard folder's manifest (an interrupted
   run in the same output folder continues only with the same settings); rank 0 records them;
2. in `setup`, rank 0 scans the shards already written (a rerun continues where it stopped)
   and broadcasts the plan: the seed and the indices still to generate;
3. Lightning splits those indices over the ranks (without repeating any), each rank generates
   its batches with `generate_images` (image `i` from the seed and `i` only) and `ShardWriter`
   writes each batch as a shard as soon as it is made;
4. after a barrier, rank 0 reads all shards and returns the images in index order.

`trainer.precision=bf16-mixed` runs the network under autocast as in training (the sampler's
arithmetic stays float32). cuDNN autotuning (`trainer.benchmark`) is turned off here: it picks
kernels by timing, per process, which could change the last bits of an image between runs and
ranks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from ddpm_unet.generation.core import generate_images, random_seed
from ddpm_unet.generation.shards import Plan, ShardStore
from ddpm_unet.metrics.fidelity import to_uint8_hwc
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import Sampler
from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}
"""torch device type -> Lightning accelerator, for the `device` shortcut."""


class GenerationModule(L.LightningModule):
    """`predict_step`: a batch of global image indices `[n]` -> `{"indices": [n] int64,
    "images": uint8 [n, H, W, C]}` (numpy, on the CPU).

    Args:
        net: the network to sample with (e.g. the EMA copy); moved to the device by Lightning.
        diffusion: the process (its coefficients are float64 numbers: kept out of the module
            tree, so precision plugins never cast them).
        store: the shard folder; rank 0 scans it in `setup`.
        seed: the run's seed (None: drawn on rank 0).
        image_shape: `(C, H, W)`.
        model_batch: images per network call (`FixedBatch`).
        batch_size: images sampled together per rank (one shard each).
        progress: a progress bar over rank 0's denoising steps.
    """

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
    ) -> None:
        super().__init__()
        self.net = net
        self.__dict__["diffusion"] = diffusion
        self.sampler = sampler
        self.store = store
        self.num_samples = num_samples
        self.seed = seed
        self.image_shape = image_shape
        self.model_batch = model_batch
        self.batch_size = batch_size
        self.progress = progress
        self.plan: Plan | None = None
        self._bar: Any = None

    @property
    def image_hwc(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return (h, w, c)

    def setup(self, stage: str) -> None:
        # After the process group is up: rank 0 decides, every rank gets the same plan.
        plan = None
        if self.trainer.is_global_zero:
            seed = self.seed if self.seed is not None else random_seed()
            plan = self.store.plan(self.num_samples, self.image_hwc, seed)
            if plan.reused:
                log.info(
                    "continuing: %d of %d images found in %d shards of %s; generating the other %d",
                    plan.reused,
                    self.num_samples,
                    plan.shards,
                    self.store.folder,
                    len(plan.todo),
                )
        self.plan = self.trainer.strategy.broadcast(plan, src=0)

    def predict_dataloader(self) -> DataLoader:
        assert self.plan is not None
        todo = torch.tensor(self.plan.todo, dtype=torch.long)
        # Lightning splits it over the ranks (rank r: every world_size-th index, none twice).
        return DataLoader(todo, batch_size=self.batch_size, shuffle=False)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, np.ndarray]:
        assert self.plan is not None
        images = generate_images(
            self.net,
            self.diffusion,
            self.sampler,
            batch,
            self.plan.seed,
            self.image_shape,
            self.model_batch,
            progress=self._progress(),
        )
        return {"indices": batch.cpu().numpy().astype(np.int64), "images": to_uint8_hwc(images)}

    def _progress(self) -> Any:
        """A wrapper of each batch's step indices that advances rank 0's bar (or False)."""
        if not (self.progress and self.trainer.is_global_zero):
            return False
        if self._bar is None:
            from tqdm.auto import tqdm

            batches = int(self.trainer.num_predict_batches[0])
            steps = self.sampler.num_model_calls(self.diffusion.num_timesteps)
            world = self.trainer.world_size
            share = f" on {world} ranks" if world > 1 else ""
            self._bar = tqdm(
                total=batches * steps,
                desc=f"{self.sampler.name} sampling {self.num_samples} images{share}",
                unit="step",
            )
        bar = self._bar

        def wrap(iterable: Iterable[int]) -> Iterator[int]:
            for item in iterable:
                yield item
                bar.update(1)

        return wrap

    def on_predict_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ShardWriter(BasePredictionWriter):
    """Write each predicted batch into the shard folder as soon as it is made; wait for every
    rank at the end, so rank 0 reads complete shards."""

    def __init__(self, store: ShardStore) -> None:
        super().__init__(write_interval="batch")
        self.store = store

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.store.write_shard(prediction["indices"], prediction["images"])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("shards_written")


def device_overrides(trainer_cfg: Mapping[str, Any], device: str | None) -> dict[str, Any]:
    """Trainer arguments for the `device` shortcut of `sample.py`/`eval.py`: `auto` (or None)
    keeps the trainer group's choice; `cpu`, `cuda`, `cuda:N`, `mps` pick that one device.

    Raises:
        UserError: `device` names one device while the trainer group asks for several.
    """
    if device in (None, "auto"):
        return {}
    parsed = torch.device(str(device))
    if parsed.type not in ACCELERATORS:
        raise UserError(f"device={device} is not a device: use auto, cpu, cuda, cuda:N or mps.")
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1) or 1
    if devices not in (1, "1", None, "auto") or int(nodes) != 1:
        raise UserError(
            f"device={device} picks one device, but trainer.devices={devices} and "
            f"trainer.num_nodes={nodes} ask for several: leave device=auto and let the trainer "
            "group choose (e.g. trainer=ddp), or use trainer=default with device=...."
        )
    index = parsed.index if parsed.type == "cuda" else None
    return {"accelerator": ACCELERATORS[parsed.type], "devices": [index] if index else 1}


def build_trainer(
    cfg: DictConfig, callbacks: list[L.Callback] | None = None, device: str | None = None
) -> L.Trainer:
    """The prediction Trainer of `cfg.trainer` (the `trainer` group), without loggers,
    checkpoints, summaries or Lightning's batch bar (generation shows its own step bar)."""
    from hydra.utils import instantiate

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_cfg, dict)
    return instantiate(
        cfg.trainer,
        **device_overrides(trainer_cfg, device),
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        benchmark=False,  # see the module docstring
        use_distributed_sampler=True,  # each rank its own indices
    )


def generate(
    trainer: L.Trainer,
    module: GenerationModule,
    settings: Mapping[str, Any],
) -> np.ndarray | None:
    """Run `module` on `trainer` (every rank calls this): all `module.num_samples` images as
    uint8 `[N, H, W, C]` in index order on rank 0, None on the other ranks.

    `settings` describe the images (`generation_settings`); every rank checks them against an
    earlier run's manifest in `module.store` before any work (`UserError` if they differ), and
    rank 0 records them.
    """
    store = module.store
    settings = store.check_settings(settings)
    if module.seed is None and settings.get("seed") is not None:
        module.seed = int(settings["seed"])  # a random seed drawn by the interrupted run
    if trainer.is_global_zero:
        if module.seed is None:
            module.seed = random_seed()
        store.write_manifest({**settings, "seed": module.seed})
    trainer.predict(module, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    return store.assemble(module.num_samples, module.image_hwc)


def generation_settings(
    ckpt_path: str | os.PathLike[str],
    num_samples: int,
    seed: int | None,
    sampler: Sampler,
    use_ema: bool,
    model_batch: int,
    precision: str,
    image_shape: tuple[int, int, int],
) -> dict[str, Any]:
    """What the images of a run depend on (the shard manifest; see `ShardStore`)."""
    from ddpm_unet.generation.shards import FORMAT, checkpoint_identity

    return {
        "format": FORMAT,
        "checkpoint": checkpoint_identity(ckpt_path),
        "num_samples": int(num_samples),
        "seed": None if seed is None else int(seed),
        "sampler": sampler.settings(),
        "use_ema": bool(use_ema),
        "model_batch": int(model_batch),
        "precision": str(precision),
        "image_shape": list(image_shape),
    }
