"""Checks of a composed run config that catch bad values and wrong combinations before any work.

Two kinds of check, both raising `ConfigError` (a `UserError`: one line, exit status 2):

* each value on its own: `check_values` walks a declarative table of `Rule(key, kind, example)`
  (is `data.batch_size` a whole number >= 1? is `model.optimizer.lr` > 0?), so a typo such as
  `data.batch_size=abc` names its key instead of failing later inside `int()` or torch;
* combinations (`check_model_config`, `check_trainer_config`, ...), and the values only the
  machine can judge (`check_device`: is there a GPU for `device=cuda`?).

`check_train_config`, `check_sample_config` and `check_eval_config` run them all for one command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from ddpm_unet.models.lr_schedules import check_warmup_cosine
from ddpm_unet.models.unet import check_image_size
from ddpm_unet.utils.errors import UserError

UNET_TARGET = "ddpm_unet.models.unet.UNet"
WARMUP_COSINE_TARGET = "ddpm_unet.models.lr_schedules.warmup_cosine"


class ConfigError(UserError):
    """A config value (or combination) that cannot work; the message names the key and the fix."""


# ------------------------------------------------------------------------------------------------
# one value at a time: a table of rules
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What a value must be: a whole number (`whole`) or any real number, for which `allowed`
    holds; `words` says so to the user ("a positive whole number")."""

    whole: bool
    allowed: Callable[[float], bool]
    words: str


