"""Files written whole or not at all: checkpoints, shards, caches, status files, downloads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` atomically: `write(fileobj)` fills `<path>.tmp-<pid>`, then fsync + rename.

    On any failure (an `OSError`, or an interruption mid-write) the temp file is removed, the
    previous `path` (if any) is left untouched, and the error is raised.
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
    except BaseException:
        with contextlib.suppress(OSError):  # its folder may not even be one
            tmp.unlink(missing_ok=True)
        raise
    # ... and the rename itself survives a power cut (where directories can be fsync'ed)
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
