"""The DDPM U-Net, block by block, with the spec's block names.

`docs/design.md` describes each block ("The network, block by block", with the shapes through the
spec's default network) and where this code departs from the spec ("The spec's quirks"). Shapes
are written `[batch, channels, height, width]` throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.rules import DECAY, POSITIVE_INT, Rule, check_arguments, shown

AttentionBackend = Literal["sdpa", "einsum"]

UNET_RULES: tuple[Rule, ...] = (  # single-valued arguments, also run by the early config check
    Rule("image_channels", POSITIVE_INT, "3"),
    Rule("n_channels", POSITIVE_INT, "64"),
    Rule("n_blocks", POSITIVE_INT, "2"),
    Rule("n_groups", POSITIVE_INT, "8"),
    Rule("n_heads", POSITIVE_INT, "1"),
    Rule("dropout", DECAY, "0.1"),
)


def _check_groups(name: str, channels: int, n_groups: int) -> None:
    """Raise a `UserError` naming `name` when GroupNorm cannot split `channels` into groups."""
    if n_groups < 1 or channels % n_groups != 0:
        raise UserError(
            f"{name}={channels} is not divisible by n_groups={n_groups}: GroupNorm needs every "
            f"group to hold the same number of channels. Choose n_groups dividing {channels} "
            f"or a channel count that is a multiple of {n_groups}."
        )


def check_image_size(
    image_size: int | tuple[int, int],
    ch_mults: Sequence[int],
    size_key: str = "image_size",
    mults_key: str = "ch_mults",
) -> None:
    """Raise `UserError` unless `image_size` (a side, or `(height, width)`) halves
    `len(ch_mults) - 1` times without remainder. The one statement of this rule (the early config
    check passes its config keys as `size_key`/`mults_key`)."""
    factor = 2 ** (len(ch_mults) - 1)
    sides = image_size if isinstance(image_size, tuple) else (image_size,)
    if any(side < 1 or side % factor for side in sides):
        what = "is not a positive multiple of" if min(sides) < 1 else "is not divisible by"
        raise UserError(
            f"{size_key}={'x'.join(map(str, sides))} {what} {factor} = 2 ** (len(ch_mults) - 1) "
            f"for {mults_key}={list(ch_mults)}: use a positive multiple of {factor} (resize the "
            f"images), or fewer levels in {mults_key}."
        )


def check_unet_layout(ch_mults: Any, is_attn: Any, prefix: str = "") -> None:
    """Raise `UserError` unless `ch_mults` and `is_attn` describe the levels: a non-empty list of
    positive whole multipliers and one true/false attention flag per level."""
    m, a = f"{prefix}ch_mults", f"{prefix}is_attn"
    for key, value, example in ((m, ch_mults, "[1,2,2]"), (a, is_attn, "[false,true,false]")):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise UserError(
                f"{key}={shown(value)} is not a list: give one entry per resolution, e.g. "
                f"{key}={example}."
            )
    mults, flags = list(ch_mults), list(is_attn)
    if not mults:
        raise UserError(
            f"{m}={shown(ch_mults)} is empty: give one channel multiplier per resolution, e.g. "
            f"{m}=[1,2,2]."
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in mults):
        raise UserError(
            f"{m}={mults} must hold positive whole numbers, one per resolution, e.g. {m}=[1,2,2]."
        )
    no_attention = f"{a}=[{','.join(['false'] * len(mults))}]"
    if not all(isinstance(flag, bool) for flag in flags):
        raise UserError(
            f"{a}={flags} must hold only true/false, one per resolution, e.g. {no_attention}."
        )
    if len(flags) != len(mults):
        raise UserError(
            f"{a}={flags} has {len(flags)} entries but {m}={mults} has {len(mults)}: give one "
            f"attention flag per resolution, e.g. {no_attention}."
        )


def check_unet_arguments(arguments: Mapping[str, Any], prefix: str = "") -> None:
    """`UNET_RULES` and `check_unet_layout` on the `UNet` keyword arguments in `arguments` (e.g.
    the `model.net` config; absent ones keep their defaults). Raises `UserError` naming
    `prefix + argument`."""
    check_arguments(arguments, [r for r in UNET_RULES if r.key in arguments], prefix)
    if "ch_mults" in arguments and "is_attn" in arguments:
        check_unet_layout(arguments["ch_mults"], arguments["is_attn"], prefix)


class TimeEmbedding(nn.Module):
    """`n_channels // 4` sinusoidal features of the step `t`, then Linear, Swish, Linear.

    * in: `t` `[batch]` (integer or float steps)
    * out: `[batch, n_channels]`
    """

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        if n_channels % 8 != 0 or n_channels < 16:
            raise UserError(
                f"TimeEmbedding n_channels={n_channels} must be a multiple of 8 and at least 16 "
                "(it makes n_channels // 8 sine and as many cosine features)."
            )
        self.n_channels = n_channels
        self.lin1 = nn.Linear(n_channels // 4, n_channels)
        self.act = nn.SiLU()  # Swish
        self.lin2 = nn.Linear(n_channels, n_channels)

    def sinusoidal_features(self, t: torch.Tensor) -> torch.Tensor:
        """`[batch]` -> `[batch, n_channels // 4]`: `sin(t * w_k)` then `cos(t * w_k)`, with
        geometrically spaced `w_k` as in the Transformer's position encoding."""
        half_dim = self.n_channels // 8
        log_step = math.log(10_000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, device=t.device, dtype=torch.float32) * -log_step)
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoidal_features(t).to(self.lin1.weight.dtype)
        return self.lin2(self.act(self.lin1(emb)))


