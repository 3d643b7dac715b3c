"""Execute `notebooks/unet_walkthrough.ipynb`, check what it prints, and that its stored outputs
are current.

The notebook is committed with its outputs, so it reads with its results where people browse the
repository. Running it here keeps it in step with the code: a fresh run must print exactly what is
stored. After changing the notebook, or code whose output it shows, store the new outputs with

    python tests/test_notebook.py
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "unet_walkthrough.ipynb"
KERNEL = "python3"
REWRITE = "python tests/test_notebook.py"
# jupyter_client replaces these kernel commands by `sys.executable` (see
# `KernelManager.format_kernel_cmd`), so such a kernelspec runs this interpreter.
_PYTHON_NAMES = {
    "python",
    f"python{sys.version_info[0]}",
    f"python{sys.version_info[0]}.{sys.version_info[1]}",
}
# Prepended to the notebook in memory: the kernel reports which environment it runs in.
_PROBE = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"


def _kernel_runs_this_python() -> bool:
    """Whether the `python3` kernelspec that Jupyter finds would start `sys.executable`."""
    try:
        argv = KernelSpecManager().get_kernel_spec(KERNEL).argv
    except NoSuchKernel:
        return False
    if not argv:
        return False
    if argv[0] in _PYTHON_NAMES:
        return True
    return os.path.realpath(argv[0]) == os.path.realpath(sys.executable)


@contextmanager
def this_python_kernel(root: Path) -> Iterator[dict[str, str]]:
    """Make `python3` resolve to this interpreter, without touching the venv.

    When the kernelspec Jupyter finds (a user-level one, say) would start another Python, a
    `python3` spec running `sys.executable` is written under `root`, put first on `JUPYTER_PATH`
    (Jupyter searches it before any other location) until the context exits. Yields the changed
    environment variables.
    """
    if _kernel_runs_this_python():
        yield {}
        return
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), old]))
    try:
        assert _kernel_runs_this_python(), "the temporary kernelspec was not picked up"
        yield {"JUPYTER_PATH": os.environ["JUPYTER_PATH"]}
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell of `nb` in place, from the notebook's folder (a failing cell raises
    `CellExecutionError`). No timing metadata is recorded and each cell's prints are merged into
    one output, so the stored file changes only when what the notebook prints changes."""
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=300,
        record_timing=False,
        # The kernel sends prints in chunks that depend on timing: one stream per cell instead.
        coalesce_streams=True,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    # Passive OpenMP waiting: on a CPU shared with other processes, spinning torch threads
    # slowed this notebook down by half (a user's own setting is kept).
    client.execute(env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ})
    return nb


def store_outputs() -> None:
    """Execute the notebook and write it back with its outputs (what `python <this file>` does).

    The notebook-level metadata is kept as it was: the kernel adds its exact Python version, which
    would change the file on every machine.
    """
    nb = nbformat.read(NOTEBOOK, as_version=4)
    metadata = copy.deepcopy(nb.metadata)
    with tempfile.TemporaryDirectory() as tmp, this_python_kernel(Path(tmp)):
        execute(nb)
    nb.metadata = metadata
    nbformat.validate(nb)
    nbformat.write(nb, NOTEBOOK)


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`python3` runs this venv's interpreter for the whole session."""
    with this_python_kernel(tmp_path_factory.mktemp("jupyter")) as env:
        yield env


@pytest.fixture(scope="session")
def executed(kernel_env: dict[str, str]) -> nbformat.NotebookNode:
    """The notebook after a full fresh run, with the probe cell first."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PROBE))
    return execute(nb)


@pytest.fixture(scope="session")
def committed() -> nbformat.NotebookNode:
    """The notebook as stored in the repository."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a code cell printed or displayed, as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def _all_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(_text(cell) for cell in nb.cells if cell.cell_type == "code")


