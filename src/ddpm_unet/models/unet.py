"""The DDPM U-Net, block by block, with the spec's block names.

`docs/design.md` describes each block ("The network, block by block", with the shapes through the
spec's default network) and where this code departs from the spec ("The spec's quirks"). Shapes
are written `[batch, channels, height, width]` throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_unet.utils.errors import UserError

AttentionBackend = Literal["sdpa", "einsum"]


class TimeEmbedding(nn.Module):
    """`n_channels // 4` sinusoidal features of the step `t`, then Linear, Swish, Linear.

    * in: `t` `[batch]` (integer or float steps)
    * out: `[batch, n_channels]`
    """

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.n_channels = n_channels  # a multiple of 8, >= 16: n_channels // 8 sines and cosines
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

    Each head has `d_k = n_channels // n_heads` dimensions (the seed's `d_k = n_channels` for one).
    """

    def __init__(
        self,
        n_channels: int,
        n_heads: int = 1,
        n_groups: int = 32,
        backend: AttentionBackend = "sdpa",
    ) -> None:
        super().__init__()
        d_k = n_channels // n_heads
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
    """The DDPM noise-prediction U-Net: `eps = unet(x_t, t)`, or `unet(x_t, t, y)` with classes.

    * `image_channels`: channels of the image (3 for RGB, 1 for grayscale)
    * `n_channels`: channels of the first feature map (a 3x3 conv projects the image to it); a
      multiple of 8 (the final GroupNorm has 8 groups)
    * `ch_mults`: level `i` has `n_channels * ch_mults[i]` channels; there are `len(ch_mults)`
      resolutions, each half the previous one
    * `is_attn`: whether the blocks of level `i` have self-attention
    * `n_blocks`: `DownBlock`s per level (the second half has `n_blocks + 1` `UpBlock`s per level,
      the extra one consuming the skip taken before the level's blocks)
    * `n_groups`: GroupNorm groups in every residual and attention block (the final norm uses 8)
    * `dropout` (inside residual blocks), `n_heads` (attention heads)
    * `attn_backend`: `"sdpa"` (fused `F.scaled_dot_product_attention`, the default) or
      `"einsum"` (the spec's two einsums; for reference and benchmarks)
    * `image_size`: if given, checked here to halve through the levels (`check_image_size`)
    * `num_classes`: None for an unconditional net; else a class embedding (`num_classes + 1`
      rows, the last one the "no class" token) is added to the time embedding, as in
      guided-diffusion and diffusers' `UNet2DModel(num_class_embeds=...)`

    * in: `x` `[batch, image_channels, height, width]` with `height` and `width` divisible by
      `2 ** (len(ch_mults) - 1)`; `t` `[batch]` (integer or fractional steps); `y` `[batch]`
      int64 class ids in `[0, num_classes]` (`num_classes`: no class), or None: all no class
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
        image_size: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.ch_mults = _check_arguments(**locals())
        if image_size is not None:
            self.check_image_size(image_size)
        self.image_channels = image_channels
        self.num_classes = num_classes
        time_channels = n_channels * 4
        options = dict(
            n_groups=n_groups, dropout=dropout, n_heads=n_heads, attn_backend=attn_backend
        )

        self.image_proj = nn.Conv2d(image_channels, n_channels, kernel_size=3, padding=1)
        self.time_emb = TimeEmbedding(time_channels)
        # A plain attribute when unconditional: the state_dict keeps its pre-class keys.
        self.class_emb: nn.Embedding | None = (
            None if num_classes is None else nn.Embedding(num_classes + 1, time_channels)
        )

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

    def check_image_size(self, image_size: int) -> None:
        """Raise `UserError` unless square images of side `image_size` halve without remainder
        through this U-Net's levels (else the skips and the up path differ in size)."""
        factor = 2 ** (len(self.ch_mults) - 1)
        if not _is_whole(image_size) or image_size % factor:
            raise UserError(
                f"image_size={image_size!r} does not halve through the {len(self.ch_mults)} "
                f"levels of ch_mults={list(self.ch_mults)}: use a positive multiple of {factor} "
                "(resize the images), or fewer levels."
            )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = self.time_emb(t)  # [b] -> [b, 4 * n_channels]
        if self.class_emb is not None:
            if y is None:  # all "no class": the unconditional model
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            t = t + self.class_emb(y)  # [b, 4 * n_channels]
        elif y is not None:
            raise ValueError("y was given, but this UNet is unconditional (num_classes=None).")
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


def _is_whole(value: Any, low: int = 1) -> bool:
    """Whether `value` is an int (not a bool) >= `low`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_arguments(
    image_channels: Any,
    n_channels: Any,
    ch_mults: Any,
    is_attn: Any,
    n_blocks: Any,
    n_groups: Any,
    dropout: Any,
    n_heads: Any,
    attn_backend: Any,
    num_classes: Any,
    **_: Any,
) -> tuple[int, ...]:
    """`UNet`'s checks of its arguments, each once (GroupNorm's divisibility here only);
    returns `ch_mults` as a tuple."""
    whole = dict(
        image_channels=image_channels, n_channels=n_channels, n_blocks=n_blocks,
        n_groups=n_groups, n_heads=n_heads, num_classes=num_classes,
    )  # fmt: skip
    for name, value in whole.items():
        if not _is_whole(value) and not (name == "num_classes" and value is None):
            raise UserError(f"{name}={value!r} must be a whole number >= 1.")
    if isinstance(ch_mults, str) or not isinstance(ch_mults, Sequence) or not ch_mults:
        raise UserError(
            f"ch_mults={ch_mults!r} must be a non-empty list, one channel multiplier per "
            "resolution, e.g. [1, 2, 2]."
        )
    mults = tuple(ch_mults)
    if not all(_is_whole(m) for m in mults):
        raise UserError(f"ch_mults={list(mults)} must hold whole numbers >= 1, e.g. [1, 2, 2].")
    flags = list(is_attn) if isinstance(is_attn, Sequence) and not isinstance(is_attn, str) else []
    if len(flags) != len(mults) or not all(isinstance(f, bool) for f in flags):
        raise UserError(
            f"is_attn={flags or is_attn!r} must hold one true/false per entry of ch_mults="
            f"{list(mults)}, e.g. {[False] * len(mults)}."
        )
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(f"dropout={dropout!r} must be a number from 0 up to (not including) 1.")
    if attn_backend not in ("sdpa", "einsum"):
        raise UserError(f"attn_backend={attn_backend!r} must be 'sdpa' or 'einsum'.")
    if n_channels % 8:
        raise UserError(
            f"n_channels={n_channels} must be a multiple of 8: the final GroupNorm has 8 groups."
        )
    # Every map has n_channels times a whole number of channels: this is GroupNorm's one check.
    if n_channels % n_groups:
        raise UserError(
            f"n_channels={n_channels} is not divisible by n_groups={n_groups}: GroupNorm needs "
            "every group to hold the same number of channels; choose n_groups dividing it."
        )
    for i, channels in enumerate(n_channels * m for m in mults):
        if (flags[i] or i == len(mults) - 1) and channels % n_heads:
            raise UserError(
                f"n_heads={n_heads} does not divide the {channels} channels of attention level "
                f"{i} (n_channels * ch_mults[{i}]): choose n_heads dividing them."
            )
    return mults