class ResidualBlock(nn.Module):
    """`h = conv1(swish(norm1(x))) + linear(swish(t_emb))`, `h = conv2(dropout(swish(norm2(h))))`,
    out `h + shortcut(x)` (a 1x1 convolution when the channel count changes, else the identity).

    * in: `x` `[batch, in_channels, height, width]`, `t` `[batch, time_channels]`
    * out: `[batch, out_channels, height, width]`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_channels: int,
        n_groups: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_groups("in_channels", in_channels, n_groups)
        _check_groups("out_channels", out_channels, n_groups)
        self.norm1 = nn.GroupNorm(n_groups, in_channels)
        self.act1 = nn.SiLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(n_groups, out_channels)
        self.act2 = nn.SiLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.time_emb = nn.Linear(time_channels, out_channels)
        self.time_act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        # [batch, out_channels, 1, 1]: one shift per channel, broadcast over every pixel.
        h = h + self.time_emb(self.time_act(t))[:, :, None, None]
        h = self.conv2(self.dropout(self.act2(self.norm2(h))))
        return h + self.shortcut(x)


def einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention exactly as the spec writes it, for reference and benchmarks.

    `q, k, v`: `[batch, pixels, heads, d_k]` -> `[batch, pixels, heads, d_k]`. Materialises the
    full `[batch, pixels, pixels, heads]` score tensor.
    """
    scale = q.shape[-1] ** -0.5
    attn = torch.einsum("bihd,bjhd->bijh", q, k) * scale
    attn = attn.softmax(dim=2)
    return torch.einsum("bijh,bjhd->bihd", attn, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention with the pixels as tokens, pre-norm, plus the input.

    * in: `x` `[batch, n_channels, height, width]` (`t` is accepted and ignored, so every block
      has one call signature)
    * out: `[batch, n_channels, height, width]`

    `d_k` defaults to `n_channels // n_heads` (the seed's `d_k = n_channels` for one head).
    """

    def __init__(
        self,
        n_channels: int,
        n_heads: int = 1,
        d_k: int | None = None,
        n_groups: int = 32,
        backend: AttentionBackend = "sdpa",
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise UserError(f"n_heads={n_heads} must be at least 1.")
        if d_k is None:
            if n_channels % n_heads != 0:
                raise UserError(
                    f"n_channels={n_channels} is not divisible by n_heads={n_heads}; choose "
                    "n_heads dividing the channel count of every attention level, or give d_k."
                )
            d_k = n_channels // n_heads
        if backend not in ("sdpa", "einsum"):
            raise UserError(f"backend={backend!r} must be 'sdpa' or 'einsum'.")
        _check_groups("n_channels", n_channels, n_groups)
        self.norm = nn.GroupNorm(n_groups, n_channels)
        self.projection = nn.Linear(n_channels, n_heads * d_k * 3)
        self.output = nn.Linear(n_heads * d_k, n_channels)
        self.n_heads = n_heads
        self.d_k = d_k
        self.backend = backend

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # [b, c, h, w] -> [b, h*w, c]: one token per pixel.
        tokens = x.reshape(batch, channels, height * width).transpose(1, 2)
        normed = self.norm(x).reshape(batch, channels, height * width).transpose(1, 2)
        # [b, h*w, heads, 3 * d_k]: the seed's layout, q|k|v side by side within each head.
        qkv = self.projection(normed).view(batch, -1, self.n_heads, 3 * self.d_k)
        q, k, v = torch.chunk(qkv, 3, dim=-1)  # each [b, h*w, heads, d_k]
        if self.backend == "sdpa":
            # SDPA wants [b, heads, tokens, d_k]; its default scale is d_k ** -0.5, the seed's.
            res = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2)
        else:
            res = einsum_attention(q, k, v)
        res = self.output(res.reshape(batch, -1, self.n_heads * self.d_k)) + tokens  # [b, h*w, c]
        return res.transpose(1, 2).reshape(batch, channels, height, width)


class DownBlock(nn.Module):
    """A `ResidualBlock`, then attention if `has_attn`.

    * in: `x` `[batch, in_channels, height, width]`, `t` `[batch, time_channels]`
    * out: `[batch, out_channels, height, width]`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_channels: int,
        has_attn: bool,
        n_groups: int = 32,
        dropout: float = 0.1,
        n_heads: int = 1,
        attn_backend: AttentionBackend = "sdpa",
    ) -> None:
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, time_channels, n_groups, dropout)
        self.attn: nn.Module = (
            AttentionBlock(out_channels, n_heads, n_groups=n_groups, backend=attn_backend)
            if has_attn
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, t))