POSITIVE_INT = Kind(True, lambda v: v >= 1, "a positive whole number")
AT_LEAST_TWO = Kind(True, lambda v: v >= 2, "a whole number >= 2")
NON_NEGATIVE_INT = Kind(True, lambda v: v >= 0, "a whole number >= 0")
# numpy's and Lightning's seeding accept 0 .. 2**32 - 1 only.
SEED = Kind(True, lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295")
LIMIT = Kind(True, lambda v: v == -1 or v >= 1, "a positive whole number, or -1 for no limit")
POSITIVE = Kind(False, lambda v: v > 0, "a number > 0")
NON_NEGATIVE = Kind(False, lambda v: v >= 0, "a number >= 0")
OPEN_FRACTION = Kind(False, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
DECAY = Kind(False, lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
FRACTION = Kind(False, lambda v: 0 <= v <= 1, "a number from 0 to 1")


@dataclass(frozen=True)
class Rule:
    """`key` must hold a value of `kind`; `example` is a good value shown in the message.

    `null_means`: null is allowed and means this (e.g. "a random seed"); None: null is an error.
    A key absent from the config (e.g. a callback turned off) is not checked.
    """

    key: str
    kind: Kind
    example: str
    null_means: str | None = None


@dataclass(frozen=True)
class Choice:
    """`key` must be one of `options` (strings)."""

    key: str
    options: tuple[str, ...]


_ABSENT = object()


def _shown(value: Any) -> str:
    """A value as the user would type it back: strings quoted, None as null."""
    return "null" if value is None else repr(value)


def _select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at dotted `key`, or `_ABSENT` when it (or a parent) is not there."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return _ABSENT
    return parent[leaf]


def check_value(key: str, value: Any, kind: Kind, example: str, null_means: str | None) -> None:
    """Raise `ConfigError` unless `value` (the value of `key`) is of `kind`."""
    words = kind.words + (f", or null for {null_means}" if null_means else "")
    fix = f"give {words}, e.g. {key}={example}."
    if value is None:
        if null_means is None:
            raise ConfigError(f"{key}=null is not allowed: {fix}")
        return
    # bool is an int in Python, but `data.batch_size=true` is a mistake, not the number 1.
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = is_int or isinstance(value, float)
    if kind.whole and not is_int:
        raise ConfigError(f"{key}={_shown(value)} is not an integer: {fix}")
    if not is_number:
        raise ConfigError(f"{key}={_shown(value)} is not a number: {fix}")
    if math.isnan(value) or not kind.allowed(value):
        raise ConfigError(f"{key}={_shown(value)} is out of range: {fix}")


def check_values(cfg: DictConfig, rules: Sequence[Rule | Choice]) -> None:
    """Check every key of `rules` that `cfg` has; raise `ConfigError` at the first bad one."""
    for rule in rules:
        value = _select(cfg, rule.key)
        if value is _ABSENT:
            continue
        if isinstance(rule, Choice):
            if value not in rule.options:
                raise ConfigError(
                    f"{rule.key}={_shown(value)} is unknown: use one of "
                    f"{', '.join(rule.options)}, e.g. {rule.key}={rule.options[0]}."
                )
        else:
            check_value(rule.key, value, rule.kind, rule.example, rule.null_means)


# Values set for every command that samples (sample.py, eval.py).
SAMPLING_RULES: tuple[Rule | Choice, ...] = (
    Rule("batch_size", POSITIVE_INT, "256", null_means="all images at once"),
    Rule("seed", SEED, "0", null_means="a random seed"),
    Rule("sampler.steps", POSITIVE_INT, "50"),
    Rule("sampler.eta", NON_NEGATIVE, "0.0"),
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
    Rule("data.batch_size", POSITIVE_INT, "64"),
    Rule("data.image_size", POSITIVE_INT, "32"),
    Rule("data.image_channels", POSITIVE_INT, "3"),
    Rule("data.num_workers", NON_NEGATIVE_INT, "4"),
    Rule("data.val_fraction", OPEN_FRACTION, "0.05"),
    Rule("data.seed", SEED, "0"),
    Rule("data.max_bad_files", NON_NEGATIVE_INT, "10", null_means="skipping any number"),
    Rule("model.net.n_channels", POSITIVE_INT, "64"),
    Rule("model.net.n_blocks", POSITIVE_INT, "2"),
    Rule("model.net.n_groups", POSITIVE_INT, "8"),
    Rule("model.net.n_heads", POSITIVE_INT, "1"),
    Rule("model.net.dropout", DECAY, "0.1"),
    Rule("model.diffusion.num_timesteps", POSITIVE_INT, "1000"),
    Rule("model.diffusion.schedule_kwargs.beta_start", OPEN_FRACTION, "0.0001"),
    Rule("model.diffusion.schedule_kwargs.beta_end", OPEN_FRACTION, "0.02"),
    Rule("model.diffusion.min_snr_gamma", POSITIVE, "5.0"),
    Rule("model.optimizer.lr", POSITIVE, "2e-4"),
    Rule("model.optimizer.weight_decay", NON_NEGATIVE, "0.0"),
    Rule("model.optimizer.eps", POSITIVE, "1e-8"),
    Rule("model.ema_decay", DECAY, "0.9999"),
    Rule("model.val_seed", SEED, "1234"),
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
    Rule("callbacks.sample_grid.every_n_epochs", POSITIVE_INT, "10"),
    Rule("callbacks.sample_grid.num_samples", POSITIVE_INT, "64"),
    Rule("callbacks.sample_grid.sampler.steps", POSITIVE_INT, "100"),
    Rule("callbacks.fid.every_n_epochs", POSITIVE_INT, "50"),
    Rule("callbacks.fid.num_samples", AT_LEAST_TWO, "1000"),
    Rule("callbacks.fid.batch_size", POSITIVE_INT, "250"),
    Rule("callbacks.fid.sampler.steps", POSITIVE_INT, "25"),
)


# ------------------------------------------------------------------------------------------------
# the config as a whole
# ------------------------------------------------------------------------------------------------

# Good values to suggest for required (`???`) keys.
_REQUIRED_EXAMPLES = {
    "data.root": "/path/to/images",
    "ckpt_path": "logs/train/runs/<timestamp>/checkpoints/last.ckpt",
}


def _omegaconf_message(err: Exception) -> str:
    """OmegaConf's message without its `full_key:`/`object_type=` footer and type prefix."""
    text = str(err).split("\n    full_key:")[0].strip()
    _, sep, rest = text.partition(" raised while resolving interpolation: ")
    return rest if sep else text


def check_resolvable(cfg: DictConfig) -> None:
    """Every required value (`???`) is set and every `${...}` resolves, Hydra's section apart.

    Raises `ConfigError` naming the key: otherwise a missing `data.root` surfaces as a Hydra
    traceback halfway through building the objects.
    """
    for key in cfg:
        if key == "hydra":  # Hydra's own settings: resolved (or not) by Hydra, not by us
            continue
        try:
            value = cfg[key]
            if isinstance(value, DictConfig | ListConfig):
                OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            full_key = str(getattr(err, "full_key", None) or key)
            example = _REQUIRED_EXAMPLES.get(full_key, "<value>")
            raise ConfigError(
                f"{full_key} is required but not set (it is ??? in the config): give it on the "
                f"command line, e.g. {full_key}={example}."
            ) from None
        except InterpolationResolutionError as err:
            full_key = str(getattr(err, "full_key", None) or key)
            raise ConfigError(f"{full_key} cannot be computed: {_omegaconf_message(err)}") from None


def check_device(key: str, device: Any) -> None:
    """`device` (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`) names a device this machine has."""
    if device in (None, "auto", "cpu"):
        return
    fix = f"use {key}=auto (a GPU when there is one, else the CPU) or {key}=cpu."
    try:
        parsed = torch.device(str(device))
    except RuntimeError:
        raise ConfigError(
            f"{key}={_shown(device)} is not a device: use auto, cpu, cuda, cuda:N or mps."
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
    """`trainer.accelerator=gpu|cuda|mps` needs that device (Lightning's own error is a
    traceback)."""
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


def check_model_config(cfg: DictConfig) -> None:
    """`model.net` and `data` agree: one attention flag per level, image size fits the levels.

    For the U-Net only: another network (`model.net._target_`) checks its own arguments."""
    net = cfg.model.net
    if net.get("_target_", UNET_TARGET) != UNET_TARGET:
        return
    for key, example in (("ch_mults", "[1,2,2]"), ("is_attn", "[false,true,false]")):
        if not isinstance(net.get(key), ListConfig | list | tuple):
            raise ConfigError(
                f"model.net.{key}={_shown(net.get(key))} is not a list: give one entry per "
                f"resolution, e.g. model.net.{key}={example}."
            )
    ch_mults, is_attn = list(net.ch_mults), list(net.is_attn)
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in ch_mults):
        raise ConfigError(
            f"model.net.ch_mults={ch_mults} must hold positive whole numbers, one per "
            "resolution, e.g. model.net.ch_mults=[1,2,2]."
        )
    if not all(isinstance(flag, bool) for flag in is_attn):
        raise ConfigError(
            f"model.net.is_attn={is_attn} must hold only true/false, one per resolution, e.g. "
            f"model.net.is_attn=[{','.join(['false'] * len(ch_mults))}]."
        )
    if len(ch_mults) == 0:
        raise ConfigError("model.net.ch_mults=[] is empty: give one multiplier per resolution.")
    if len(is_attn) != len(ch_mults):
        raise ConfigError(
            f"model.net.is_attn={is_attn} has {len(is_attn)} entries but model.net.ch_mults="
            f"{ch_mults} has {len(ch_mults)}: give one attention flag per resolution, e.g. "
            f"model.net.is_attn=[{','.join(['false'] * len(ch_mults))}]."
        )
    try:
        check_image_size(
            int(cfg.data.image_size), ch_mults, "data.image_size", "model.net.ch_mults"
        )
    except UserError as err:
        raise ConfigError(str(err)) from None


def check_trainer_config(cfg: DictConfig) -> None:
    """The global batch splits evenly over the ranks, when the rank count is known up front."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    batch_size = cfg.data.get("batch_size")
    if isinstance(devices, int) and devices > 0 and batch_size is not None:
        world = devices * int(nodes)
        if int(batch_size) % world:
            raise ConfigError(
                f"data.batch_size={batch_size} (the global batch) does not split evenly over "
                f"{world} processes (trainer.devices={devices} x trainer.num_nodes={nodes}): "
                f"choose a multiple of {world}."
            )


def check_schedule_config(cfg: DictConfig) -> None:
    """The learning-rate schedule's own checks; a decaying rate needs to know where the run ends
    (Lightning's step count, which the schedule sees, is known only once data is loaded)."""
    scheduler = cfg.model.get("scheduler")
    if scheduler is None or scheduler.get("_target_") != WARMUP_COSINE_TARGET:
        return
    decay = scheduler.get("decay", "none")
    try:
        check_warmup_cosine(
            scheduler.get("warmup_steps", 0), decay, scheduler.get("min_lr_ratio", 0.0)
        )
    except UserError as err:
        raise ConfigError(str(err)) from None
    if decay != "cosine":
        return
    max_steps = cfg.trainer.get("max_steps", -1)
    max_epochs = cfg.trainer.get("max_epochs")
    if (max_steps is None or max_steps < 0) and (max_epochs is None or max_epochs < 0):
        raise ConfigError(
            f"model.scheduler.decay=cosine needs a known run length, but trainer.max_steps="
            f"{max_steps} and trainer.max_epochs={max_epochs}: set one of them, or use "
            "model.scheduler.decay=none."
        )


def check_sampler(cfg: DictConfig, key: str) -> None:
    """The sampler config at `key` builds (the sampler checks its own settings)."""
    from ddpm_unet.models.samplers import build_sampler

    if _select(cfg, key) is _ABSENT:
        return
    try:
        build_sampler(OmegaConf.select(cfg, key), key)
    except UserError as err:
        raise ConfigError(str(err)) from None


def check_sample_config(cfg: DictConfig) -> None:
    """`sample.py`'s values, before the checkpoint is read; raises `ConfigError`."""
    check_resolvable(cfg)
    check_values(cfg, SAMPLE_RULES)
    check_sampler(cfg, "sampler")
    check_device("device", cfg.get("device"))


def check_eval_config(cfg: DictConfig) -> None:
    """`eval.py`'s values, before the checkpoint is read; raises `ConfigError`."""
    check_resolvable(cfg)
    check_values(cfg, EVAL_RULES)
    check_sampler(cfg, "sampler")
    check_device("device", cfg.get("device"))


def check_train_config(cfg: DictConfig) -> None:
    """Every check that needs only the config; raises `ConfigError`."""
    check_resolvable(cfg)
    check_values(cfg, TRAIN_RULES)
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
