"""FID/KID/IS of a checkpoint: `python eval.py ckpt_path=PATH [overrides]` (configs/eval.yaml)."""

import hydra
from omegaconf import DictConfig

from ddpm_unet.evaluate import run
from ddpm_unet.utils.cli import exit_on_user_error
from ddpm_unet.utils.printing import print_config


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    if cfg.extras.get("print_config"):
        print_config(cfg)
    return float(run(cfg).get("fid", float("nan")))


if __name__ == "__main__":
    main()
