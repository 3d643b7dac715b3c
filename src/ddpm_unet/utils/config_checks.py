"""The one boundary between config keys and objects: the only code that knows where a value sits.

Objects check their own arguments under their own names; `build(cfg, key)` reports such an error
as `ConfigError("<key>: <message>")`. The values no object checks (the seed, the trainer's
counters Lightning takes unchecked, the optimiser's numbers torch checks only once training
starts, sample.py/eval.py's settings) are declared below as key -> kind. Everything is built
before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from ddpm_unet.utils.errors import ConfigError

__all__ = ["ConfigError", "build", "check_train_config", "check_sample_config", "run_config_of"]


def shown(value: Any) -> str:
    """A value as the user types it: strings quoted, None as null, booleans as true/false."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


class Number(NamedTuple):
    """A config value that is a number (`whole`: an integer) for which `ok` holds; `words` says
    so to the user. `null`: what null means where it is allowed (None: null is an error)."""

    words: str
    ok: Callable[[float], bool]
    whole: bool = True
    null: str | None = None

    def or_null(self, meaning: str) -> Number:
        return self._replace(null=meaning)

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null:
            return
        # bool is an int in Python, but `seed=true` is a mistake, not the number 1
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is None:
            problem = "is not allowed"
        elif not number or (self.whole and not isinstance(value, int)):
            problem = "is not an integer" if self.whole else "is not a number"
        elif math.isnan(value) or not self.ok(value):
            problem = "is out of range"
        else:
            return
        also = f", or null for {self.null}" if self.null else ""
        raise ConfigError(f"{key}={shown(value)} {problem}: give {self.words}{also}.")


POSITIVE_INT = Number("a positive whole number", lambda v: v >= 1)
NON_NEGATIVE_INT = Number("a whole number >= 0", lambda v: v >= 0)
LIMIT = Number("a positive whole number, or -1 for no limit", lambda v: v == -1 or v >= 1)
SEED = Number("a whole number from 0 to 4294967295", lambda v: 0 <= v < 2**32)  # numpy's range
POSITIVE = Number("a number > 0", lambda v: v > 0, whole=False)
NON_NEGATIVE = Number("a number >= 0", lambda v: v >= 0, whole=False)
Kind = Number | tuple[str, ...]  # a number, or one of these words

TRAIN: dict[str, Kind] = {
    "seed": SEED.or_null("a random seed"),
    "model.optimizer.lr": POSITIVE,
    "model.optimizer.weight_decay": NON_NEGATIVE,
    "model.optimizer.eps": POSITIVE,
    "trainer.max_epochs": LIMIT.or_null("Lightning's default"),
    "trainer.min_epochs": NON_NEGATIVE_INT.or_null("no minimum"),
    "trainer.max_steps": LIMIT,
    "trainer.min_steps": NON_NEGATIVE_INT.or_null("no minimum"),
    "trainer.check_val_every_n_epoch": POSITIVE_INT.or_null("trainer.val_check_interval"),
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.gradient_clip_val": NON_NEGATIVE.or_null("no clipping"),
}
SAMPLING: dict[str, Kind] = {  # every command that samples
    "batch_size": POSITIVE_INT.or_null("all images at once"),
    "model_batch": POSITIVE_INT,
    "seed": SEED.or_null("a random seed"),
}
SAMPLE: dict[str, Kind] = {
    **SAMPLING,
    "num_samples": POSITIVE_INT,
    "nrow": POSITIVE_INT.or_null("about sqrt(num_samples)"),
    "upscale": POSITIVE_INT.or_null("tiny images to >= 32 px"),
}
EVAL: dict[str, Kind] = {
    **SAMPLING,
    "num_samples": Number("a whole number >= 2", lambda v: v >= 2),
    "kid_subsets": POSITIVE_INT,
    "kid_subset_size": POSITIVE_INT,
    "isc_splits": POSITIVE_INT,
    "fidelity_batch_size": POSITIVE_INT,
    "reference_split": ("train", "val"),
    "num_reference": POSITIVE_INT.or_null("the whole split"),
    "reference_seed": SEED,
}
_ABSENT = object()


def check_values(cfg: DictConfig, kinds: Mapping[str, Kind]) -> None:
    """Raise `ConfigError` at the first key of `kinds` whose value in `cfg` is not of its kind
    (keys absent from `cfg` are not checked)."""
    for key, kind in kinds.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if isinstance(kind, Number):
            kind.check(key, value)
        elif value not in kind:
            raise ConfigError(f"{key}={shown(value)} is unknown: use one of {', '.join(kind)}.")