class UpBlock(DownBlock):
    """A `DownBlock` over the current map concatenated (on channels) with a skip of
    `out_channels` channels from the first half.

    * in: `x` `[batch, in_channels + out_channels, height, width]`, `t` `[batch, time_channels]`
    * out: `[batch, out_channels, height, width]`
    """

    def __init__(
        self, in_channels: int, out_channels: int, time_channels: int, has_attn: bool, **kwargs: Any
    ) -> None:
        channels = in_channels + out_channels  # the map and its skip, concatenated
        super().__init__(channels, out_channels, time_channels, has_attn, **kwargs)


class MiddleBlock(nn.Module):
    """The bottom of the U: `ResidualBlock`, `AttentionBlock`, `ResidualBlock`.

    * in: `x` `[batch, n_channels, height, width]`, `t` `[batch, time_channels]`
    * out: `[batch, n_channels, height, width]`
    """

    def __init__(
        self,
        n_channels: int,
        time_channels: int,
        n_groups: int = 32,
        dropout: float = 0.1,
        n_heads: int = 1,
        attn_backend: AttentionBackend = "sdpa",
    ) -> None:
        super().__init__()
        self.res1 = ResidualBlock(n_channels, n_channels, time_channels, n_groups, dropout)
        self.attn = AttentionBlock(n_channels, n_heads, n_groups=n_groups, backend=attn_backend)
        self.res2 = ResidualBlock(n_channels, n_channels, time_channels, n_groups, dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, t)), t)


