"""The README's sweep commands (multiruns, their report, the Ray launcher), run verbatim.

The second half of tests/test_readme.py's contract, in its own module so that the suite's two
workers (`pytest -n 2 --dist loadfile`) run the README's two command chains side by side; each
chain works in its own fresh copy of the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_readme import COMMANDS, is_sweep, repo, run_command  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_readme_has_sweeps() -> None:
    assert "python train.py hparams_search=unet_arch" in [c for c in COMMANDS if is_sweep(c)]


@pytest.mark.parametrize("command", [c for c in COMMANDS if is_sweep(c)])
def test_readme_sweep_command(command: str, repo: Path) -> None:  # noqa: F811
    run_command(command, repo)
