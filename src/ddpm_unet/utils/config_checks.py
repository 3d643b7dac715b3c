"""Checks of a composed run config: bad values and wrong combinations fail before any work.

`check_train_config`, `check_sample_config` and `check_eval_config` raise `ConfigError` (a
`UserError`). They run the checks of our objects on their configs (`Rule` tables such as
`DATA_RULES`, functions such as `check_image_size`); the tables here hold only the keys no object
of ours checks. `check_device`/`check_accelerator` judge what only the machine can.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from ddpm_unet.data.datamodule import DATA_RULES, per_device_batch_size
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.lit_diffusion import LIT_RULES
from ddpm_unet.models.lr_schedules import check_warmup_cosine
from ddpm_unet.models.unet import check_image_size, check_unet_arguments
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.rules import (
    AT_LEAST_TWO,
    LIMIT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    Choice,
    ConfigError,
    Rule,
    check_values,
    shown,
)


@contextmanager
def _as_config_error() -> Iterator[None]:
    """An object's own check, run on the config: its `UserError` becomes a `ConfigError`."""
    try:
        yield
    except UserError as err:
        raise ConfigError(str(err)) from None


# Values set for every command that samples (sample.py, eval.py); the sampler's own settings are
# checked by its constructor (`check_sampler`).
SAMPLING_RULES: tuple[Rule | Choice, ...] = (
    Rule("batch_size", POSITIVE_INT, "256", null_means="all images at once"),
    Rule("seed", SEED, "0", null_means="a random seed"),
)

SAMPLE_RULES: tuple[Rule | Choice, ...] = (
    Rule("num_samples", POSITIVE_INT, "64"),
    *SAMPLING_RULES,
    Rule("nrow", POSITIVE_INT, "8", null_means="about sqrt(num_samples)"),
    Rule("upscale", POSITIVE_INT, "4", null_means="tiny images to >= 32 px"),
)

EVAL_RULES: tuple[Rule | Choice, ...] = (
    Rule("num_samples", AT_LEAST_TWO, "10000"),
    *SAMPLING_RULES,
    Rule("kid_subsets", POSITIVE_INT, "100"),
    Rule("kid_subset_size", POSITIVE_INT, "1000"),
    Rule("isc_splits", POSITIVE_INT, "10"),
    Rule("fidelity_batch_size", POSITIVE_INT, "64"),
    Choice("reference_split", ("train", "val")),
    Rule("num_reference", POSITIVE_INT, "10000", null_means="the whole split"),
    Rule("reference_seed", SEED, "0"),
)

TRAIN_RULES: tuple[Rule | Choice, ...] = (
    Rule("seed", SEED, "42", null_means="a random seed"),
    Rule("model.optimizer.lr", POSITIVE, "2e-4"),
    Rule("model.optimizer.weight_decay", NON_NEGATIVE, "0.0"),
    Rule("model.optimizer.eps", POSITIVE, "1e-8"),
    Rule("trainer.max_epochs", LIMIT, "100", null_means="Lightning's default"),
    Rule("trainer.min_epochs", NON_NEGATIVE_INT, "1", null_means="no minimum"),
    Rule("trainer.max_steps", LIMIT, "100000"),
    Rule("trainer.min_steps", NON_NEGATIVE_INT, "1000", null_means="no minimum"),
    Rule(
        "trainer.check_val_every_n_epoch",
        POSITIVE_INT,
        "1",
        null_means="validating every trainer.val_check_interval steps",
    ),
    Rule("trainer.log_every_n_steps", POSITIVE_INT, "10"),
    Rule("trainer.accumulate_grad_batches", POSITIVE_INT, "1"),
    Rule("trainer.gradient_clip_val", NON_NEGATIVE, "1.0", null_means="no clipping"),
    Rule("trainer.num_nodes", POSITIVE_INT, "1"),
)


_REQUIRED_EXAMPLES = {  # good values to suggest for required (`???`) keys
    "data.root": "/path/to/images",
    "ckpt_path": "logs/train/runs/<timestamp>/checkpoints/last.ckpt",
}


