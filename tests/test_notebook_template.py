"""The notebooks are their own source: each ``.ipynb`` is paired with a jupytext
``py:percent`` twin (what ruff and reviewers read), and both follow the template."""

import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

from lvlm_kit.notebook import RULES

HERE = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
REQUIRED = [
    "MODEL",
    "QUANTIZATION",
    "DEVICE",
    "DTYPE",
    "LENS_NORM",
    "DATA",
    "PROMPT",
    "MAX_NEW_TOKENS",
    "N_IMAGES",
    "SEED",
    "OUTPUT_DIR",
]


def cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


def test_all_sections_exist_and_are_paired():
    assert [p.stem for p in NOTEBOOKS] == [
        "00_quickstart",
        "01_token_probabilities",
        "02_hallucination_trajectories",
        "03_js_divergence",
        "04_skip_connections",
        "05_features_single_image",
        "06_features_vqa",
        "07_lvlm_vs_llm",
        "08_applications",
        "09_quantization",
        "10_image_tokens",
    ]
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
        n
        for n in ast.walk(ast.parse(start))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "start"
    )
    assert ast.unparse(call.args[1]) == "globals()"  # it reads every parameter by its name
    assert set(names) <= set(RULES), "every parameter has a rule in lvlm_kit.notebook.RULES"
    assert "notebook.record(" in cells[-1].source
    for cell in cells:
        if cell.cell_type == "code":
            tree = ast.parse(cell.source)
            assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert cell.outputs == [] and cell.execution_count is None  # stripped


#: What a number in a markdown cell may be: structure (sections, figures, claims, notebook
#: names), a model or format name, a method constant written as notation. Anything else is
#: a result, and results are printed by the code from the run.
STRUCTURE = [
    r"`[^`]*`",
    r"(?:Figs?\.|§|[Cc]laims?|[Nn]otebooks?|[Ss]ections?|numbers) ?\d+(?:\s*(?:[-–,]|and)\s*\d+)*",
    r"LLaVA-1\.5(?:-\d+B)?",
    r"Vicuna(?:-7B)?(?: v1\.5)?",
    r"b?float(?:16|32)|fp16|\d+-bit|\bNF4|\bFP4|\bnf4|\bfp4|\d+bit|\bT4\b",
    r"\b2-D\b",
    r"top-\d+",
    r"\bln 2\b",
    r"\b95%",
    r"\bL\s*[-+]\s*\d",
    r"\bj\s*\+\s*1\b",
    r"\b0\.\.L\b",
    r"\blayers? 0\b",
    r"k = 0, 1, 2",
    r"\(\d\)",
    r"skip\.?\d",
]


def hand_typed_numbers(py_text: str) -> list[str]:
    """Sentences of markdown cells holding a number that is neither structure nor quoted
    from the paper (a sentence naming the paper, its authors or their models)."""
    import re

    found = []
    for cell in re.split(r"\n(?=# %%)", py_text):
        if not cell.startswith("# %% [markdown]"):
            continue
        lines = [
            line[2:] if line.startswith("# ") else line.lstrip("#")
            for line in cell.splitlines()[1:]
        ]
        body = "\n".join(line for line in lines if not line.startswith("#"))  # headings
        body = re.sub(r"\b(Figs?|e\.g|i\.e|skip)\.", lambda m: m.group(1) + "\0", body)
        for sentence in re.split(r"(?<=[.!?])\s+|\n\n", body):
            sentence = sentence.replace("\0", ".")
            if re.search(r"paper|authors|LLaVA|Vicuna", sentence, re.I):
                continue
            rest = sentence
            for pattern in STRUCTURE:
                rest = re.sub(pattern, " ", rest)
            if re.search(r"\d", rest):
                found.append(" ".join(sentence.split()))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_types_no_result_by_hand(path):
    assert hand_typed_numbers(path.with_suffix(".py").read_text()) == []


def test_the_prose_scan_finds_a_typed_result():
    typed = "# %% [markdown]\n# **What the testbed shows.** The critical layer is 3 of 12.\n"
    quoted = "# %% [markdown]\n# The paper sees the rise at layers 18-20 of 32 (Fig. 2).\n"
    assert hand_typed_numbers(typed) == [
        "**What the testbed shows.** The critical layer is 3 of 12."
    ]
    assert hand_typed_numbers(quoted) == []