def _outputs(cell: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """A cell's outputs as (kind, text), without execution counts: what is compared."""
    result = []
    for output in cell.outputs:
        if output.output_type == "stream":
            result.append((f"stream:{output.name}", output.text))
        elif output.output_type in ("execute_result", "display_data"):
            result.append((output.output_type, output.data.get("text/plain", "")))
        else:  # error
            result.append((output.output_type, f"{output.ename}: {output.evalue}"))
    return result


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _fresh_code_cells(executed: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The fresh run's code cells without the probe, aligned with the committed ones."""
    return _code_cells(executed)[1:]


def test_committed_notebook_has_outputs(
    committed: nbformat.NotebookNode, executed: nbformat.NotebookNode
) -> None:
    """Every code cell that prints something in a fresh run has stored outputs."""
    fresh = _fresh_code_cells(executed)
    stored = _code_cells(committed)
    assert len(fresh) == len(stored)
    printing = [i for i, cell in enumerate(fresh) if cell.outputs]
    assert len(printing) >= 8, "the walk-through prints in (almost) every section"
    empty = [i for i in printing if not stored[i].outputs]
    assert not empty, f"code cells {empty} are stored without their outputs: run `{REWRITE}`"


def test_committed_outputs_match_a_fresh_run(
    committed: nbformat.NotebookNode, executed: nbformat.NotebookNode
) -> None:
    """Stale outputs fail: everything the notebook prints is deterministic (seeded, shapes,
    parameter counts, comparisons), so a fresh run must print exactly what is stored."""
    for i, (stored, fresh) in enumerate(
        zip(_code_cells(committed), _fresh_code_cells(executed), strict=True)
    ):
        if _outputs(stored) != _outputs(fresh):
            diff = difflib.unified_diff(
                _text(stored).splitlines(),
                _text(fresh).splitlines(),
                "stored",
                "fresh run",
                lineterm="",
            )
            pytest.fail(
                f"code cell {i} ({stored.source.splitlines()[0]!r}) prints something else than "
                f"its stored outputs: run `{REWRITE}`\n" + "\n".join(list(diff)[:40])
            )


def test_committed_outputs_are_clean(committed: nbformat.NotebookNode) -> None:
    """One top-to-bottom run, no errors, warnings, progress bars, timings or local paths."""
    counts = [cell.execution_count for cell in _code_cells(committed)]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}: run `{REWRITE}`"
    local = {str(REPO), str(Path.home()), sys.prefix, tempfile.gettempdir()} - {"", "/"}
    for i, cell in enumerate(_code_cells(committed)):
        assert "execution" not in cell.metadata, f"cell {i} stores timings: run `{REWRITE}`"
        for kind, text in _outputs(cell):
            assert kind in ("stream:stdout", "execute_result", "display_data"), (
                f"code cell {i} stores a {kind} output (an error, a warning or a progress bar):\n"
                f"{text[:500]}"
            )
            leaked = [path for path in local if path in text]
            assert not leaked, f"code cell {i} prints local paths {leaked}"
            assert not re.search(r"\bat 0x[0-9a-f]+", text), f"cell {i} prints a memory address"
    assert committed.metadata.get("language_info", {}).keys() <= {"name"}, (
        "the notebook's metadata holds the kernel's exact Python version: run " + REWRITE
    )


def test_kernel_runs_in_this_environment(executed: nbformat.NotebookNode) -> None:
    prefix_line = _text(executed.cells[0]).strip()
    assert prefix_line == f"KERNEL_PREFIX={sys.prefix}"


def test_no_cell_errored(executed: nbformat.NotebookNode) -> None:
    for cell in executed.cells:
        if cell.cell_type == "code":
            assert all(out.output_type != "error" for out in cell.outputs), cell.source


def test_key_outputs(executed: nbformat.NotebookNode) -> None:
    text = _all_text(executed)
    # Parameter counts of the spec default and of the DDPM CIFAR-10 layout.
    assert "168,899,011 parameters" in text
    assert "34,974,339 parameters" in text
    # The two attention forms agree, and the block equals its step-by-step version.
    assert "einsum and SDPA agree: True" in text
    assert "backend='einsum' == backend='sdpa': True" in text
    assert "by hand == AttentionBlock(x): True" in text
    # Attention reshapes for 2 images of 256 channels at 8x8 with 4 heads of 64.
    assert "viewed                  [2, 64, 4, 192]" in text
    assert "einsum scores [b, i, j, heads] [2, 64, 64, 4]" in text
    assert "SDPA scores [b, heads, i, j] [2, 4, 64, 64]" in text
    # The skip stack: 12 pushes, the deepest concat, and everything popped again.
    assert "push -> stack size 12" in text
    assert "cat [1, 2048, 4, 4]" in text
    assert "stack size 0" in text
    # The hand-written forward matches the module, with the image's shape.
    assert "same as unet(x, t): True" in text
    assert "output shape: [1, 3, 32, 32]" in text
    # The summary table from ddpm_unet.utils.summary.
    assert "Total params: 168,899,011" in text
    assert "MiddleBlock: 1-4" in text


if __name__ == "__main__":
    store_outputs()
