"""ddpm-unet: the DDPM U-Net as a PyTorch Lightning + Hydra research template.

Importing it changes nothing global: the entry points (train.py, sample.py, eval.py) register
the config resolvers (`ddpm_unet.utils.resolvers.register_resolvers`) and the warning filter
(`ddpm_unet.utils.logging_setup.ignore_known_upstream_warnings`) themselves.
"""

__version__ = "0.1.0"
