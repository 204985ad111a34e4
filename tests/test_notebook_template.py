import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED = ["MODEL", "QUANTIZATION", "DEVICE", "LENS_NORM", "DATA", "PROMPT", "MAX_NEW_TOKENS",
            "N_IMAGES", "SEED", "OUTPUT_DIR"]  # fmt: skip


def test_all_sections_exist():
    assert [p.stem for p in NOTEBOOKS] == [
        "00_quickstart", "01_token_probabilities", "02_hallucination_trajectories",
        "03_js_divergence", "04_skip_connections", "05_features_single_image", "06_features_vqa",
        "07_lvlm_vs_llm", "08_applications",
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_template(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {path.stem[:2]} ·")
    assert "google.colab" in cells[1].source
    params = cells[2]
    assert params.metadata.get("tags") == ["parameters"]
    assigned = [t.id for node in ast.parse(params.source).body for t in node.targets]
    assert assigned[: len(REQUIRED)] == REQUIRED
    for node in ast.parse(params.source).body:  # plain values only
        ast.literal_eval(node.value)
    numbered = [c.source for c in cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert numbered[0].startswith("## 1. ") and numbered[-1].startswith("## Headline numbers")
    assert "notebook.record(" in cells[-1].source
    for cell in cells:
        if cell.cell_type == "code":
            tree = ast.parse(cell.source)
            assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert cell.outputs == [] and cell.execution_count is None  # stripped


def test_notebooks_match_their_template():
    build = Path(__file__).parent.parent / "notebooks" / "build.py"
    out = subprocess.run([sys.executable, str(build), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
