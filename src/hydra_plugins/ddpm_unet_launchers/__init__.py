"""Hydra plugin: the Ray launcher with one resource request per job (`hydra/launcher=ray`)."""

from hydra_plugins.ddpm_unet_launchers.ray_launcher import PerJobRayLauncher

__all__ = ["PerJobRayLauncher"]
