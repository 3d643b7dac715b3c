"""The one place that uses a private name of Lightning, which has no public hook for it: the
`subprocess_script._hydra_subprocess_cmd` that builds the command of DDP ranks 1..N-1 under Hydra
(see `ddpm_unet.utils.distributed`). Checked against lightning `CHECKED_LIGHTNING`;
tests/test_distributed.py fails when the name, its signature or the launcher's call of it changes.
"""

from __future__ import annotations

CHECKED_LIGHTNING = "2.6.6"


def install_hydra_ddp_launcher() -> None:
    """Make Lightning's `ddp` launcher start ranks with `hydra_ddp_subprocess_cmd` (idempotent);
    an error, not every rank silently started as a new run, if Lightning renames the function."""
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
