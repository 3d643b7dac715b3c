"""OmegaConf resolvers used by the configs (registered when `ddpm_unet` is imported)."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import OmegaConf

ATTN_PLACEMENTS = ("none", "lowest", "lowest_two", "all")


def attention_flags(ch_mults: Sequence[int], placement: str) -> list[bool]:
    """One `is_attn` flag per level of `ch_mults`, from a placement valid for any depth.

    * `none`: no attention (the middle block still has its own)
    * `lowest`: the lowest resolution only
    * `lowest_two`: the two lowest resolutions (the spec's default placement)
    * `all`: every level

    Sweeps over `ch_mults` and `placement` can never pair flags and levels of different lengths.
    """
    n = len(ch_mults)
    if placement not in ATTN_PLACEMENTS:
        raise ValueError(
            f"attn_placement={placement!r} is unknown: use one of {', '.join(ATTN_PLACEMENTS)}."
        )
    lowest = {"none": 0, "lowest": 1, "lowest_two": 2, "all": n}[placement]
    return [i >= n - lowest for i in range(n)]


def grid_upscale(image_size: int) -> int:
    """Upscaling factor that shows images of `image_size` px at 32 px or more in sample grids."""
    return max(1, -(-32 // int(image_size)))


def register_resolvers() -> None:
    """`${attn_at:<ch_mults>,<placement>}` -> list of bools (see `attention_flags`);
    `${grid_upscale:<image_size>}` -> int (see `grid_upscale`)."""
    if not OmegaConf.has_resolver("attn_at"):
        OmegaConf.register_new_resolver("attn_at", lambda m, p: attention_flags(list(m), str(p)))
    if not OmegaConf.has_resolver("grid_upscale"):
        OmegaConf.register_new_resolver("grid_upscale", grid_upscale)
