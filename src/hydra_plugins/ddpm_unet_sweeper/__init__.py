"""Hydra plugin: the basic sweeper, checking every job's config before launching any."""

from hydra_plugins.ddpm_unet_sweeper.checked_sweeper import CheckedBasicSweeper

__all__ = ["CheckedBasicSweeper"]
