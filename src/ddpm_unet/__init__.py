"""ddpm-unet: the DDPM U-Net as a PyTorch Lightning + Hydra research template."""

from ddpm_unet.utils.resolvers import register_resolvers

register_resolvers()

__version__ = "0.1.0"
