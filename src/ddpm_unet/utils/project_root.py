"""Anchor every path at the project root, whatever folder a command is started from."""

from __future__ import annotations

import os
from pathlib import Path


def anchor_project_root(entry_point: str | os.PathLike[str]) -> Path:
    """Set `$PROJECT_ROOT` to the folder of `entry_point` (train.py, sample.py, eval.py).

    Called before Hydra starts: `configs/paths/default.yaml` reads `paths.root_dir` from this
    variable (`${project_root:}`), and Hydra computes `hydra.run.dir`/`hydra.sweep.dir` before its
    own `${hydra:runtime.cwd}` exists. A value the user already exported wins, so logs and data
    can live elsewhere (`PROJECT_ROOT=/scratch/me python train.py`).
    """
    return Path(os.environ.setdefault("PROJECT_ROOT", str(Path(entry_point).resolve().parent)))
