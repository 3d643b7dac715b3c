"""Build callbacks and loggers from their config groups (lightning-hydra-template style)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from ddpm_unet.utils.config_checks import build
from ddpm_unet.utils.errors import ConfigError


def _instantiate_group(group: DictConfig | None, what: str) -> list:
    """`name -> config` entries of `group` built in order (an object's error under its key,
    `callbacks.<name>`); null entries (disabled from the command line, e.g.
    `callbacks.sample_grid=null`) skipped."""
    objects = []
    for name, conf in (group or {}).items():
        if conf is not None and (not isinstance(conf, DictConfig) or "_target_" not in conf):
            raise ConfigError(
                f"{what}.{name} has no _target_: each entry of configs/{what}/ must name the "
                "class to build (or be null to disable it)."
            )
        if conf is not None:
            objects.append(build(conf, f"{what}.{name}"))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    """`cfg.callbacks` -> Lightning `Callback`s."""
    return _instantiate_group(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """`cfg.logger` -> Lightning `Logger`s."""
    return _instantiate_group(cfg, "logger")
