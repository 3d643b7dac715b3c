"""Atomic checkpoint files: a save either leaves the complete new file or the old one, never half.

Lightning's `TorchCheckpointIO` serialises to memory and writes through an fsspec transaction,
which stages the file in `$TMPDIR` and copies it over: when `$TMPDIR` is another filesystem than
the run folder (tmpfs `/tmp`, logs on NFS) the copy is not atomic, and a kill during it leaves a
truncated `last.ckpt` plus temp files. Here the bytes go to `<file>.tmp-<pid>` *beside* the target,
are fsync'ed, and `os.replace` swaps them in (atomic within one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm_unet.utils.errors import UserError

_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or point paths.log_dir at another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or point paths.log_dir elsewhere",
    errno.EACCES: "the folder is not writable: fix its permissions or use another paths.log_dir",
    errno.EPERM: "the folder is not writable: fix its permissions or use another paths.log_dir",
    errno.EROFS: "the filesystem is read-only: point paths.log_dir at a writable folder",
    errno.ENOTDIR: "a parent of it is a file, not a folder: point paths.log_dir at a folder",
    errno.EEXIST: "a parent of it is a file, not a folder: point paths.log_dir at a folder",
}


class CheckpointSaveError(UserError):
    """A checkpoint could not be written (disk full, unwritable folder); names the file and the fix.

    A `UserError` so that the command line reports it as one message, not a traceback: it is
    fixed by the user (space, permissions, `paths.log_dir`), not in the code.
    """


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` atomically: `write(fileobj)` fills `<path>.tmp-<pid>`, then fsync + rename.

    On any failure the temp file is removed and the previous `path` (if any) is left untouched.

    Raises:
        CheckpointSaveError: the folder cannot be created or the file cannot be written.
    """
    target = Path(path)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, target)
        _fsync_dir(target.parent)  # ... and the rename itself survives a power cut
    except OSError as err:
        _remove_quietly(tmp)
        hint = _HINTS.get(err.errno or 0, "check that the folder exists and is writable")
        raise CheckpointSaveError(
            f"could not save the checkpoint {target}: {err.strerror or err} ({hint}). "
            f"Nothing partial was left; earlier checkpoints in {target.parent} are intact."
        ) from err
    except BaseException:
        _remove_quietly(tmp)  # interrupted mid-write: no half file, no temp file left
        raise


def _remove_quietly(path: Path) -> None:
    """Remove `path` if it exists (its folder may not even be one)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves go through `atomic_write` (remote URLs unchanged).

    Set on the trainer with `plugins: [{_target_: ddpm_unet.callbacks.AtomicCheckpointIO}]`
    (configs/trainer/default.yaml).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if not _is_local_file_protocol(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)  # s3://, gs://: fsspec
            return
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported for local saves ({path}).")
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))
