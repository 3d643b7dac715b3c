"""The one place that uses a private name of Lightning, because it has no public hook for it.

Lightning's `ddp` strategy starts ranks 1..N-1 by re-running the command line; under Hydra it
builds that command with the private `lightning.pytorch.strategies.launchers.subprocess_script.
_hydra_subprocess_cmd` (the original arguments: in a multirun the whole sweep, once per rank, in
`hydra.run.dir`). `install_hydra_ddp_launcher` replaces it with
`ddpm_unet.utils.distributed.hydra_ddp_subprocess_cmd` (this job, in this job's folder).

Checked against lightning 2.6.6 (`CHECKED_LIGHTNING`); tests/test_distributed.py fails when the
name, its signature or the launcher's call of it changes.
"""

from __future__ import annotations

CHECKED_LIGHTNING = "2.6.6"


def install_hydra_ddp_launcher() -> None:
    """Make Lightning's `ddp` launcher start ranks with `hydra_ddp_subprocess_cmd` (idempotent).

    If a Lightning release renames the function, this stops with an error instead of silently
    starting every rank as a new run.
    """
    import lightning
    from lightning.pytorch.strategies.launchers import subprocess_script

    from ddpm_unet.utils.distributed import hydra_ddp_subprocess_cmd

    if not callable(getattr(subprocess_script, "_hydra_subprocess_cmd", None)):
        raise RuntimeError(
            f"lightning {lightning.__version__} has no "
            "lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd, "
            "which ddpm_unet replaces to start DDP ranks under Hydra (checked against lightning "
            f"{CHECKED_LIGHTNING}): install that version, or update ddpm_unet.utils.compat."
        )
    subprocess_script._hydra_subprocess_cmd = hydra_ddp_subprocess_cmd
