"""Tests of `ddpm_unet.utils.summary`: the per-block table and its command-line entry."""

from __future__ import annotations

import re

import pytest
import torch

from ddpm_unet.models.unet import UNet
from ddpm_unet.utils.summary import main, summarize_unet

# Small enough to build and run in well under a second, yet with four levels (32/16/8/4 on a
# 32x32 input), attention at two of them, and channel changes at every level.
N_CHANNELS = 32
CH_MULTS = (1, 2, 4, 8)
IS_ATTN = (False, False, True, True)
N_BLOCKS = 2
IMAGE_SIZE = 32

# One table row: "│    └─DownBlock: 2-4    [1, 32, 32, 32]    [1, 32, 32, 32]    --"
ROW = re.compile(r"(\w+): (\d+)-\d+\s+(\[[\d, ]*\]|--)\s+(\[[\d, ]*\]|--)\s+([\d,]+|--)")
BLOCK_KINDS = (
    "TimeEmbedding",
    "ResidualBlock",
    "AttentionBlock",
    "DownBlock",
    "UpBlock",
    "MiddleBlock",
    "Upsample",
    "Downsample",
)


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet(
        image_channels=3,
        n_channels=N_CHANNELS,
        ch_mults=CH_MULTS,
        is_attn=IS_ATTN,
        n_blocks=N_BLOCKS,
    )


@pytest.fixture(scope="module")
def table(model: UNet) -> str:
    return summarize_unet(model, image_size=IMAGE_SIZE)


def _rows(table: str) -> list[tuple[str, str, str]]:
    """`(class name, input shape, output shape)` for every row of the table, in order."""
    return [(m[1], m[3], m[4]) for m in ROW.finditer(table)]


def _shape(channels: int, size: int) -> str:
    return f"[1, {channels}, {size}, {size}]"


def _expected_path() -> list[tuple[str, str, str]]:
    """The U's blocks with their shapes, derived from the configuration by hand.

    First half: level `i` at `32 / 2**i` pixels has `n_blocks` DownBlocks ending with
    `N_CHANNELS * CH_MULTS[i]` channels and a Downsample (not at the last level). Second half:
    `n_blocks` UpBlocks taking `2 * C_i` (feature map + same-level skip), one more taking `C_i` plus
    the previous level's channels, then an Upsample (not at level 0).
    """
    channels = [N_CHANNELS * m for m in CH_MULTS]
    path = []
    c_in = N_CHANNELS
    for i, c in enumerate(channels):
        size = IMAGE_SIZE >> i
        for _ in range(N_BLOCKS):
            path.append(("DownBlock", _shape(c_in, size), _shape(c, size)))
            c_in = c
        if i < len(channels) - 1:
            path.append(("Downsample", _shape(c, size), _shape(c, size // 2)))
    bottom = IMAGE_SIZE >> (len(channels) - 1)
    path.append(("MiddleBlock", _shape(channels[-1], bottom), _shape(channels[-1], bottom)))
    for i in reversed(range(len(channels))):
        size = IMAGE_SIZE >> i
        c = channels[i]
        c_prev = channels[i - 1] if i > 0 else N_CHANNELS
        for _ in range(N_BLOCKS):
            path.append(("UpBlock", _shape(2 * c, size), _shape(c, size)))
        path.append(("UpBlock", _shape(c + c_prev, size), _shape(c_prev, size)))
        if i > 0:
            path.append(("Upsample", _shape(c_prev, size), _shape(c_prev, 2 * size)))
    return path


def test_table_lists_every_block_kind(table: str) -> None:
    names = {name for name, _, _ in _rows(table)}
    for kind in BLOCK_KINDS:
        assert kind in names, f"{kind} missing from the summary"


def test_shapes_at_every_level(table: str) -> None:
    path_kinds = {"DownBlock", "Downsample", "MiddleBlock", "UpBlock", "Upsample"}
    path = [row for row in _rows(table) if row[0] in path_kinds]
    assert path == _expected_path()


def test_ends_of_the_network(table: str) -> None:
    rows = _rows(table)
    assert ("TimeEmbedding", "[1]", f"[1, {4 * N_CHANNELS}]") in rows
    # The image projection is the first top-level Conv2d, the output conv the last.
    convs = [row for row in rows if row[0] == "Conv2d"]
    assert convs[0][1:] == (_shape(3, 32), _shape(N_CHANNELS, 32))
    assert convs[-1][1:] == (_shape(N_CHANNELS, 32), _shape(3, 32))
    unet_row = re.search(r"^UNet\s+(\[[\d, ]*\])\s+(\[[\d, ]*\])", table, re.MULTILINE)
    assert unet_row is not None and unet_row.groups() == (_shape(3, 32), _shape(3, 32))


def test_total_params_match(model: UNet, table: str) -> None:
    total = sum(p.numel() for p in model.parameters())
    assert f"Total params: {total:,}" in table
    assert f"Trainable params: {total:,}" in table


def test_units_are_readable(table: str) -> None:
    # torchinfo's enum formatting on Python >= 3.11 is patched back to "(M)" / "(G)".
    assert "Units." not in table
    assert re.search(r"Total mult-adds \([MGT]\)", table)


def test_mode_and_other_configs(model: UNet) -> None:
    model.train()
    small = UNet(image_channels=1, n_channels=32, ch_mults=(1, 2, 2), is_attn=(False, True, False))
    text = summarize_unet(small, image_size=8, batch_size=2, depth=2)
    assert model.training, "summarising must not leave the model in eval mode"
    assert small.training
    assert f"Total params: {sum(p.numel() for p in small.parameters()):,}" in text
    assert re.search(r"UNet\s+\[2, 1, 8, 8\]\s+\[2, 1, 8, 8\]", text)
    # depth=2 stops at DownBlock / UpBlock: their inner blocks are not listed.
    assert "DownBlock" in text and "ResidualBlock: 3-" not in text


@pytest.mark.parametrize("size", [0, 12, 30])
def test_bad_image_size(model: UNet, size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        summarize_unet(model, image_size=size)


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "--n-channels", "32",
            "--ch-mults", "1", "2", "2",
            "--is-attn", "0", "1", "0",
            "--n-blocks", "1",
            "--image-channels", "1",
            "--image-size", "8",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    reference = UNet(
        image_channels=1,
        n_channels=32,
        ch_mults=(1, 2, 2),
        is_attn=(False, True, False),
        n_blocks=1,
    )
    assert f"Total params: {sum(p.numel() for p in reference.parameters()):,}" in out
    assert re.search(r"UNet\s+\[1, 1, 8, 8\]\s+\[1, 1, 8, 8\]", out)
    assert "AttentionBlock" in out
