"""ddpm-unet: the DDPM U-Net as a PyTorch Lightning + Hydra research template."""

from ddpm_unet.utils.logging_setup import ignore_known_upstream_warnings
from ddpm_unet.utils.resolvers import register_resolvers

register_resolvers()
ignore_known_upstream_warnings()

__version__ = "0.1.0"
