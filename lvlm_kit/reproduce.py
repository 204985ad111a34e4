"""Run every notebook in ``notebooks/`` headless with papermill (``make reproduce``).

Each notebook ``notebooks/NN_name.ipynb`` is executed into ``<output>/NN_name.ipynb`` with
``OUTPUT_DIR=<output>/NN_name`` (figures and ``metrics.json`` go there). Extra parameters
(``-p NAME VALUE``) go to every notebook whose parameters cell declares them; a name that
no notebook of the run declares is refused before anything runs.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from .report import HTML_TITLE, REPORT_TITLE, write_report
from .sources import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebooks(
    output: Path, parameters: dict[str, object] | None = None, only: list[str] | None = None
) -> tuple[list[Path], dict[str, str]]:
    """Execute the notebooks; one that fails does not stop the others.

    Returns:
        ``(executed, failed)``: the executed copies' paths (failed ones included: papermill
        saves them with the error), and notebook name -> its error.

    Args:
        output: folder for executed notebooks and their OUTPUT_DIRs.
        parameters: papermill parameters, each given to the notebooks that declare it.
        only: notebook stems to run (default: all).

    Raises:
        FileNotFoundError: a name in ``only`` matches no notebook.
        ValueError: ``parameters`` sets ``OUTPUT_DIR`` (each notebook gets its own folder),
            or names a parameter that none of the notebooks declares.
    """
    import papermill as pm

    odd = [k for k in parameters or {} if not str(k).isidentifier()]
    if odd:
        raise ValueError(
            f"parameter names must be Python names; got {odd} (a stray space?). Pass "
            "-p NAME VALUE with the notebook's parameter NAME."
        )
    if "OUTPUT_DIR" in (parameters or {}):
        raise ValueError(
            "OUTPUT_DIR is set per notebook (<output>/<notebook name>), so that no notebook "
            "overwrites another's results; pass --output FOLDER instead of -p OUTPUT_DIR."
        )
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only is not None and not only:
        raise ValueError(
            "--only names no notebook; give their names (e.g. --only 01_token_probabilities), "
            "or leave --only out to run them all."
        )
    if only:
        unknown = set(only) - {nb.stem for nb in notebooks}
        if unknown:
            raise FileNotFoundError(f"no notebook named {sorted(unknown)} in {NOTEBOOKS}")
        notebooks = [nb for nb in notebooks if nb.stem in only]
    declared = {nb.stem: set(pm.inspect_notebook(str(nb))) for nb in notebooks}
    unknown = sorted(set(parameters or {}) - set().union(*declared.values()))
    if unknown:
        raise ValueError(
            f"no notebook of this run has the parameter(s) {unknown}; the parameters are those "
            "of the notebooks' parameters cells (e.g. -p N_IMAGES 8)."
        )
    check_output(output, notebooks)
    output.mkdir(parents=True, exist_ok=True)
    done, failed = [], {}
    for nb in notebooks:
        own = {k: v for k, v in (parameters or {}).items() if k in declared[nb.stem]}
        params = {"OUTPUT_DIR": str((output / nb.stem).resolve()), **own}
        target = output / nb.name
        try:
            pm.execute_notebook(
                str(nb), str(target), parameters=params, kernel_name="python3", cwd=str(NOTEBOOKS)
            )
        except pm.PapermillExecutionError as exc:
            failed[nb.stem] = f"{exc.ename}: {exc.evalue}"
        done.append(target)
    return done, failed


def _is_kit_file(path: Path) -> bool:
    """Whether ``path`` is an executed notebook or a report this module wrote."""
    try:
        if path.suffix == ".ipynb":
            return "papermill" in json.loads(path.read_text(encoding="utf-8"))["metadata"]
        return path.read_text(encoding="utf-8")[:2000].lstrip().startswith(
            REPORT_TITLE if path.suffix == ".md" else "<!doctype html>"
        ) and (path.suffix == ".md" or HTML_TITLE in path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_output(output: Path, notebooks: list[Path]) -> None:
    """Refuse an output folder where running ``notebooks`` would overwrite what is not ours.

    Raises:
        ValueError: ``output`` is the notebooks' own folder (their sources would be
            overwritten), or holds an executed-notebook or report path that the kit did not
            write.
    """
    out = output.expanduser().resolve()
    if out == NOTEBOOKS.resolve() or NOTEBOOKS.resolve() in out.parents:
        raise ValueError(
            f"--output '{output}' is the notebooks' own folder: running there would overwrite "
            "the source notebooks. Pass another folder (the default is outputs/)."
        )
    targets = [out / nb.name for nb in notebooks] + [out / "REPORT.md", out / "report.html"]
    foreign = [p for p in targets if p.exists() and not (p.is_file() and _is_kit_file(p))]
    if foreign:
        raise ValueError(
            f"--output '{output}' holds {', '.join(p.name for p in foreign)}, which the kit did "
            "not write (not an executed notebook or a report of it); the kit never overwrites "
            "it. Pass another folder."
        )


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
    done, failed = run_notebooks(args.output, {k: _value(v) for k, v in args.p}, args.only)
    if not done:
        print(f"no notebooks in {NOTEBOOKS} yet; nothing to run.")
    for path in done:
        print(f"{'FAILED' if path.stem in failed else 'executed'} {path}")
    if done:
        md, html = write_report(args.output, failed)
        print(f"report: {md} and {html}")
    for name, error in failed.items():
        print(f"notebook {name} failed: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
