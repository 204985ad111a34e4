"""The pinned headline numbers: one file (``tests/expected_metrics.json``) that the notebook
tests assert and that the README's results table is generated from.

    python tests/pin.py outputs     # after `make reproduce` (or `make pin`): re-pin, rewrite
                                    # the README table and refresh the README gallery

Each notebook's pinned numbers are its claims (value, interval, control values, verdict) and
a few scalars of its ``metrics.json``. Re-pinning is a deliberate act: a model change that
moves a number fails the notebook tests until the new numbers are reviewed and pinned.

The gallery is each notebook's main figure from the same run, copied to ``docs/gallery/``
and shown in the README with the notebook's verdicts. ``docs/gallery/manifest.json``
records each figure's hash and the hash of the testbed weights that drew them, so a test
catches a gallery left stale by a retrained testbed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

from lvlm_kit.claims import REGISTRY
from lvlm_kit.report import README_KIT_COLUMNS, README_PAPER_COLUMNS, count_line, table

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = Path(__file__).resolve().parent / "expected_metrics.json"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
GALLERY_START, GALLERY_END = "<!-- gallery:start -->", "<!-- gallery:end -->"
GALLERY_DIR = ROOT / "docs" / "gallery"
WEIGHTS = ROOT / "lvlm_kit" / "testbed" / "weights" / "lvlm" / "model.safetensors"
#: The main figure of each notebook, shown in the README's gallery.
GALLERY = {
    "00_quickstart": "token_probabilities.png",
    "01_token_probabilities": "fig2_mean_probability.png",
    "02_hallucination_trajectories": "fig3_trajectories.png",
    "03_js_divergence": "fig4_js_heatmap.png",
    "04_skip_connections": "fig5_skip_presets.png",
    "05_features_single_image": "fig6_tsne.png",
    "06_features_vqa": "fig7_tsne.png",
    "07_lvlm_vs_llm": "js_lvlm_vs_llm.png",
    "08_applications": "compression_sweep.png",
    "09_quantization": "quantization_lens_kl.png",
    "10_image_tokens": "patch_category_accuracy.png",
}
#: metrics.json scalars pinned per notebook, besides the claims.
SCALARS = {
    "00_quickstart": ["n_tokens", "mean_p_first_layer", "mean_p_last_layer", "generated_text"],
    "01_token_probabilities": ["critical_layer", "mean_p_shallow", "mean_p_deep"],
    "02_hallucination_trajectories": ["chair", "critical_layer", "mutation_layers"],
    "03_js_divergence": [
        "critical_layer",
        "mutation_layers",
        "split_ratio",
        "tokens_with_mutation",
        "tokens_with_late_rise",
    ],
    "04_skip_connections": ["critical_layer", "mutation_layers"],
    "05_features_single_image": ["n_tokens", "median_path_linearity"],
    "06_features_vqa": ["accuracy", "fan_layer"],
    "07_lvlm_vs_llm": ["tokens_with_mutation"],
    "08_applications": ["critical_layer", "mutation_layers", "lowest_chair"],
    "09_quantization": ["memory_mb", "token_agreement", "chair", "stage_layers"],
    "10_image_tokens": ["best_layer", "critical_layer", "first_decodable_layer"],
}


def claim_id(claim: dict) -> str:
    """A claim's pinned name: its number, plus the compared run for per-variant claims
    (``"16[nf4]"``)."""
    key = claim["key"]
    return str(claim["number"]) + (key[key.index("[") :] if "[" in key else "")


def claim_number(claim_id: str) -> int:
    """The number of a pinned claim name."""
    return int(claim_id.split("[")[0])


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 6)


def pinned_from_outputs(outputs: Path) -> dict:
    """Each notebook's pinned numbers, read from a ``make reproduce`` output folder."""
    pinned = {}
    for name, keys in SCALARS.items():
        metrics = json.loads((outputs / name / "metrics.json").read_text())
        claims_path = outputs / name / "claims.json"
        claims = json.loads(claims_path.read_text()) if claims_path.is_file() else []
        pinned[name] = {
            "metrics": {k: metrics[k] for k in keys},
            "claims": {
                claim_id(c): {
                    "paper": c["paper"],
                    "figure": c["figure"],
                    "paper_number": c["paper_number"],
                    "statistic": c["statistic"],
                    "rule": c["rule"],
                    "value": _num(c["model"]["value"]),
                    "low": _num(c["model"]["low"]),
                    "high": _num(c["model"]["high"]),
                    "controls": {
                        name: _num(e["value"]) if e else None for name, e in c["controls"].items()
                    },
                    "verdict": c["verdict"],
                }
                for c in claims
            },
        }
    return pinned


