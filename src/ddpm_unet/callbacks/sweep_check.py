"""A grid sweep is checked as a whole before its first job starts.

Hydra composes each job just before launching it, so a grid such as
`model.net.ch_mults=[1,2],[1,2,2] model.net.is_attn=[false,true],[false,true,false]` would train
the valid jobs and fail the mismatched ones one by one. `SweepCheck` (configs/hydra/default.yaml)
composes every job of the basic (grid) sweeper first, through Hydra's public config loader and
override parser; other sweepers (Optuna) choose their jobs as they go and are left alone.
"""

from __future__ import annotations

import itertools
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from ddpm_unet.utils.config_checks import build
from ddpm_unet.utils.errors import ConfigError, UserError


def grid_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of every job the basic sweeper will launch for `config` (the multirun's
    config): its `params` and the command line's sweeps, expanded as that sweeper does (a key
    given twice keeps its last value; jobs in the order of the cartesian product)."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += config.hydra.overrides.task
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    choices: dict[str, list[str]] = {}
    for override in parser.parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


class SweepCheck(HydraCallback):
    """Before a basic-sweeper multirun: every job's model and data built from its composed config
    (milliseconds each); one `ConfigError` naming every invalid job (exit status 2, nothing
    launched)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.runtime.choices.get("hydra/sweeper")  # Hydra's default: basic
        if "trainer" not in config or sweeper != "basic":
            return  # not a training grid (sample.py/eval.py, or Optuna)
        loader = GlobalHydra.instance().config_loader()
        jobs = grid_jobs(config)
        errors = []
        for job in jobs:
            try:
                job_cfg = loader.load_sweep_config(config, job)
                build(job_cfg.data, "data")
                build(job_cfg.model, "model")
            except UserError as err:
                errors.append(f"  {' '.join(job)}\n    -> {err}")
        if errors:
            from ddpm_unet.utils.cli import report_user_error

            report_user_error(
                ConfigError(
                    f"{len(errors)} of {len(jobs)} sweep jobs have invalid configs; no job was "
                    "launched. Fix the sweep (e.g. sweep attn_placement instead of is_attn, see "
                    "configs/hparams_search/unet_arch.yaml):\n" + "\n".join(errors)
                )
            )
