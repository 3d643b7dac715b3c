"""A model config's network as `UNet` keyword arguments, so that a benchmark measures what
`python train.py model=<name> data=<data>` trains instead of a copy of its layout that can go
stale (as a hand-written `unet_small` did when the default went from two blocks to one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ddpm_unet.utils.resolvers import register_resolvers

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def net_kwargs(model: str = "unet_small", data: str = "digits", **overrides: Any) -> dict[str, Any]:
    """`cfg.model.net` of the composed train config, resolved, without `_target_`; `overrides`
    replace single arguments (e.g. `n_blocks=2` for the previous default)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data={data}"])
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    assert isinstance(net, dict)
    net.pop("_target_")
    return {**net, **overrides}
