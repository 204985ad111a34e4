"""Run every notebook in ``notebooks/`` headless with papermill (``make reproduce``).

Each notebook ``notebooks/NN_name.ipynb`` is executed into ``<output>/NN_name.ipynb`` with
``OUTPUT_DIR=<output>/NN_name`` (figures and ``metrics.json`` go there). Extra parameters
(``-p NAME VALUE``) apply to every notebook, as with papermill itself.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from .loading import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebooks(
    output: Path, parameters: dict[str, object] | None = None, only: list[str] | None = None
) -> list[Path]:
    """Execute the notebooks; returns the executed copies' paths.

    Args:
        output: folder for executed notebooks and their OUTPUT_DIRs.
        parameters: papermill parameters applied to every notebook.
        only: notebook stems to run (default: all).

    Raises:
        FileNotFoundError: a name in ``only`` matches no notebook.
        ValueError: ``parameters`` sets ``OUTPUT_DIR`` (each notebook gets its own folder).
    """
    import papermill as pm

    if "OUTPUT_DIR" in (parameters or {}):
        raise ValueError(
            "OUTPUT_DIR is set per notebook (<output>/<notebook name>), so that no notebook "
            "overwrites another's results; pass --output FOLDER instead of -p OUTPUT_DIR."
        )
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {nb.stem for nb in notebooks}
        if unknown:
            raise FileNotFoundError(f"no notebook named {sorted(unknown)} in {NOTEBOOKS}")
        notebooks = [nb for nb in notebooks if nb.stem in only]
    output.mkdir(parents=True, exist_ok=True)
    done = []
    for nb in notebooks:
        params = {"OUTPUT_DIR": str((output / nb.stem).resolve()), **(parameters or {})}
        target = output / nb.name
        pm.execute_notebook(
            str(nb), str(target), parameters=params, kernel_name="python3", cwd=str(NOTEBOOKS)
        )
        done.append(target)
    return done


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--only", nargs="*", default=None, help="notebook stems to run")
    args = parser.parse_args(argv)
    done = run_notebooks(args.output, {k: _value(v) for k, v in args.p}, args.only)
    if not done:
        print(f"no notebooks in {NOTEBOOKS} yet; nothing to run.")
    for path in done:
        print(f"executed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
