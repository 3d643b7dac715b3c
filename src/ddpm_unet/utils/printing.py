"""Print (and save) the composed config at the start of a run."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    """Print the config as YAML (interpolations resolved where they can be)."""
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves later (e.g. in a job): show it raw
        text = OmegaConf.to_yaml(cfg)
    print(text)
    if "paths" in cfg:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config_tree.log").write_text(text)