def build(node: Any, key: str, **kwargs: Any) -> Any:
    """The object of config `node` (built by Hydra, with `kwargs`), whose key is `key`. An
    argument error (`ValueError`, `TypeError`, `MisconfigurationException`, a `_target_` Hydra
    cannot find) becomes `ConfigError("<key>: <message>")` under the innermost key that failed
    (Hydra's `full_key:`, e.g. `model.net`); `DDPM_UNET_TRACEBACK=1` shows the original."""
    try:
        return instantiate(node, **kwargs, _convert_="object")
    except (ValueError, TypeError, MisconfigurationException, InstantiationException) as raised:
        err, where = raised, key
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            found = re.search(r"^full_key: (\S+)$", str(err), re.MULTILINE)
            where = found.group(1) if found else where
            err = err.__cause__
        if not isinstance(
            err, ValueError | TypeError | MisconfigurationException | InstantiationException
        ):
            raise err from err.__cause__  # a bug (RuntimeError, ...): its own traceback
        message = str(err).split("\nfull_key:")[0].replace("\n", " ")
        raise ConfigError(f"{where}: {message}") from err


def run_config_of(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain data, without Hydra's own settings (stored in
    checkpoints, so `sample.py`/`eval.py` rebuild data and model from one file).

    Key by key, so that Hydra's section is dropped without being resolved. Raises `ConfigError`
    naming a required value (`???`) left unset or a `${...}` that does not resolve.
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
                example = {"data.root": "/path/to/images"}.get(full_key, "<value>")
                if full_key == "ckpt_path":
                    example = "logs/train/runs/<timestamp>/checkpoints/last.ckpt"
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


@dataclass
class TrainObjects:
    """What `train.py` fits, built from one config."""

    model: L.LightningModule
    datamodule: L.LightningDataModule
    callbacks: list[L.Callback]
    loggers: list[Any]
    trainer: L.Trainer


def check_train_config(cfg: DictConfig) -> TrainObjects:
    """Check `cfg` and build every object of the run from it (seeded first, so that the initial
    weights follow `seed`), before anything is written; raises `ConfigError`/`CheckpointError`."""
    from ddpm_unet.utils.checkpoint import check_resume_checkpoint
    from ddpm_unet.utils.instantiate import instantiate_callbacks, instantiate_loggers
    from ddpm_unet.utils.wandb_setup import configure_wandb

    run_config = run_config_of(cfg)  # every `???` set, every `${...}` resolves
    check_values(cfg, TRAIN)
    if cfg.ckpt_path and cfg.init_from:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} and init_from={cfg.init_from} are both set: ckpt_path "
            "resumes a run (its optimiser, schedule and step), init_from starts a new run from "
            "a checkpoint's weights; give one of them."
        )
    if cfg.ckpt_path:  # read as data only; another architecture stops here, before any data
        check_resume_checkpoint(cfg.ckpt_path, cfg.model)
    if cfg.seed is not None:  # `is not None`: seed 0 is a seed
        L.seed_everything(cfg.seed, workers=True)
    model = build(cfg.model, "model")
    model.run_config = run_config
    datamodule = build(cfg.data, "data")
    callbacks = instantiate_callbacks(cfg.callbacks)
    configure_wandb(cfg)
    loggers = instantiate_loggers(cfg.get("logger"))  # absent with logger=null
    if not loggers:  # Lightning refuses a LearningRateMonitor with nothing to log to
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers)
    batch_size = OmegaConf.select(cfg, "data.batch_size")
    if isinstance(batch_size, int) and batch_size % trainer.world_size:
        raise ConfigError(
            f"data.batch_size={batch_size} is the global batch size and must be divisible by the "
            f"world size {trainer.world_size} (trainer.devices x trainer.num_nodes): use e.g. "
            f"data.batch_size={max(1, batch_size // trainer.world_size) * trainer.world_size}."
        )
    # max_epochs=null with no max_steps is Lightning's 1000 epochs: a known length
    decay = OmegaConf.select(cfg, "model.scheduler.decay")
    if decay == "cosine" and trainer.max_steps == -1 and trainer.max_epochs == -1:
        raise ConfigError(
            "model.scheduler.decay=cosine needs a known run length, but trainer.max_steps=-1 "
            "and trainer.max_epochs=-1: set one of them, or use model.scheduler.decay=none."
        )
    return TrainObjects(model, datamodule, callbacks, loggers, trainer)


def check_sample_config(cfg: DictConfig, kinds: Mapping[str, Kind] = SAMPLE) -> Any:
    """What `sample.py` (and, with `EVAL`, `eval.py`) checks before the checkpoint is read; returns
    the built `sampler` (None: DDPM)."""
    run_config_of(cfg)  # every `???` set, every `${...}` resolves
    check_values(cfg, kinds)
    check_device("device", cfg.device)
    return build(cfg.sampler, "sampler") if cfg.get("sampler") is not None else None


def check_eval_config(cfg: DictConfig) -> Any:
    """`eval.py`'s values (see `check_sample_config`)."""
    return check_sample_config(cfg, EVAL)
