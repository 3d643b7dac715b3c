"""Sample images from a checkpoint: `python sample.py ckpt_path=PATH` (configs/sample.yaml)."""

import hydra
from omegaconf import DictConfig

from ddpm_unet.sample import run
from ddpm_unet.utils.cli import exit_on_user_error
from ddpm_unet.utils.printing import print_config


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if cfg.extras.get("print_config"):
        print_config(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