def report_rows(pinned: dict) -> list[dict]:
    """Pinned claims as the report's rows (``lvlm_kit.report``), in claim order."""
    rows = [
        {
            **c,
            "id": n,
            "notebook": name,
            "model": {k: c[k] for k in ("value", "low", "high")},
            "controls": {k: None if v is None else {"value": v} for k, v in c["controls"].items()},
        }
        for name, p in pinned.items()
        for n, c in p["claims"].items()
    ]
    return sorted(rows, key=lambda r: (claim_number(r["id"]), r["id"]))


def render_table(pinned: dict) -> str:
    """The README's findings: the paper's claims, then the kit's own checks, each with a count."""
    rows = report_rows(pinned)
    paper = [r for r in rows if REGISTRY[claim_number(r["id"])].source == "paper"]
    kit = [r for r in rows if REGISTRY[claim_number(r["id"])].source == "kit"]
    paper_what = "The paper's claims on the testbed"
    kit_what = "The kit's own checks (a quantized run, notebook 09; the image tokens, notebook 10)"
    return "\n".join(
        [
            f"**{count_line([r['verdict'] for r in paper], paper_what)}**",
            "",
            table(paper, README_PAPER_COLUMNS, "md"),
            "",
            f"**{count_line([r['verdict'] for r in kit], kit_what)}**",
            "",
            table(kit, README_KIT_COLUMNS, "md"),
        ]
    )


def readme_with_table(readme: str, table: str, start: str = START, end: str = END) -> str:
    """``readme`` with the text between the ``start`` and ``end`` markers replaced."""
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


#: A pinned number in the README's prose: ``<!-- pin:NOTEBOOK.KEY:FORMAT -->text<!-- /pin -->``
#: (FORMAT a format spec, e.g. ``.0%``), rewritten from the pinned metrics.
PIN = re.compile(r"<!-- pin:(\w+)\.(\w+):(\S+) -->(.*?)<!-- /pin -->")


def readme_with_values(readme: str, pinned: dict) -> str:
    """``readme`` with every inline pinned number rewritten from ``pinned``."""

    def value(m: re.Match) -> str:
        name, key, spec = m.group(1), m.group(2), m.group(3)
        return f"<!-- pin:{name}.{key}:{spec} -->{pinned[name]['metrics'][key]:{spec}}<!-- /pin -->"

    return PIN.sub(value, readme)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def notebook_title(name: str) -> str:
    """The title of a notebook: its first heading without the "# " (from the .py twin)."""
    text = (ROOT / "notebooks" / f"{name}.py").read_text()
    return next(line[4:] for line in text.splitlines() if line.startswith("# # "))


def render_gallery(pinned: dict) -> str:
    """The README's gallery: per notebook its title, main figure and verdicts."""
    blocks = []
    for name in GALLERY:
        claims = sorted(pinned[name]["claims"].items(), key=lambda x: (claim_number(x[0]), x[0]))
        verdicts = "; ".join(f"claim {n}: {c['verdict']}" for n, c in claims) or "no claims"
        blocks.append(
            f"**{notebook_title(name)}** ({verdicts})\n\n![{name}](docs/gallery/{name}.png)"
        )
    return "\n\n".join(blocks)


def refresh_gallery(outputs: Path) -> dict:
    """Copy each notebook's main figure from ``outputs`` and write the manifest."""
    GALLERY_DIR.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, figure in GALLERY.items():
        target = GALLERY_DIR / f"{name}.png"
        shutil.copyfile(outputs / name / figure, target)
        figures[name] = sha256(target)
    manifest = {"weights_sha256": sha256(WEIGHTS), "figures": figures}
    (GALLERY_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(outputs: str) -> None:
    """Re-pin from ``outputs``, rewrite the README's results table and refresh its gallery."""
    pinned = pinned_from_outputs(Path(outputs))
    EXPECTED.write_text(json.dumps(pinned, indent=1, ensure_ascii=False) + "\n")
    refresh_gallery(Path(outputs))
    readme = readme_with_table(README.read_text(), render_table(pinned))
    readme = readme_with_table(readme, render_gallery(pinned), GALLERY_START, GALLERY_END)
    README.write_text(readme_with_values(readme, pinned))
    print(
        f"pinned {sum(len(p['claims']) for p in pinned.values())} claims to {EXPECTED}; "
        f"gallery in {GALLERY_DIR}"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "outputs"))
