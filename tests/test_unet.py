"""The U-Net is the spec's network: parameter parity, shapes at every level, validation."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ddpm_unet.models.unet import (
    AttentionBlock,
    DownBlock,
    Downsample,
    MiddleBlock,
    ResidualBlock,
    TimeEmbedding,
    UNet,
    UpBlock,
    Upsample,
    einsum_attention,
)

SPEC_DEFAULT = dict(
    image_channels=3,
    n_channels=64,
    ch_mults=(1, 2, 4, 16),
    is_attn=(False, False, True, True),
    n_blocks=2,
)
DDPM_CIFAR10 = dict(
    image_channels=3,
    n_channels=128,
    ch_mults=(1, 2, 2, 2),
    is_attn=(False, True, False, False),
    n_blocks=2,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def spec_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(**SPEC_DEFAULT).eval()


def test_spec_default_parameter_count_and_shape(spec_unet: UNet) -> None:
    assert n_params(spec_unet) == 168_899_011
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = spec_unet(x, torch.tensor([17]))
    assert out.shape == x.shape


def test_ddpm_cifar10_parameter_count() -> None:
    assert n_params(UNet(**DDPM_CIFAR10)) == 34_974_339


def test_every_block_shape_at_every_level(spec_unet: UNet) -> None:
    """Record each block's input/output shape with hooks and compare with the spec's walk."""
    seen: list[tuple[str, tuple, tuple]] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen.append((type(module).__name__, tuple(args[0].shape[1:]), tuple(output.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in [*spec_unet.down, spec_unet.middle]]
    handles += [m.register_forward_hook(hook) for m in spec_unet.up]
    with torch.no_grad():
        spec_unet(torch.randn(1, 3, 32, 32), torch.tensor([3]))
    for h in handles:
        h.remove()

    expected = [
        # first half: level 0 (64 ch, 32x32) ... level 3 (1024 ch, 4x4)
        ("DownBlock", (64, 32, 32), (64, 32, 32)),
        ("DownBlock", (64, 32, 32), (64, 32, 32)),
        ("Downsample", (64, 32, 32), (64, 16, 16)),
        ("DownBlock", (64, 16, 16), (128, 16, 16)),
        ("DownBlock", (128, 16, 16), (128, 16, 16)),
        ("Downsample", (128, 16, 16), (128, 8, 8)),
        ("DownBlock", (128, 8, 8), (256, 8, 8)),
        ("DownBlock", (256, 8, 8), (256, 8, 8)),
        ("Downsample", (256, 8, 8), (256, 4, 4)),
        ("DownBlock", (256, 4, 4), (1024, 4, 4)),
        ("DownBlock", (1024, 4, 4), (1024, 4, 4)),
        ("MiddleBlock", (1024, 4, 4), (1024, 4, 4)),
        # second half: inputs are [x, skip] concatenated on channels
        ("UpBlock", (2048, 4, 4), (1024, 4, 4)),
        ("UpBlock", (2048, 4, 4), (1024, 4, 4)),
        ("UpBlock", (1280, 4, 4), (256, 4, 4)),
        ("Upsample", (256, 4, 4), (256, 8, 8)),
        ("UpBlock", (512, 8, 8), (256, 8, 8)),
        ("UpBlock", (512, 8, 8), (256, 8, 8)),
        ("UpBlock", (384, 8, 8), (128, 8, 8)),
        ("Upsample", (128, 8, 8), (128, 16, 16)),
        ("UpBlock", (256, 16, 16), (128, 16, 16)),
        ("UpBlock", (256, 16, 16), (128, 16, 16)),
        ("UpBlock", (192, 16, 16), (64, 16, 16)),
        ("Upsample", (64, 16, 16), (64, 32, 32)),
        ("UpBlock", (128, 32, 32), (64, 32, 32)),
        ("UpBlock", (128, 32, 32), (64, 32, 32)),
        ("UpBlock", (128, 32, 32), (64, 32, 32)),
    ]
    assert seen == expected
    # attention sits exactly where is_attn says: levels 2 and 3, and in the middle block
    attn_levels = [
        isinstance(m.attn, AttentionBlock) for m in spec_unet.down if isinstance(m, DownBlock)
    ]
    assert attn_levels == [False, False, False, False, True, True, True, True]


def test_single_blocks_shapes() -> None:
    b, t_ch = 2, 64
    t = torch.randn(b, t_ch)
    assert TimeEmbedding(t_ch)(torch.tensor([0, 999])).shape == (b, t_ch)
    x = torch.randn(b, 32, 8, 8)
    assert ResidualBlock(32, 64, t_ch, n_groups=8)(x, t).shape == (b, 64, 8, 8)
    assert AttentionBlock(32, n_heads=4, n_groups=8)(x).shape == x.shape
    assert DownBlock(32, 64, t_ch, True, n_groups=8)(x, t).shape == (b, 64, 8, 8)
    assert UpBlock(32, 16, t_ch, True, n_groups=8)(torch.randn(b, 48, 8, 8), t).shape == (
        b,
        16,
        8,
        8,
    )
    assert MiddleBlock(32, t_ch, n_groups=8)(x, t).shape == x.shape
    assert Upsample(32)(x, t).shape == (b, 32, 16, 16)
    assert Downsample(32)(x, t).shape == (b, 32, 4, 4)


def test_time_embedding_is_sinusoidal() -> None:
    emb = TimeEmbedding(64)
    feats = emb.sinusoidal_features(torch.tensor([0.0, 5.0]))
    assert feats.shape == (2, 16)
    # t = 0: sines are 0, cosines are 1; the first frequency is 1, so sin(5) at t = 5
    assert torch.allclose(feats[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    assert torch.isclose(feats[1, 0], torch.sin(torch.tensor(5.0)))


@pytest.mark.parametrize("n_heads", [1, 4])
def test_sdpa_attention_matches_spec_einsum(n_heads: int) -> None:
    torch.manual_seed(0)
    sdpa = AttentionBlock(64, n_heads=n_heads, n_groups=8, backend="sdpa")
    ref = AttentionBlock(64, n_heads=n_heads, n_groups=8, backend="einsum")
    ref.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(sdpa(x), ref(x), atol=1e-5)
    q, k, v = torch.randn(3, 2, 16, n_heads, 8).unbind(0)
    out = einsum_attention(q, k, v)
    manual = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / 8**0.5, dim=-1)
    assert torch.allclose(out, torch.einsum("bhij,bjhd->bihd", manual, v), atol=1e-6)


def test_attention_norm_is_used_so_every_parameter_gets_a_gradient() -> None:
    """The seed's unused GroupNorm would leave parameters without gradient (DDP breaks)."""
    model = UNet(
        image_channels=1,
        n_channels=16,
        ch_mults=(1, 2),
        is_attn=(True, True),
        n_blocks=1,
        n_groups=8,
    )
    model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_unet_channels_last_and_multihead() -> None:
    model = UNet(
        image_channels=1,
        n_channels=16,
        ch_mults=(1, 2),
        is_attn=(False, True),
        n_blocks=1,
        n_groups=8,
        n_heads=2,
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0, 10])
    with torch.no_grad():
        ref = model(x, t)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
    assert torch.allclose(ref, cl, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ch_mults=(1, 2), is_attn=(False,)), "is_attn=[False] must hold one true/false per"),
        (dict(ch_mults=(1, 0), is_attn=(False, False)), "ch_mults=[1, 0] must hold whole numbers"),
        (dict(ch_mults=(1, 2), is_attn=(0, 1)), "is_attn=[0, 1] must hold one true/false"),
        (dict(ch_mults="12"), "ch_mults='12' must be a non-empty list"),
        (dict(ch_mults=(), is_attn=()), "ch_mults=() must be a non-empty list"),
        (dict(dropout=1.0), "dropout=1.0 must be a number from 0 up to (not including) 1"),
        (dict(n_channels=20), "n_channels=20 must be a multiple of 8"),
        (dict(n_channels=24, n_groups=32), "n_channels=24 is not divisible by n_groups=32"),
        (
            dict(n_channels=32, ch_mults=(1, 3), is_attn=(False, False), n_groups=64),
            "n_channels=32 is not divisible by n_groups=64",
        ),
        (dict(n_blocks=0), "n_blocks=0 must be a whole number >= 1"),
        (dict(n_blocks=1.5), "n_blocks=1.5 must be a whole number >= 1"),
        (dict(n_channels=32, n_heads=3), "n_heads=3 does not divide the 64 channels"),
        (dict(attn_backend="flash"), "attn_backend='flash' must be 'sdpa' or 'einsum'"),
        (dict(num_classes=0), "num_classes=0 must be a whole number >= 1"),
        (dict(image_size=12), "image_size=12 does not halve through the 4 levels"),
    ],
)
def test_bad_construction_raises_clear_value_error(kwargs: dict, message: str) -> None:
    base = dict(
        image_channels=1,
        n_channels=32,
        ch_mults=(1, 2, 2, 2),
        is_attn=(False, True, False, False),
        n_blocks=1,
        n_groups=8,
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        UNet(**{**base, **kwargs})


TINY = dict(image_channels=1, n_channels=16, ch_mults=(1, 2), is_attn=(False, True), n_blocks=1)


def test_image_size_is_checked_when_built_not_per_forward() -> None:
    with pytest.raises(ValueError, match=r"image_size=9 .*use a positive multiple of 2"):
        UNet(**TINY, n_groups=8, image_size=9)
    model = UNet(**TINY, n_groups=8, image_size=8)
    assert model(torch.randn(1, 1, 8, 8), torch.tensor([0])).shape == (1, 1, 8, 8)


def test_class_conditional_net_adds_one_embedding_and_keeps_the_unconditional_keys() -> None:
    torch.manual_seed(0)
    plain = UNet(**TINY, n_groups=8).eval()
    torch.manual_seed(0)
    cond = UNet(**TINY, n_groups=8, num_classes=10).eval()
    time_channels = 4 * 16
    assert n_params(cond) - n_params(plain) == 11 * time_channels  # 10 classes + "no class"
    assert plain.num_classes is None and cond.num_classes == 10
    # An unconditional checkpoint's keys are those of before: no class_emb entry.
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert extra == {"class_emb.weight"} and not any("class" in k for k in plain.state_dict())
    cond.load_state_dict(plain.state_dict(), strict=False)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 999])
    with torch.no_grad():
        y = torch.tensor([0, 9, 10])
        out = cond(x, t, y)
        assert out.shape == x.shape
        # y=None is the no-class token for every image.
        assert torch.equal(cond(x, t), cond(x, t, torch.full((3,), 10)))
        assert not torch.allclose(cond(x, t, torch.tensor([0, 0, 0])), cond(x, t))
        # Classes act through the time embedding only: a zero class embedding is the plain net.
        cond.class_emb.weight.zero_()
        assert torch.allclose(cond(x, t, y), plain(x, t), atol=1e-6)
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, y)


def test_fractional_timesteps_embed_between_their_neighbours() -> None:
    emb = TimeEmbedding(64)
    feats = emb.sinusoidal_features(torch.tensor([10.0, 10.5, 11.0], dtype=torch.float64))
    assert torch.allclose(feats[1], emb.sinusoidal_features(torch.tensor([10.5]))[0])
    assert not torch.equal(feats[1], feats[0]) and not torch.equal(feats[1], feats[2])
    model = UNet(**TINY, n_groups=8).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([3, 7])), model(x, torch.tensor([3.0, 7.0])))
        assert torch.isfinite(model(x, torch.tensor([3.25, 7.5]))).all()
