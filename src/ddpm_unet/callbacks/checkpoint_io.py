"""Atomic checkpoint files: a save either leaves the complete new file or the old one, never half.

Lightning's `TorchCheckpointIO` stages the file in `$TMPDIR` and copies it over: not atomic when
`$TMPDIR` is another filesystem than the run folder (tmpfs `/tmp`, logs on NFS), so a kill during
the copy left a truncated `last.ckpt`. Here the temp file is written *beside* the target.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.files import atomic_write

_NOT_WRITABLE = "the folder is not writable: fix its permissions or use another paths.log_dir"
_NOT_A_FOLDER = "a parent of it is a file, not a folder: point paths.log_dir at a folder"
_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or point paths.log_dir at another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or point paths.log_dir elsewhere",
    errno.EACCES: _NOT_WRITABLE,
    errno.EPERM: _NOT_WRITABLE,
    errno.EROFS: "the filesystem is read-only: point paths.log_dir at a writable folder",
    errno.ENOTDIR: _NOT_A_FOLDER,
    errno.EEXIST: _NOT_A_FOLDER,
}


class CheckpointSaveError(UserError):
    """A checkpoint could not be written (disk full, unwritable folder); names the file and the
    fix. A `UserError`: the user fixes it (space, permissions, `paths.log_dir`), not the code."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves go through `atomic_write` (remote URLs unchanged);
    set in configs/trainer/default.yaml (`plugins`)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)  # s3://, gs://: fsspec
            return
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported for local saves ({path}).")
        try:
            atomic_write(path, lambda fh: torch.save(checkpoint, fh))
        except OSError as err:
            hint = _HINTS.get(err.errno or 0, "check that the folder exists and is writable")
            raise CheckpointSaveError(
                f"could not save the checkpoint {path}: {err.strerror or err} ({hint}). "
                f"Nothing partial was left; earlier checkpoints in {Path(path).parent} are intact."
            ) from err
