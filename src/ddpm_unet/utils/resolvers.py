"""OmegaConf resolvers used by the configs (`register_resolvers`, called by the entry points)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from omegaconf import OmegaConf

from ddpm_unet.utils.errors import UserError

# attention placement -> how many of the lowest-resolution levels get attention (None: all)
_LOWEST_LEVELS = {"none": 0, "lowest": 1, "lowest_two": 2, "all": None}


def attention_flags(ch_mults: Sequence[int], placement: str) -> list[bool]:
    """One `is_attn` flag per level of `ch_mults`, from a placement valid for any depth.

    * `none`: no attention (the middle block still has its own)
    * `lowest`: the lowest resolution only
    * `lowest_two`: the two lowest resolutions (the spec's default placement)
    * `all`: every level

    Sweeps over `ch_mults` and `placement` can never pair flags and levels of different lengths.
    """
    if placement not in _LOWEST_LEVELS:
        raise UserError(
            f"attn_placement={placement!r} is unknown: use one of {', '.join(_LOWEST_LEVELS)}."
        )
    n = len(ch_mults)
    lowest = _LOWEST_LEVELS[placement]
    return [lowest is None or i >= n - lowest for i in range(n)]


def grid_upscale(image_size: int) -> int:
    """Upscaling factor that shows images of `image_size` px at 32 px or more in sample grids."""
    return max(1, -(-32 // int(image_size)))


def project_root() -> str:
    """`$PROJECT_ROOT` (set by train.py/sample.py/eval.py to their folder), else the launch dir.

    A resolver rather than `${oc.env:PROJECT_ROOT,${hydra:runtime.cwd}}`: OmegaConf resolves a
    default before the lookup, and `hydra.sweep.dir` is computed before Hydra's runtime exists.
    """
    if os.environ.get("PROJECT_ROOT"):
        return os.environ["PROJECT_ROOT"]
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def register_resolvers() -> None:
    """`${attn_at:<ch_mults>,<placement>}` (`attention_flags`), `${grid_upscale:<image_size>}`
    `${project_root:}` and `${is_set:<value>}` (not null)."""
    resolvers = {
        # A ListConfig: OmegaConf wraps a plain list when a value is read, but not when the
        # whole config is resolved (`--cfg job --resolve`, `OmegaConf.resolve`).
        "attn_at": lambda m, p: OmegaConf.create(attention_flags(list(m), str(p))),
        "grid_upscale": grid_upscale,
        "project_root": project_root,
        "is_set": lambda value: value is not None,  # data.with_labels: the net has classes
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
