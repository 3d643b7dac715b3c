"""Checks of a composed run config that catch wrong combinations before any work starts."""

from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value (or combination) that cannot work; the message names the key and the fix."""


def check_model_config(cfg: DictConfig) -> None:
    """`model.net` and `data` agree: one attention flag per level, image size fits the levels."""
    net = cfg.model.net
    ch_mults, is_attn = list(net.ch_mults), list(net.is_attn)
    if len(ch_mults) == 0:
        raise ConfigError("model.net.ch_mults=[] is empty: give one multiplier per resolution.")
    if len(is_attn) != len(ch_mults):
        raise ConfigError(
            f"model.net.is_attn={is_attn} has {len(is_attn)} entries but model.net.ch_mults="
            f"{ch_mults} has {len(ch_mults)}: give one attention flag per resolution, e.g. "
            f"model.net.is_attn=[{','.join(['false'] * len(ch_mults))}]."
        )
    factor = 2 ** (len(ch_mults) - 1)
    image_size = int(cfg.data.image_size)
    if image_size % factor:
        raise ConfigError(
            f"data.image_size={image_size} is not divisible by {factor} = 2 ** (len(ch_mults) - 1)"
            f" for model.net.ch_mults={ch_mults}: use fewer levels or a multiple of {factor}."
        )


def check_trainer_config(cfg: DictConfig) -> None:
    """The global batch splits evenly over the ranks, when the rank count is known up front."""
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    batch_size = cfg.data.get("batch_size")
    if isinstance(devices, int) and devices > 0 and batch_size is not None:
        world = devices * int(nodes)
        if int(batch_size) % world:
            raise ConfigError(
                f"data.batch_size={batch_size} (the global batch) does not split evenly over "
                f"{world} processes (trainer.devices={devices} x trainer.num_nodes={nodes}): "
                f"choose a multiple of {world}."
            )


def check_schedule_config(cfg: DictConfig) -> None:
    """A decaying learning rate needs to know where the run ends."""
    if cfg.model.get("lr_decay", "none") != "cosine":
        return
    max_steps = cfg.trainer.get("max_steps", -1)
    max_epochs = cfg.trainer.get("max_epochs")
    if (max_steps is None or max_steps < 0) and (max_epochs is None or max_epochs < 0):
        raise ConfigError(
            f"model.lr_decay=cosine needs a known run length, but trainer.max_steps={max_steps} "
            f"and trainer.max_epochs={max_epochs}: set one of them, or use model.lr_decay=none."
        )


def check_train_config(cfg: DictConfig) -> None:
    """Every check that needs only the config; raises `ConfigError`."""
    check_model_config(cfg)
    check_trainer_config(cfg)
    check_schedule_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        from pathlib import Path

        if not Path(ckpt_path).is_file():
            raise ConfigError(
                f"ckpt_path={ckpt_path} does not exist: point it at a checkpoint such as "
                "logs/train/runs/<timestamp>/checkpoints/last.ckpt."
            )
