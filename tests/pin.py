"""The pinned headline numbers: one file (``tests/expected_metrics.json``) that the notebook
tests assert and that the README's results table is generated from.

    python tests/pin.py outputs     # after `make reproduce`: re-pin and rewrite the README table

Each notebook's pinned numbers are its claims (value, interval, control value, verdict) and
a few scalars of its ``metrics.json``. Re-pinning is a deliberate act: a model change that
moves a number fails the notebook tests until the new numbers are reviewed and pinned.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = Path(__file__).resolve().parent / "expected_metrics.json"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
#: metrics.json scalars pinned per notebook, besides the claims.
SCALARS = {
    "00_quickstart": ["n_tokens", "mean_p_first_layer", "mean_p_last_layer", "generated_text"],
    "01_token_probabilities": ["critical_layer", "mean_p_shallow", "mean_p_deep"],
    "02_hallucination_trajectories": ["chair", "critical_layer", "mutation_layers"],
    "03_js_divergence": ["critical_layer", "mutation_layers", "split_ratio"],
    "04_skip_connections": ["critical_layer", "mutation_layers"],
    "05_features_single_image": ["n_tokens", "median_path_linearity"],
    "06_features_vqa": ["accuracy", "fan_layer"],
    "07_lvlm_vs_llm": ["tokens_with_mutation"],
    "08_applications": ["critical_layer", "mutation_layers", "lowest_chair"],
    "09_quantization": ["memory_mb", "token_agreement", "chair", "stage_layers"],
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
                    "statistic": c["statistic"],
                    "rule": c["rule"],
                    "value": _num(c["model"]["value"]),
                    "low": _num(c["model"]["low"]),
                    "high": _num(c["model"]["high"]),
                    "control": _num(c["control"]["value"]) if c["control"] else None,
                    "verdict": c["verdict"],
                }
                for c in claims
            },
        }
    return pinned


def render_table(pinned: dict) -> str:
    """The README's results table: one row per claim, from the pinned numbers."""
    rows = [
        "| # | claim | notebook | statistic (rule) | testbed [95% CI] | random weights | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    claims = sorted(
        ((n, name, c) for name, p in pinned.items() for n, c in p["claims"].items()),
        key=lambda x: (claim_number(x[0]), x[0]),
    )
    for n, name, c in claims:
        measured = "n/a" if c["value"] is None else f"{c['value']:.3g}"
        if c["low"] is not None:
            measured += f" [{c['low']:.3g}, {c['high']:.3g}]"
        control = "n/a" if c["control"] is None else f"{c['control']:.3g}"
        rows.append(
            f"| {n} | {c['paper']} ({c['figure']}) | {name[:2]} | {c['statistic']} "
            f"({c['rule']}) | {measured} | {control} | **{c['verdict']}** |"
        )
    return "\n".join(rows)


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the results markers replaced by ``table``."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(outputs: str) -> None:
    """Re-pin from ``outputs`` and rewrite the README's results table."""
    pinned = pinned_from_outputs(Path(outputs))
    EXPECTED.write_text(json.dumps(pinned, indent=1, ensure_ascii=False) + "\n")
    README.write_text(readme_with_table(README.read_text(), render_table(pinned)))
    print(f"pinned {sum(len(p['claims']) for p in pinned.values())} claims to {EXPECTED}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "outputs"))
