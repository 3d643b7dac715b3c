"""Training end to end: fast dev run, overfitting, resuming, the train.py command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from ddpm_unet.models.lr_schedules import lr_factor
from ddpm_unet.sample import load_model
from ddpm_unet.train import fit, run
from ddpm_unet.utils.config_checks import ConfigError
from tests.conftest import ROOT, TINY_OVERRIDES, compose_train


def test_fast_dev_run(tmp_path: Path) -> None:
    cfg = compose_train([*TINY_OVERRIDES, "debug=fdr"], tmp_path)
    metrics = fit(cfg)
    assert metrics["global_step"] == 1
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_overfitting_one_batch_lowers_the_loss(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            "debug=overfit",
            "trainer.max_epochs=40",
            "trainer.detect_anomaly=false",
            "model.optimizer.lr=3e-3",
            "model.net.dropout=0.0",
            "callbacks.sample_grid=null",
            "callbacks.model_checkpoint=null",
        ],
        tmp_path,
    )
    fit(cfg)
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss_step")
    losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(losses) >= 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_checkpoint_holds_ema_and_run_config_and_resume_continues(tmp_path: Path) -> None:
    first = tmp_path / "first"
    cfg = compose_train([*TINY_OVERRIDES, "debug=limit", "trainer.max_epochs=2"], first)
    fit(cfg)
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6  # 2 epochs x 3 batches
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert int(ckpt["state_dict"]["ema.n_averaged"]) == 6
    assert ckpt["run_config"]["data"]["dataset"] == "digits"
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    # EMA differs from the raw weights (it is an average, not a copy)
    w = "net.image_proj.weight"
    assert not torch.equal(
        ckpt["state_dict"][w], ckpt["state_dict"]["ema.module.image_proj.weight"]
    )
    # samples were written by the grid callback
    assert sorted(p.name for p in (first / "samples").glob("*.png"))

    # The model rebuilt from last.ckpt alone (its run_config) has the saved EMA weights.
    restored = load_model(last)
    ema_saved = ckpt["state_dict"]["ema.module.image_proj.weight"]
    assert torch.equal(restored.ema.module.image_proj.weight, ema_saved)

    second = tmp_path / "second"
    cfg2 = compose_train(
        [*TINY_OVERRIDES, "debug=limit", "trainer.max_epochs=3", f"ckpt_path={last}"], second
    )
    metrics = fit(cfg2)
    assert metrics["global_step"] == 9  # continued from 6, one more epoch of 3
    resumed = torch.load(
        second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert int(resumed["state_dict"]["ema.n_averaged"]) == 9
    assert resumed["lr_schedulers"][0]["last_epoch"] == 9
    opt_step = resumed["optimizer_states"][0]["state"][0]["step"]
    assert int(opt_step) == 9


def test_bad_config_combination_fails_before_work(tmp_path: Path) -> None:
    cfg = compose_train([*TINY_OVERRIDES, "model.net.is_attn=[false]"], tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"model.net: is_attn=\[False\] must hold one true/false per entry of ch_mults",
    ):
        run(cfg)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "is_attn" in status["error"]
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            "model.net.ch_mults=[1,2,2,2,2]",
            "model.net.is_attn=[false,false,false,false,false]",
        ],
        tmp_path,
    )
    with pytest.raises(
        ConfigError, match=r"model.net: image_size=8 does not halve through the 5 levels"
    ):
        run(cfg)
    cfg = compose_train([*TINY_OVERRIDES, "ckpt_path=/nonexistent/last.ckpt"], tmp_path)
    with pytest.raises(FileNotFoundError, match="ckpt_path=/nonexistent/last.ckpt does not exist"):
        run(cfg)


def test_lit_module_warmup_and_ema_are_configured(tmp_path: Path) -> None:
    cfg = compose_train(TINY_OVERRIDES, tmp_path)
    with open_dict(cfg):
        cfg.model.scheduler.warmup_steps = 4
        cfg.model.scheduler.decay = "none"  # DDPM's constant rate after the warm-up
    model = instantiate(cfg.model)
    # What configure_optimizers does once a trainer knows the run length.
    opt = model.optimizer_factory(model.net.parameters())
    sched = model.scheduler_factory(opt, total_steps=6)
    assert isinstance(opt, torch.optim.AdamW)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base = cfg.model.optimizer.lr
    assert lrs == pytest.approx([base * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])
    assert not any(p.requires_grad for p in model.ema.parameters())


def test_lr_factor_warms_up_then_decays_on_a_half_cosine() -> None:
    def factor(step: int) -> float:
        return lr_factor(step, warmup=4, total=14, min_ratio=0.1)

    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert factor(14) == pytest.approx(0.1) and factor(20) == pytest.approx(0.1)
    assert lr_factor(1000, warmup=0) == 1.0  # lr_decay=none: constant after the warm-up


def test_cosine_lr_decay_reaches_its_floor_at_the_last_step(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            "debug=limit",
            "trainer.max_epochs=3",  # 3 epochs x 3 batches = 9 optimiser steps
            "model.scheduler.decay=cosine",
            "model.scheduler.min_lr_ratio=0.2",
        ],
        tmp_path,
    )
    fit(cfg)
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("lr")
    lrs = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    base = cfg.model.optimizer.lr
    # Logged before each step: warm-up 0.5, 1.0, then the decay down towards 0.2 at step 9.
    expected = [lr_factor(step, 2, 9, 0.2) * base for step in range(9)]
    assert lrs == pytest.approx(expected)
    assert lrs[2] > lrs[5] > lrs[8] > 0.2 * base
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.2 * base)


def test_cosine_lr_decay_without_a_run_length_is_refused(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            "debug=limit",
            "trainer.max_epochs=-1",
            "trainer.max_time=00:00:00:05",
            "model.scheduler.decay=cosine",
        ],
        tmp_path,
    )
    with pytest.raises(ConfigError, match="model.scheduler.decay=cosine needs a known run length"):
        run(cfg)  # refused by the config checks, before any data or model is built
    assert not (tmp_path / "checkpoints").exists()


def test_channels_last_holds_nhwc_weights_and_gives_the_same_loss(tmp_path: Path) -> None:
    cfg = compose_train([*TINY_OVERRIDES, "debug=fdr", "model.channels_last=true"], tmp_path)
    nhwc = instantiate(cfg.model)
    with open_dict(cfg):
        cfg.model.channels_last = False
    nchw = instantiate(cfg.model)
    nchw.load_state_dict(nhwc.state_dict())
    name = next(n for n, m in nhwc.net.named_modules() if getattr(m, "in_channels", 1) > 1)
    conv_weight = nhwc.net.get_submodule(name).weight  # 1 input channel looks the same either way
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv_weight.is_contiguous()
    ema_weight = nhwc.ema.module.get_submodule(name).weight
    assert ema_weight.is_contiguous(memory_format=torch.channels_last)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, noise = torch.tensor([0, 10, 30, 49]), torch.randn(4, 1, 8, 8)
    batch = x0.contiguous(memory_format=nhwc.memory_format)
    rgb = torch.rand(2, 3, 8, 8).contiguous(
        memory_format=nhwc.memory_format
    )  # 1 channel: either layout
    assert rgb.is_contiguous(memory_format=torch.channels_last) and not rgb.is_contiguous()
    loss_nhwc = nhwc.diffusion.loss(nhwc.net, batch, t, noise)
    loss_nchw = nchw.diffusion.loss(nchw.net, x0, t, noise)
    assert loss_nhwc.item() == pytest.approx(loss_nchw.item(), rel=1e-5)
    metrics = fit(
        compose_train([*TINY_OVERRIDES, "debug=fdr", "model.channels_last=true"], tmp_path)
    )
    assert metrics["global_step"] == 1


def test_train_py_command_writes_run_folder(tmp_path: Path) -> None:
    """`python train.py` as a user runs it: Hydra run dir, config, checkpoint, samples."""
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("callbacks.progress_bar")]
    cmd = [
        sys.executable,
        "train.py",
        *overrides,
        "debug=limit",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "debug" / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "samples" / "final.png").is_file()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