class _Resample(nn.Module):
    """A convolution that changes only the resolution; `t` is accepted and ignored."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Downsample(_Resample):
    """A 3x3 stride-2 convolution: `[batch, c, h, w]` -> `[batch, c, h / 2, w / 2]`."""

    def __init__(self, n_channels: int) -> None:
        super().__init__(nn.Conv2d(n_channels, n_channels, 3, stride=2, padding=1))


class Upsample(_Resample):
    """A 4x4 stride-2 transposed convolution: `[batch, c, h, w]` -> `[batch, c, 2h, 2w]`."""

    def __init__(self, n_channels: int) -> None:
        super().__init__(nn.ConvTranspose2d(n_channels, n_channels, 4, stride=2, padding=1))


class UNet(nn.Module):
    """The DDPM noise-prediction U-Net: `eps = unet(x_t, t)`.

    * `image_channels`: channels of the image (3 for RGB, 1 for grayscale)
    * `n_channels`: channels of the first feature map (the image is projected to it by a 3x3 conv)
    * `ch_mults`: level `i` has `n_channels * ch_mults[i]` channels; there are `len(ch_mults)`
      resolutions, each half the previous one
    * `is_attn`: whether the blocks of level `i` have self-attention
    * `n_blocks`: `DownBlock`s per level (the second half has `n_blocks + 1` `UpBlock`s per level,
      the extra one consuming the skip taken before the level's blocks)
    * `n_groups`: GroupNorm groups in every residual and attention block (the final norm uses 8)
    * `dropout`: dropout rate inside residual blocks
    * `n_heads`: attention heads
    * `attn_backend`: `"sdpa"` (fused `F.scaled_dot_product_attention`, the default) or
      `"einsum"` (the spec's two einsums; for reference and benchmarks)

    * in: `x` `[batch, image_channels, height, width]` with `height` and `width` divisible by
      `2 ** (len(ch_mults) - 1)`; `t` `[batch]`
    * out: `[batch, image_channels, height, width]`
    """

    def __init__(
        self,
        image_channels: int = 3,
        n_channels: int = 64,
        ch_mults: Sequence[int] = (1, 2, 4, 16),
        is_attn: Sequence[bool] = (False, False, True, True),
        n_blocks: int = 2,
        n_groups: int = 32,
        dropout: float = 0.1,
        n_heads: int = 1,
        attn_backend: AttentionBackend = "sdpa",
    ) -> None:
        # Every argument, checked as the early config check checks `model.net` (self is ignored).
        check_unet_arguments(locals())
        super().__init__()
        _check_groups("n_channels", n_channels, n_groups)
        for mult in ch_mults:
            _check_groups(f"n_channels * {mult}", n_channels * mult, n_groups)
        if n_channels % 8 != 0:
            raise UserError(
                f"n_channels={n_channels} must be a multiple of 8: the final GroupNorm has 8 "
                "groups."
            )
        self.image_channels = image_channels
        self.ch_mults = tuple(ch_mults)
        time_channels = n_channels * 4
        options = dict(
            n_groups=n_groups, dropout=dropout, n_heads=n_heads, attn_backend=attn_backend
        )

        self.image_proj = nn.Conv2d(image_channels, n_channels, kernel_size=3, padding=1)
        self.time_emb = TimeEmbedding(time_channels)

        # First half: channels grow level by level, resolution halves between levels. `skips`
        # holds the channel counts of the maps `forward` pushes on its skip stack.
        down: list[nn.Module] = []
        channels = n_channels
        skips = [channels]
        for i, mult in enumerate(ch_mults):
            out = n_channels * mult
            for _ in range(n_blocks):
                down.append(DownBlock(channels, out, time_channels, is_attn[i], **options))
                channels = out
                skips.append(channels)
            if i < len(ch_mults) - 1:
                down.append(Downsample(channels))
                skips.append(channels)
        self.down = nn.ModuleList(down)

        self.middle = MiddleBlock(channels, time_channels, **options)

        # Second half, the mirror image: each UpBlock pops one skip and ends at its channels.
        up: list[nn.Module] = []
        for i in reversed(range(len(ch_mults))):
            for _ in range(n_blocks + 1):
                skip = skips.pop()
                up.append(UpBlock(channels, skip, time_channels, is_attn[i], **options))
                channels = skip
            if i > 0:
                up.append(Upsample(channels))
        self.up = nn.ModuleList(up)

        self.norm = nn.GroupNorm(8, n_channels)
        self.act = nn.SiLU()
        self.final = nn.Conv2d(n_channels, image_channels, kernel_size=3, padding=1)

    def check_image_size(self, image_size: int, size_key: str = "image_size") -> None:
        """Raise `UserError` unless square images of `image_size` fit this U-Net's levels."""
        check_image_size(image_size, self.ch_mults, size_key)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_image_size(tuple(x.shape[-2:]), self.ch_mults)  # else a size mismatch in torch.cat
        t = self.time_emb(t)  # [b] -> [b, 4 * n_channels]
        x = self.image_proj(x)  # [b, image_channels, h, w] -> [b, n_channels, h, w]
        skips = [x]
        for module in self.down:
            x = module(x, t)
            skips.append(x)
        x = self.middle(x, t)
        for module in self.up:
            if isinstance(module, Upsample):
                x = module(x, t)
            else:
                x = module(torch.cat((x, skips.pop()), dim=1), t)
        return self.final(self.act(self.norm(x)))
