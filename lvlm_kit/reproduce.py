"""Run every notebook in ``notebooks/`` headless with papermill (``make reproduce``).

Each notebook ``notebooks/NN_name.ipynb`` is executed into ``<output>/NN_name.ipynb`` with
``OUTPUT_DIR=<output>/NN_name`` (figures and ``metrics.json`` go there). Extra parameters
(``-p NAME VALUE``) apply to every notebook, as with papermill itself.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from .loading import REPO_ROOT

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
        parameters: papermill parameters applied to every notebook.
        only: notebook stems to run (default: all).

    Raises:
        FileNotFoundError: a name in ``only`` matches no notebook.
        ValueError: ``parameters`` sets ``OUTPUT_DIR`` (each notebook gets its own folder).
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
    check_output(output, notebooks)
    output.mkdir(parents=True, exist_ok=True)
    done, failed = [], {}
    for nb in notebooks:
        params = {"OUTPUT_DIR": str((output / nb.stem).resolve()), **(parameters or {})}
        target = output / nb.name
        try:
            pm.execute_notebook(
                str(nb), str(target), parameters=params, kernel_name="python3", cwd=str(NOTEBOOKS)
            )
        except pm.PapermillExecutionError as exc:
            failed[nb.stem] = f"{exc.ename}: {exc.evalue}"
        done.append(target)
    return done, failed


#: How the kit's own report files begin (a file that does not is never overwritten).
REPORT_TITLE = "# Which of the paper's claims hold here"
HTML_TITLE = "<title>lvlm-kit report</title>"


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


def _read_claims(path: Path) -> list[dict] | None:
    """A notebook's ``claims.json``, or None when it is not a list of the kit's claims."""
    from .claims import ClaimResult

    keys = {f for f in ClaimResult.__dataclass_fields__}
    try:
        claims = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(claims, list) or not all(
        isinstance(c, dict) and keys <= set(c) for c in claims
    ):
        return None
    return claims


def write_report(output: Path, failed: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``REPORT.md`` and a self-contained ``report.html`` from the notebooks' claims.

    Reads every ``<output>/NN_name/claims.json`` and ``metrics.json``: a summary table (claim
    | paper | measured with CI | control | verdict), then a section per claim with its
    notebook's main figure. Notebooks in ``failed`` (name -> error) are listed first.

    Returns:
        The two paths.
    """
    import base64
    import html

    from .claims import VERDICTS, Estimate, control_text
    from .files import atomic_path

    failed = dict(failed or {})
    claims, figures, model, foreign = [], {}, "?", []
    for folder in sorted(p for p in output.iterdir() if p.is_dir()):
        path = folder / "claims.json"
        if not path.is_file() or folder.name in failed:  # a failed run's claims are old
            continue
        found = _read_claims(path)
        if found is None:
            foreign.append(folder.name)
            continue
        for claim in found:
            claims.append({**claim, "notebook": folder.name})
        pngs = sorted(folder.glob("*.png"))
        if pngs:
            figures[folder.name] = pngs[0]
        try:
            model = json.loads((folder / "metrics.json").read_text()).get("model", model)
        except (OSError, ValueError, AttributeError):
            pass
    claims.sort(key=lambda c: c["number"])

    def est(e: dict | None) -> str:
        return Estimate(**e).text() if e else "n/a"

    header = (
        "| # | claim (paper) | paper reports | statistic (rule) | measured [95% CI] | "
        "controls [95% CI] | verdict |\n|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {c['number']} | {c['paper']} ({c['figure']}) | {c['paper_number']} | "
        f"{c['statistic']} ({c['rule']}) | {est(c['model'])} | "
        f"{control_text(c['controls'])} | **{c['verdict']}** |"
        for c in claims
    ]
    counts = {v: sum(c["verdict"] == v for c in claims) for v in VERDICTS}
    lines = [
        REPORT_TITLE,
        "",
        f"Claims measured: {len(claims)}; shown {counts['shown']}, not shown "
        f"{counts['not shown']}, inconclusive {counts['inconclusive']}, no control "
        f"{counts['inconclusive (no control)']}. Each statistic has a bootstrap 95% interval; "
        "a claim is *shown* only when its interval lies on the claim's side of the threshold "
        "and the same analysis on every control lies on the other side: the noise copies of "
        "the model (a re-initialised copy, and a copy with each weight tensor's entries "
        "permuted, and one whose layers run in a shuffled order for claims about where in "
        "the depth something happens; teacher-forced on the model's words where a statistic "
        "needs them, "
        "skipping the model's layers for the skip claims), the labels shuffled within each "
        "image for a contrast of token classes, and random sets of as many layers for the "
        "skip claims. Stages are detected on half of the images and the claims about them "
        "judged on the other half. A control interval that straddles the threshold leaves "
        "the claim inconclusive; a control with no value leaves it inconclusive (no "
        "control).",
        "",
        *[
            f"**Notebook {name} failed** ({error}); its claims are missing."
            for name, error in failed.items()
        ],
        *[
            f"**{name}/claims.json is not the kit's** (not a list of its claims); skipped."
            for name in foreign
        ],
        "",
        header,
        *rows,
        "",
    ]
    for c in claims:
        lines += [
            f"## {c['number']}. {c['paper']} ({c['figure']})",
            "",
            f"{c['statistic']} = {est(c['model'])}, rule {c['rule']}; controls: "
            f"{control_text(c['controls'])}. Verdict: **{c['verdict']}** "
            f"(notebook `{c['notebook']}`).",
            "",
        ]
        lines += [f"- {note}" for note in c["notes"]]
        if c["notebook"] in figures:
            lines += ["", f"![{c['notebook']}]({figures[c['notebook']].relative_to(output)})"]
        lines.append("")
    md = output / "REPORT.md"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines))
    notices = [
        line for line in lines if line.startswith("**Notebook ") or "is not the kit's" in line
    ]
    body = [
        f"<h1>Which of the paper's claims hold here</h1><p>{html.escape(lines[2])}</p>",
        *[f"<p><b>{html.escape(n.replace('**', ''))}</b></p>" for n in notices],
        "<table border=1 cellpadding=4><tr><th>#</th><th>claim</th><th>paper reports</th>"
        "<th>statistic (rule)</th><th>measured [95% CI]</th><th>controls</th><th>verdict"
        "</th></tr>",
    ]
    for c in claims:
        body.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(x))}</td>"
                for x in (
                    c["number"],
                    f"{c['paper']} ({c['figure']})",
                    c["paper_number"],
                    f"{c['statistic']} ({c['rule']})",
                    est(c["model"]),
                    control_text(c["controls"]),
                    c["verdict"],
                )
            )
            + "</tr>"
        )
    body.append("</table>")
    for c in claims:
        body.append(
            f"<h2>{c['number']}. {html.escape(c['paper'])}</h2><p>"
            + html.escape(
                f"{c['statistic']} = {est(c['model'])}; controls "
                f"{control_text(c['controls'])}; verdict {c['verdict']}"
            )
            + "</p><ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in c["notes"])
            + "</ul>"
        )
        if c["notebook"] in figures:
            data = base64.b64encode(figures[c["notebook"]].read_bytes()).decode()
            body.append(f'<img style="max-width:720px" src="data:image/png;base64,{data}">')
    page = output / "report.html"
    with atomic_path(page) as tmp:
        tmp.write_text(
            "<!doctype html><meta charset=utf-8><title>lvlm-kit report</title>" + "".join(body)
        )
    return md, page


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
