"""Build callbacks and loggers from their config groups (lightning-hydra-template style)."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from ddpm_unet.utils.errors import UserError


def _instantiate_group(group: DictConfig | None, what: str) -> list:
    """`name -> config` entries of `group` built in order; null entries (disabled from the
    command line, e.g. `callbacks.sample_grid=null`) skipped."""
    if group is None:
        return []
    if not isinstance(group, DictConfig):
        raise TypeError(f"the {what} config must be a mapping of name -> config, got {group!r}")
    objects = []
    for name, conf in group.items():
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise UserError(
                f"{what}.{name} has no _target_: each entry of configs/{what}/ must name the "
                "class to build (or be null to disable it)."
            )
        objects.append(instantiate(conf, _convert_="object"))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    """`cfg.callbacks` -> Lightning `Callback`s."""
    return _instantiate_group(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """`cfg.logger` -> Lightning `Logger`s."""
    return _instantiate_group(cfg, "logger")
