"""The project stands alone: its design notes are in `docs/design.md`, links resolve, and the
shape table of that page is what the network computes."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import nbformat
import torch

from ddpm_unet.models.unet import UNet

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
NOTEBOOK = REPO / "notebooks" / "unet_walkthrough.ipynb"
# References to files that lived beside the repository while it was written, not in it.
OUTSIDE = re.compile(r"\.\./shared|shared/spec|spec/seed-unet|DESIGN\.md")
# Markdown links `[text](target)` whose target is a file in the repository (not a URL).
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown_sources() -> dict[Path, str]:
    """README, the design page and the notebook's text cells, by the file they live in."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return {
        REPO / "README.md": (REPO / "README.md").read_text(),
        DESIGN: DESIGN.read_text(),
        NOTEBOOK: "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"),
    }


def test_nothing_points_outside_the_repository() -> None:
    files = [REPO / "README.md", NOTEBOOK, *REPO.glob("docs/**/*.md")]
    for folder in ("src", "configs", "benchmarks", "notebooks"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    files += list(REPO.glob("*.py"))
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, "point these at docs/design.md instead:\n" + "\n".join(offenders)


def test_design_page_is_linked_and_links_resolve() -> None:
    sources = _markdown_sources()
    for path, text in sources.items():
        targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
        missing = [t for t in targets if not (path.parent / t).exists()]
        assert not missing, f"{path.relative_to(REPO)} links to missing files {missing}"
        if path != DESIGN:
            linked = {(path.parent / t).resolve() for t in targets}
            assert DESIGN in linked, f"{path.relative_to(REPO)} does not link docs/design.md"


def test_shape_table_matches_the_network() -> None:
    """The "Shapes through the spec's default network" table, against a forward pass.

    The table groups repeated blocks ("2 x DownBlock"), so both sides are compared with
    consecutive repeats of a shape collapsed. On the meta device: shapes only, no memory.
    """
    section = DESIGN.read_text().split("### Shapes through the spec's default network")[1]
    rows = [line for line in section.split("\n\n")[2].splitlines() if line.startswith("| ")][2:]
    documented = [re.findall(r"`\[([\d, ]+)\]`", row.split("|")[3])[0] for row in rows]
    documented = [[int(v) for v in shape.split(",")] for shape in documented]
    assert rows[-1].split("|")[1].strip() == "output"

    with torch.device("meta"):
        unet = UNet(n_channels=64, ch_mults=(1, 2, 4, 16), is_attn=(False, False, True, True))
        shapes: list[list[int]] = []
        modules = [unet.image_proj, *unet.down, unet.middle, *unet.up, unet.final]
        for module in modules:
            module.register_forward_hook(lambda m, i, out: shapes.append(list(out.shape)))
        unet(torch.zeros(1, 3, 32, 32), torch.tensor([0]))
    collapse = lambda seq: [k for k, _ in itertools.groupby(seq)]  # noqa: E731
    assert collapse(documented) == collapse(shapes)
