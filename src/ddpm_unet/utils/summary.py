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


def summarize_unet(model: UNet, image_size: int, batch_size: int = 1, depth: int = 3) -> str:
    """Return a table of every block's input shape, output shape and parameter count.

    * `model`: any `UNet`; the random input `x` `[batch_size, image_channels, image_size,
      image_size]` and `t` `[batch_size]` get its device and dtype (a model on a GPU or in half
      precision is summarised as it is)
    * `image_size`: a multiple of `2 ** (len(model.ch_mults) - 1)`
    * `depth`: nesting shown; 3 reaches the residual and attention blocks inside each
      `DownBlock` / `UpBlock`, and the layers inside the `MiddleBlock`
    """
    model.check_image_size(image_size)  # here: torchinfo would wrap its error in a generic one
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
        col_names=("input_size", "output_size", "num_params"),
        depth=depth,
        verbose=0,
        # Eval mode: dropout off, and torchinfo restores the model's previous mode afterwards.
        mode="eval",
    )
    # torchinfo 1.8 formats its `Units` str-enum with f-strings, which on Python >= 3.11 prints
    # "(Units.MEGABYTES)" instead of "(M)"; put the unit symbol back.
    return re.sub(r"\(Units\.(\w+)\)", lambda m: f"({Units[m.group(1)].value})", str(statistics))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: build the U-Net from the arguments and print its summary."""
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
    unet_args = vars(parser.parse_args(argv))  # the U-Net's arguments, once the last 3 are out
    shown = [unet_args.pop(key) for key in ("image_size", "batch_size", "depth")]
    unet_args["is_attn"] = [bool(a) for a in unet_args["is_attn"]]
    print(summarize_unet(UNet(**unet_args), *shown))


if __name__ == "__main__":
    main()
