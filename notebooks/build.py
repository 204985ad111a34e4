"""Write every notebook from one template: ``python notebooks/build.py`` (``make notebooks``).

Each notebook = title and the section's claims (markdown), a setup cell that also works in
Colab, a ``parameters`` cell of plain values (papermill), a cell deriving everything else,
numbered sections that only call lvlm_kit, and a last cell recording headline numbers to
``OUTPUT_DIR/metrics.json``. This file is the source of the ``.ipynb`` files (a test checks
that they match it); the notebooks hold no ``def`` and are committed without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
# Setup: locally the kit is installed by `make reproduce` / `make test`. In Colab, first
# clone the lvlm-kit repository to /content/lvlm-kit; this cell then installs it.
import sys

if "google.colab" in sys.modules:
    import subprocess

    kit = "/content/lvlm-kit"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", kit], check=True)
"""

PARAMETERS = """\
MODEL = "testbed"  # hub id (llava-hf/llava-1.5-7b-hf), local folder, or "testbed"
QUANTIZATION = None  # None, "4bit" or "8bit" (bitsandbytes, CUDA only)
DEVICE = "auto"  # "auto" (GPU if any), "cpu", "cuda", or an accelerate device map
LENS_NORM = "final_norm"  # "final_norm" (default) or "raw" (the paper authors' code)
DATA = "testbed"  # "testbed", an AMBER-layout folder, or a folder of images
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = {max_new_tokens}
N_IMAGES = {n_images}
SEED = 0
OUTPUT_DIR = None  # default: <repo>/outputs/{name}
"""

DERIVED = """\
from pathlib import Path

import torch

from lvlm_kit import notebook, plots, trace
from lvlm_kit.loading import REPO_ROOT

OUTPUT_DIR = Path(OUTPUT_DIR or REPO_ROOT / "outputs" / "{name}")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
torch.manual_seed(SEED)
lm = notebook.load(MODEL, QUANTIZATION, DEVICE)
items = notebook.resolve_data(DATA, OUTPUT_DIR, N_IMAGES, SEED)
print(f"{{MODEL}}: {{lm.anatomy.n_layers}} decoder layers, {{len(items)}} images, {{LENS_NORM}}")
"""


def notebook(name: str, title: str, claims: str, sections: list[tuple[str, str]],
             metrics: str, max_new_tokens: int = 48, n_images: int = 8,
             extra_params: str = "") -> nbformat.NotebookNode:  # fmt: skip
    """Assemble one notebook from the template."""
    cells = [
        new_markdown_cell(
            f"# {title}\n\n{claims}\n\nRun on LLaVA-1.5-7B (GPU):\n"
            f"`papermill {name}.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf "
            "-p QUANTIZATION 4bit -p DATA /path/to/AMBER`"
        ),  # fmt: skip
        new_code_cell(SETUP),
        new_code_cell(
            PARAMETERS.format(max_new_tokens=max_new_tokens, n_images=n_images, name=name)
            + extra_params,
            metadata={"tags": ["parameters"]},
        ),
        new_code_cell(DERIVED.format(name=name)),
    ]
    for i, (heading, code) in enumerate(sections, start=1):
        cells.append(new_markdown_cell(f"## {i}. {heading}"))
        cells.append(new_code_cell(code.strip("\n")))
    cells.append(new_markdown_cell("## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)"))
    cells.append(new_code_cell(metrics.strip("\n")))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def build() -> dict[str, nbformat.NotebookNode]:
    """All notebooks, by file stem."""
    from specs import SPECS  # noqa: PLC0415 (the per-notebook content, next to this file)

    return {spec["name"]: notebook(**spec) for spec in SPECS}


def write(check: bool = False) -> list[str]:
    """Write the notebooks (or, with ``check``, list those that differ from the template)."""
    stale = []
    for name, nb in build().items():
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(nb) + "\n"
        if check:
            if not path.is_file() or _strip_ids(path.read_text()) != _strip_ids(text):
                stale.append(name)
        else:
            path.write_text(text)
    return stale


def _strip_ids(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if '"id":' not in line)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    stale = write(check="--check" in sys.argv)
    if stale:
        print("notebooks differ from notebooks/build.py:", ", ".join(stale))
        sys.exit(1)
