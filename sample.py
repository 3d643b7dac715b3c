"""Sample images from a checkpoint: `python sample.py ckpt_path=PATH` (configs/sample.yaml)."""

import hydra
from omegaconf import DictConfig

from ddpm_unet.sample import run
from ddpm_unet.utils.cli import exit_on_user_error
from ddpm_unet.utils.logging_setup import ignore_known_upstream_warnings, route_library_logs_to_root
from ddpm_unet.utils.printing import print_config
from ddpm_unet.utils.project_root import anchor_project_root
from ddpm_unet.utils.resolvers import register_resolvers

# logs/ and data/ sit beside this file, wherever the command is started from
anchor_project_root(__file__)
register_resolvers()  # ${project_root:}, ${grid_upscale:...}, ${attn_at:...} in the configs
ignore_known_upstream_warnings()


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    route_library_logs_to_root()  # Lightning's messages into <run>/<task>.log too
    if cfg.extras.get("print_config"):
        print_config(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
