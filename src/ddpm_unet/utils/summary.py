"""A per-block table of a U-Net: input shape, output shape and parameter count of every block.

It runs one forward pass on random data (no gradients, eval mode), so any configuration can be
inspected without training. From the command line:

    python -m ddpm_unet.utils.summary --n-channels 64 --ch-mults 1 2 4 16 --is-attn 0 0 1 1 \
        --n-blocks 2 --image-channels 3 --image-size 32
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

import torch
import torchinfo
from torchinfo.enums import Units

from ddpm_unet.models.unet import UNet
from ddpm_unet.utils.errors import UserError

SUMMARY_COLUMNS = ("input_size", "output_size", "num_params")


def summarize_unet(model: UNet, image_size: int, batch_size: int = 1, depth: int = 3) -> str:
    """Return a table of every block's input shape, output shape and parameter count.

    * `model`: any `UNet`; the random input `x` `[batch_size, image_channels, image_size,
      image_size]` and `t` `[batch_size]` live on its device and `x` has its dtype, so a model
      already moved to a GPU or cast to half precision is summarised as it is
    * `image_size`: height and width of the square input; a multiple of
      `2 ** (len(model.ch_mults) - 1)`
    * `batch_size`: batch dimension of the dummy input (shapes only; 1 is enough)
    * `depth`: nesting shown; 3 reaches the residual and attention blocks inside each
      `DownBlock` / `UpBlock`, and the layers inside the `MiddleBlock`
    """
    # Checked here because torchinfo would wrap the U-Net's own error in a generic one.
    model.check_image_size(image_size)
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1.")
    param = next(model.parameters())
    shape = (batch_size, model.image_channels, image_size, image_size)
    x = torch.randn(shape, device=param.device, dtype=param.dtype)
    # Any step works for shapes; a fixed one keeps the summary deterministic apart from `x`.
    t = torch.full((batch_size,), 500, device=param.device, dtype=torch.long)
    statistics = torchinfo.summary(
        model,
        input_data=[x, t],
        col_names=SUMMARY_COLUMNS,
        depth=depth,
        verbose=0,
        # Eval mode: dropout off, and torchinfo restores the model's previous mode afterwards.
        mode="eval",
    )
    # torchinfo 1.8 formats its `Units` str-enum with f-strings, which on Python >= 3.11 prints
    # "(Units.MEGABYTES)" instead of "(M)"; put the unit symbol back.
    return re.sub(r"\(Units\.(\w+)\)", lambda m: f"({Units[m.group(1)].value})", str(statistics))


def _parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_unet.utils.summary",
        description="Print every U-Net block's input/output shape and parameter count.",
    )
    parser.add_argument("--n-channels", type=int, default=64, help="channels of level 0")
    parser.add_argument(
        "--ch-mults", type=int, nargs="+", default=[1, 2, 4, 16], help="multiplier per level"
    )
    parser.add_argument(
        "--is-attn",
        type=int,
        nargs="+",
        choices=(0, 1),
        default=[0, 0, 1, 1],
        help="1 where a level has self-attention (one flag per level)",
    )
    parser.add_argument("--n-blocks", type=int, default=2, help="DownBlocks per level")
    parser.add_argument("--image-channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32, help="input height and width")
    parser.add_argument("--n-groups", type=int, default=32, help="GroupNorm groups")
    parser.add_argument("--n-heads", type=int, default=1, help="attention heads")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--depth", type=int, default=3, help="nesting depth of the table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: build the U-Net from the arguments and print its summary."""
    args = _parse_args(argv)
    model = UNet(
        image_channels=args.image_channels,
        n_channels=args.n_channels,
        ch_mults=args.ch_mults,
        is_attn=[bool(a) for a in args.is_attn],
        n_blocks=args.n_blocks,
        n_groups=args.n_groups,
        n_heads=args.n_heads,
    )
    print(summarize_unet(model, args.image_size, args.batch_size, args.depth))


if __name__ == "__main__":
    main()