def run_config_of(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain data, without Hydra's own settings (stored in
    checkpoints, so `sample.py`/`eval.py` rebuild data and model from one file).

    Key by key, so that Hydra's section is dropped without being resolved: composed with
    `return_hydra_config=True` outside a Hydra run, it holds unset values (`hydra.job.num`).
    Raises `ConfigError` naming a required value (`???`) left unset or a `${...}` that does not
    resolve: otherwise a missing `data.root` surfaces as a Hydra traceback halfway through
    building the objects.
    """
    resolved = {}
    for key in (k for k in cfg if k != "hydra"):
        try:
            value = cfg[key]
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
            resolved[key] = value
        except (MissingMandatoryValue, InterpolationResolutionError) as err:
            full_key = str(getattr(err, "full_key", None) or key)
            if isinstance(err, MissingMandatoryValue):
                example = _REQUIRED_EXAMPLES.get(full_key, "<value>")
                raise ConfigError(
                    f"{full_key} is required but not set (it is ??? in the config): give it on "
                    f"the command line, e.g. {full_key}={example}."
                ) from None
            # OmegaConf's message without its `full_key:`/`object_type=` footer and type prefix
            text = str(err).split("\n    full_key:")[0].strip()
            text = text.partition(" raised while resolving interpolation: ")[2] or text
            raise ConfigError(f"{full_key} cannot be computed: {text}") from None
    return resolved


def check_device(key: str, device: Any) -> None:
    """`device` (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`) names a device this machine has."""
    if device in (None, "auto", "cpu"):
        return
    fix = f"use {key}=auto (a GPU when there is one, else the CPU) or {key}=cpu."
    try:
        parsed = torch.device(str(device))
    except RuntimeError:
        raise ConfigError(
            f"{key}={shown(device)} is not a device: use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key}={device} but torch finds no CUDA GPU on this machine: {fix}")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"{key}={device} but torch finds only {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1}): pick one of those, or {fix}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={device} but this machine has no Apple-GPU (MPS): {fix}")


def check_accelerator(cfg: DictConfig) -> None:
    """`trainer.accelerator=gpu|cuda|mps` needs that device (Lightning's error is a traceback)."""
    accelerator = cfg.get("trainer", {}).get("accelerator")
    fix = "use trainer.accelerator=auto (a GPU when there is one, else the CPU) or trainer=cpu."
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        if torch.backends.mps.is_available() and accelerator == "gpu":
            return  # Lightning's "gpu" is the Apple GPU on a Mac
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch finds no CUDA GPU on this machine: {fix}"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.accelerator=mps but this machine has no Apple GPU (MPS): {fix}")


def _target_is(node: Any, target: str) -> bool:
    """`node` is a config built by our `target` (the default when it names no `_target_`)."""
    return isinstance(node, DictConfig) and node.get("_target_", target) == target


def check_model_config(cfg: DictConfig) -> None:
    """The checks of our own objects on their configs: the data module's and the
    LightningModule's values, the diffusion process (built), the U-Net's (values, one attention
    flag per level) and the image size its levels can halve. Another network or data module
    (`_target_`) checks its own."""
    with _as_config_error():
        if _target_is(cfg.get("data"), "ddpm_unet.data.ImageDataModule"):
            check_values(cfg, DATA_RULES, prefix="data.")
        if _target_is(cfg.model, "ddpm_unet.models.lit_diffusion.LitDiffusion"):
            check_values(cfg, LIT_RULES, prefix="model.")
        diffusion = cfg.model.get("diffusion")
        if _target_is(diffusion, "ddpm_unet.models.diffusion.GaussianDiffusion"):
            # Built here (a few tables of T floats): its own checks, and its schedule's, run once.
            GaussianDiffusion(**{k: v for k, v in diffusion.items() if k != "_target_"})
        net = cfg.model.get("net")
        if not _target_is(net, "ddpm_unet.models.unet.UNet"):
            return
        check_unet_arguments(net, prefix="model.net.")
        if "ch_mults" in net and "image_size" in cfg.get("data", {}):
            check_image_size(
                cfg.data.image_size, net.ch_mults, "data.image_size", "model.net.ch_mults"
            )


def check_trainer_config(cfg: DictConfig) -> None:
    """The global batch splits evenly over the ranks, when the rank count is known up front."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    batch_size = cfg.data.get("batch_size")
    if isinstance(devices, int) and devices > 0 and batch_size is not None:
        world = f"trainer.devices={devices} x trainer.num_nodes={nodes}"
        with _as_config_error():
            per_device_batch_size(int(batch_size), devices * int(nodes), world)


def check_schedule_config(cfg: DictConfig) -> None:
    """The learning-rate schedule's own checks; a decaying rate needs to know where the run ends
    (Lightning's step count, which the schedule sees, is known only once data is loaded)."""
    scheduler = cfg.model.get("scheduler")
    if not scheduler or scheduler.get("_target_") != "ddpm_unet.models.lr_schedules.warmup_cosine":
        return
    decay = scheduler.get("decay", "none")
    with _as_config_error():
        check_warmup_cosine(
            scheduler.get("warmup_steps", 0), decay, scheduler.get("min_lr_ratio", 0.0)
        )
    if decay != "cosine":
        return
    max_steps = cfg.trainer.get("max_steps", -1)
    max_epochs = cfg.trainer.get("max_epochs")
    # max_epochs=null with no max_steps is Lightning's default of 1000 epochs: a known length.
    if (max_steps is None or max_steps < 0) and max_epochs is not None and max_epochs < 0:
        raise ConfigError(
            f"model.scheduler.decay=cosine needs a known run length, but trainer.max_steps="
            f"{max_steps} and trainer.max_epochs={max_epochs}: set one of them, or use "
            "model.scheduler.decay=none."
        )


def check_sampler(cfg: DictConfig, key: str) -> None:
    """The sampler config at `key` builds (the sampler checks its own settings)."""
    from ddpm_unet.models.samplers import build_sampler

    sampler = OmegaConf.select(cfg, key)
    if sampler is not None:  # absent, or null: DDPM
        try:
            build_sampler(sampler)
        except UserError as err:  # the sampler names its own arguments: prefix the key (C1)
            raise ConfigError(f"{key}: {err}") from None


def check_generation_config(cfg: DictConfig, rules: Sequence[Rule | Choice]) -> None:
    """What `sample.py` and `eval.py` check before the checkpoint is read: their `rules`, the
    generation settings, the sampler, the device or the trainer's accelerator (`trainer=ddp`
    without a GPU: one line, not Lightning's traceback)."""
    from ddpm_unet.generation.core import GENERATION_RULES

    run_config_of(cfg)  # every `???` set, every `${...}` resolves
    check_values(cfg, [*rules, *GENERATION_RULES])
    check_sampler(cfg, "sampler")
    check_device("device", cfg.get("device"))
    if "trainer" in cfg:
        check_accelerator(cfg)


def check_sample_config(cfg: DictConfig) -> None:
    """`sample.py`'s values; raises `ConfigError`."""
    check_generation_config(cfg, SAMPLE_RULES)


def check_eval_config(cfg: DictConfig) -> None:
    """`eval.py`'s values; raises `ConfigError`."""
    check_generation_config(cfg, EVAL_RULES)


def check_callback_config(cfg: DictConfig) -> None:
    """The grid and FID callbacks' own rules, on their config blocks (when they are ours)."""
    from ddpm_unet.callbacks.fid import FID_RULES
    from ddpm_unet.callbacks.sample_grid import SAMPLE_GRID_RULES

    callbacks = cfg.get("callbacks") or {}
    for key, name, rules in (
        ("sample_grid", "SampleGrid", SAMPLE_GRID_RULES),
        ("fid", "FIDCallback", FID_RULES),
    ):
        target = str(callbacks[key].get("_target_")) if callbacks.get(key) else ""
        # ours under either import path (ddpm_unet.callbacks.X or ddpm_unet.callbacks.module.X)
        if target.startswith("ddpm_unet.callbacks.") and target.endswith(f".{name}"):
            check_values(cfg, rules, prefix=f"callbacks.{key}.")


def check_train_config(cfg: DictConfig) -> None:
    """Every check that needs only the config; raises `ConfigError`."""
    run_config_of(cfg)  # every `???` set, every `${...}` resolves
    check_values(cfg, TRAIN_RULES)
    check_callback_config(cfg)
    check_accelerator(cfg)
    check_model_config(cfg)
    check_trainer_config(cfg)
    check_schedule_config(cfg)
    for key in ("callbacks.sample_grid.sampler", "callbacks.fid.sampler"):
        check_sampler(cfg, key)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        # Read as data only; a file that is no resumable checkpoint of this model (or of
        # another architecture) stops here, before any data is read. Raises CheckpointError.
        from ddpm_unet.utils.checkpoint import check_resume_checkpoint

        check_resume_checkpoint(ckpt_path, cfg.model)
