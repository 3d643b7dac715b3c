"""`hydra/sweeper=checked`: Hydra's basic grid sweeper that validates all jobs up front.

Hydra composes each job just before launching it, so a grid such as
`model.net.ch_mults=[1,2],[1,2,2] model.net.is_attn=[false,true],[false,true,false]` would train
the valid jobs and fail the mismatched ones one by one. This sweeper composes every job first and
names all invalid combinations before a single job starts.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ddpm_unet.utils.cli import report_user_error
from ddpm_unet.utils.config_checks import ConfigError, check_model_config


class CheckedBasicSweeper(BasicSweeper):
    """The basic sweeper plus `check_model_config` on every job before the first launch."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.hydra_context is not None and self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        errors = []
        for job in jobs:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
            try:
                check_model_config(job_cfg)
            except (ConfigError, ValueError) as err:
                errors.append(f"  {' '.join(job)}\n    -> {err}")
        if errors:
            # Raised before Hydra starts any job; reported without a traceback (exit status 2).
            report_user_error(
                ConfigError(
                    f"{len(errors)} of {len(jobs)} sweep jobs have invalid configs; no job was "
                    "launched. Fix the sweep (e.g. sweep attn_placement instead of is_attn, see "
                    "configs/hparams_search/unet_arch.yaml):\n" + "\n".join(errors)
                )
            )
        return super().sweep(arguments)
