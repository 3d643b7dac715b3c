"""Execute `notebooks/unet_walkthrough.ipynb` and check what it prints.

The notebook is stored without outputs; running it here is what keeps it in step with the code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "unet_walkthrough.ipynb"
KERNEL = "python3"
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


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Make `python3` resolve to this venv's interpreter, without touching the venv.

    When the kernelspec Jupyter finds (a user-level one, say) would start another Python, a
    `python3` spec running `sys.executable` is written to a temporary directory put first on
    `JUPYTER_PATH`, which Jupyter searches before any other location.
    """
    if _kernel_runs_this_python():
        yield {}
        return
    root = tmp_path_factory.mktemp("jupyter")
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


@pytest.fixture(scope="session")
def executed(kernel_env: dict[str, str]) -> nbformat.NotebookNode:
    """The notebook after a full run (a failing cell raises `CellExecutionError`)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PROBE))
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    # Passive OpenMP waiting: on a CPU shared with other processes, spinning torch threads
    # slowed this notebook down by half (a user's own setting is kept).
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    client.execute(env=env)
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


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                "save the notebook without outputs (Kernel > Restart & Clear Output)"
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
