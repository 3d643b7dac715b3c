"""DDP under Hydra: one output dir per run whatever the number of ranks, and DDP in multiruns.

Lightning's `ddp` strategy starts ranks 1..N-1 by re-running the command line: under Hydra with
the original arguments (in a multirun `-m` and the whole sweep, a sweep per rank) in
`hydra.run.dir`. Here the ranks re-run *this job* (`hydra.mode=RUN`) in *this job's* folder
(`hydra_ddp_subprocess_cmd`, installed by `ddpm_unet.utils.compat.install_hydra_ddp_launcher`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch.distributed as dist

from ddpm_unet.utils.compat import install_hydra_ddp_launcher

__all__ = ["hydra_ddp_subprocess_cmd", "install_hydra_ddp_launcher", "isolated_distributed_job"]


def hydra_ddp_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    """The command and cwd that start rank `local_rank` of the current Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra_cfg.overrides.task)  # this job's overrides only
    command += [
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",  # the job's folder, shared by all ranks
        "hydra.output_subdir=null",  # rank 0 already wrote .hydra/
        "hydra.mode=RUN",  # a sweep preset may set MULTIRUN; a rank runs one job
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        # rank 0 writes <run>/<task>.log; the others log to their console only (else every
        # message of the run would be in the file once per rank)
        "hydra.job_logging.root.handlers=[console]",
    ]
    return command, get_original_cwd()


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


@contextmanager
def isolated_distributed_job() -> Iterator[None]:
    """Run one job; afterwards restore the DDP env variables and tear down the process group.

    Between multirun jobs in one process, the first job's `LOCAL_RANK`, `WORLD_SIZE`, ... would
    make the next job believe its processes were started externally and wait forever for ranks
    that never come.
    """
    saved = {key: os.environ.get(key) for key in _DDP_ENV}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
