"""The claims report: one renderer for its Markdown, its HTML page and the README's tables.

Rows are claims as :meth:`~lvlm_kit.claims.ClaimResult.as_dict` writes them to a
notebook's ``claims.json`` (plus the ``notebook`` that measured them). A table is a list
of columns, each a header and a function of one row; :func:`table` renders it as Markdown
or HTML, so the report's two files and the README (``tests/pin.py``) show the same cells.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from .claims import ClaimResult, control_text, estimate_text
from .files import atomic_path

#: How the kit's own report files begin (a file that does not is never overwritten).
REPORT_TITLE = "# Which of the paper's claims hold here"
HTML_TITLE = "<title>lvlm-kit report</title>"

Column = tuple[str, Callable[[dict], str]]


def count_line(verdicts: Sequence[str], what: str = "Claims measured") -> str:
    """The verdicts counted: ``Claims measured: 4; shown 2, not shown 1, ...``."""
    n = {v: sum(x == v for x in verdicts) for v in ("shown", "not shown", "inconclusive")}
    n["no control"] = sum(x == "inconclusive (no control)" for x in verdicts)
    return (
        f"{what}: {len(verdicts)}; shown {n['shown']}, not shown {n['not shown']}, "
        f"inconclusive {n['inconclusive']}, no control {n['no control']}."
    )


def table(rows: Sequence[dict], columns: Sequence[Column], fmt: Literal["md", "html"]) -> str:
    """Render ``rows`` with ``columns`` as a Markdown or an HTML table.

    In Markdown the verdict column (its header ``verdict``) is bold; HTML escapes every cell.
    """
    cells = [[cell(row) for _, cell in columns] for row in rows]
    heads = [head for head, _ in columns]
    if fmt == "html":
        head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
        body = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells]
        return "<table border=1 cellpadding=4>" + head + "".join(body) + "</table>"
    bold = [h == "verdict" for h in heads]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in cells:
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(r, bold)) + " |")
    return "\n".join(lines)


#: The report's table: the claim, what the paper reports, the statistic, model and controls.
REPORT_COLUMNS: list[Column] = [
    ("#", lambda c: str(c["number"])),
    ("claim (paper)", lambda c: f"{c['paper']} ({c['figure']})"),
    ("paper reports", lambda c: c["paper_number"]),
    ("statistic (rule)", lambda c: f"{c['statistic']} ({c['rule']})"),
    ("measured [95% CI]", lambda c: estimate_text(c["model"])),
    ("controls [95% CI]", lambda c: control_text(c["controls"])),
    ("verdict", lambda c: c["verdict"]),
]

#: The README's table of the paper's claims (the notebook named by its number).
README_PAPER_COLUMNS: list[Column] = [
    ("#", lambda c: str(c["id"])),
    ("the paper's claim", lambda c: c["paper"]),
    ("paper (figure: what it reports)", lambda c: f"{c['figure']}: {c['paper_number']}"),
    (
        "statistic (rule)",
        lambda c: f"{c['statistic']} ({c['rule']}; notebook {c['notebook'][:2]})",
    ),
    ("testbed [95% CI]", lambda c: estimate_text(c["model"])),
    ("controls", lambda c: control_text(c["controls"])),
    ("verdict", lambda c: c["verdict"]),
]

#: The README's table of the kit's own checks.
README_KIT_COLUMNS: list[Column] = [
    ("#", lambda c: str(c["id"])),
    ("check", lambda c: c["paper"]),
    ("statistic (rule)", lambda c: f"{c['statistic']} ({c['rule']})"),
    ("testbed [95% CI]", lambda c: estimate_text(c["model"])),
    ("control", lambda c: control_text(c["controls"])),
    ("verdict", lambda c: c["verdict"]),
]


def read_claims(path: Path) -> list[dict] | None:
    """A notebook's ``claims.json``, or None when it is not a list of the kit's claims."""
    keys = set(ClaimResult.__dataclass_fields__)
    try:
        claims = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(claims, list) or not all(
        isinstance(c, dict) and keys <= set(c) for c in claims
    ):
        return None
    return claims


#: The report's paragraph on how a verdict is reached.
METHOD = (
    "Each statistic has a bootstrap 95% interval; a claim is *shown* only when its interval "
    "lies on the claim's side of the threshold and the same analysis on every control lies on "
    "the other side: the noise copies of the model (a re-initialised copy, and a copy with "
    "each weight tensor's entries permuted, and one whose layers run in a shuffled order for "
    "claims about where in the depth something happens; teacher-forced on the model's words "
    "where a statistic needs them, skipping the model's layers for the skip claims), the "
    "labels shuffled within each image for a contrast of token classes, and random sets of as "
    "many layers for the skip claims. Stages are detected on half of the images and the "
    "claims about them judged on the other half. A control interval that straddles the "
    "threshold leaves the claim inconclusive; a control with no value leaves it inconclusive "
    "(no control)."
)


def write_report(output: Path, failed: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``REPORT.md`` and a self-contained ``report.html`` from the notebooks' claims.

    Reads every ``<output>/NN_name/claims.json``: a summary table (:data:`REPORT_COLUMNS`),
    then a section per claim with its notes and its notebook's main figure. Notebooks in
    ``failed`` (name -> error) are named first and their (old) claims left out; a
    ``claims.json`` that is not the kit's is named and skipped.

    Returns:
        The two paths.
    """
    failed = dict(failed or {})
    claims, figures, foreign = [], {}, []
    for folder in sorted(p for p in output.iterdir() if p.is_dir()):
        path = folder / "claims.json"
        if not path.is_file() or folder.name in failed:  # a failed run's claims are old
            continue
        found = read_claims(path)
        if found is None:
            foreign.append(folder.name)
            continue
        claims += [{**claim, "notebook": folder.name} for claim in found]
        pngs = sorted(folder.glob("*.png"))
        if pngs:
            figures[folder.name] = pngs[0]
    claims.sort(key=lambda c: c["number"])
    summary = count_line([c["verdict"] for c in claims]) + " " + METHOD
    notices = [f"**Notebook {n} failed** ({e}); its claims are missing." for n, e in failed.items()]
    notices += [
        f"**{name}/claims.json is not the kit's** (not a list of its claims); skipped."
        for name in foreign
    ]

    def detail(c: dict) -> str:
        return (
            f"{c['statistic']} = {estimate_text(c['model'])}, rule {c['rule']}; controls: "
            f"{control_text(c['controls'])}. Verdict: **{c['verdict']}** "
            f"(notebook `{c['notebook']}`)."
        )

    lines = [REPORT_TITLE, "", summary, "", *notices, "", table(claims, REPORT_COLUMNS, "md"), ""]
    for c in claims:
        lines += [f"## {c['number']}. {c['paper']} ({c['figure']})", "", detail(c), ""]
        lines += [f"- {note}" for note in c["notes"]]
        if c["notebook"] in figures:
            lines += ["", f"![{c['notebook']}]({figures[c['notebook']].relative_to(output)})"]
        lines.append("")
    md = output / "REPORT.md"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(lines))

    def para(text: str, tag: str = "p") -> str:
        return f"<{tag}>{html.escape(text.replace('**', ''))}</{tag}>"

    body = [
        f"<h1>{html.escape(REPORT_TITLE[2:])}</h1>",
        para(summary),
        *[para(n).replace("<p>", "<p><b>").replace("</p>", "</b></p>") for n in notices],
        table(claims, REPORT_COLUMNS, "html"),
    ]
    for c in claims:
        notes = "".join(para(n, "li") for n in c["notes"])
        body += [para(f"{c['number']}. {c['paper']}", "h2"), para(detail(c)), f"<ul>{notes}</ul>"]
        if c["notebook"] in figures:
            data = base64.b64encode(figures[c["notebook"]].read_bytes()).decode()
            body.append(f'<img style="max-width:720px" src="data:image/png;base64,{data}">')
    page = output / "report.html"
    with atomic_path(page) as tmp:
        tmp.write_text(f"<!doctype html><meta charset=utf-8>{HTML_TITLE}" + "".join(body))
    return md, page


__all__: Sequence[str] = [
    "README_KIT_COLUMNS",
    "README_PAPER_COLUMNS",
    "REPORT_COLUMNS",
    "count_line",
    "read_claims",
    "table",
    "write_report",
]
