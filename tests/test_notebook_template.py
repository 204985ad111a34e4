"""The notebooks are their own source: each ``.ipynb`` is paired with a jupytext
``py:percent`` twin (what ruff and reviewers read), and both follow the template."""

import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

HERE = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
REQUIRED = ["MODEL", "QUANTIZATION", "DEVICE", "DTYPE", "LENS_NORM", "DATA", "PROMPT",
            "MAX_NEW_TOKENS", "N_IMAGES", "SEED", "OUTPUT_DIR"]  # fmt: skip


def cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


def test_all_sections_exist_and_are_paired():
    assert [p.stem for p in NOTEBOOKS] == [
        "00_quickstart", "01_token_probabilities", "02_hallucination_trajectories",
        "03_js_divergence", "04_skip_connections", "05_features_single_image", "06_features_vqa",
        "07_lvlm_vs_llm", "08_applications", "09_quantization",
    ]  # fmt: skip
    assert sorted(HERE.glob("*.py")) == [p.with_suffix(".py") for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_is_in_sync(path):
    ipynb = jupytext.read(path)
    percent = jupytext.read(path.with_suffix(".py"))
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert cells(percent) == cells(ipynb), (
        f"{path.name} and {path.with_suffix('.py').name} differ: run "
        f"`jupytext --sync notebooks/{path.name}` (make notebooks)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_template(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {path.stem[:2]} ·")
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters` (papermill)"
    body = ast.parse(params[0].source).body
    names = [t.id for node in body for t in node.targets]
    assert names[: len(REQUIRED)] == REQUIRED
    for node in body:  # plain values only
        ast.literal_eval(node.value)
    # The cell after the parameters' explanation checks every parameter, before the model loads.
    start = cells[cells.index(params[0]) + 2].source
    call = next(
        n for n in ast.walk(ast.parse(start))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "start"
    )  # fmt: skip
    assert [k.arg for k in call.keywords] == names
    assert "notebook.record(" in cells[-1].source
    for cell in cells:
        if cell.cell_type == "code":
            tree = ast.parse(cell.source)
            assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert cell.outputs == [] and cell.execution_count is None  # stripped
