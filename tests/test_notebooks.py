"""Every notebook runs through papermill on the testbed at its default parameters, and its
headline numbers and claim verdicts equal the pinned ones (tests/expected_metrics.json)."""

import json
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, run_notebook
from pin import (
    EXPECTED,
    GALLERY,
    GALLERY_DIR,
    GALLERY_END,
    GALLERY_START,
    README,
    WEIGHTS,
    claim_id,
    claim_number,
    readme_with_table,
    readme_with_values,
    render_gallery,
    render_table,
    sha256,
)

ROOT = Path(__file__).parent.parent
PINNED = json.loads(EXPECTED.read_text())
FIGURES = {
    "00_quickstart": ["token_probabilities.png"],
    "01_token_probabilities": [
        "fig2_candidates.png",
        "fig2_mean_probability.png",
        "fig2_token_probabilities.png",
    ],
    "02_hallucination_trajectories": ["fig3_trajectories.png"],
    "03_js_divergence": ["fig4_js_heatmap.png", "fig4_js_stages.png"],
    "04_skip_connections": ["fig5_skip_presets.png"],
    "05_features_single_image": ["fig6_tsne.png", "fig6_umap.png"],
    "06_features_vqa": ["fig7_tsne.png", "fig7_umap.png"],
    "07_lvlm_vs_llm": ["js_lvlm_vs_llm.png"],
    "08_applications": ["compression_sweep.png", "decoding_variants.png"],
    "09_quantization": ["quantization_js_curves.png", "quantization_lens_kl.png"],
    "10_image_tokens": [
        "patch_category_accuracy.png",
        "patch_colour_accuracy.png",
        "patch_heatmap.png",
        "prior_fish.png",
    ],
}


def approx(value):
    """Pinned numbers hold to 1e-4: any change of the model's weights moves them further."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-4, nan_ok=True)  # NaN: undefined (no nouns)
    if isinstance(value, dict):
        return {k: approx(v) for k, v in value.items()}
    return value


@pytest.mark.slow
@pytest.mark.kernels
@pytest.mark.parametrize("name", sorted(PINNED))
def test_notebook_reproduces_its_pinned_numbers(name, tmp_path):
    out = tmp_path / name
    run_notebook(name, tmp_path, {"OUTPUT_DIR": str(out)}, timeout=600)
    assert sorted(p.name for p in out.glob("*.png")) == FIGURES[name]
    metrics = json.loads((out / "metrics.json").read_text())
    pinned = PINNED[name]
    for key, value in pinned["metrics"].items():
        assert metrics[key] == approx(value), key
    claims = (
        {claim_id(c): c for c in json.loads((out / "claims.json").read_text())}
        if (out / "claims.json").is_file()
        else {}
    )
    assert sorted(claims) == sorted(pinned["claims"])
    for number, want in pinned["claims"].items():
        got = claims[number]
        assert got["verdict"] == want["verdict"], f"claim {number}"
        for key in ("value", "low", "high"):
            if want[key] is None:
                assert got["model"][key] != got["model"][key], f"claim {number} {key} is NaN"
            else:
                assert got["model"][key] == approx(want[key]), f"claim {number} {key}"
        assert sorted(got["controls"]) == sorted(want["controls"]), f"claim {number}"
        for name, e in got["controls"].items():
            control = e["value"] if e else None
            control = None if control != control else control  # NaN: the control has no value
            assert (control is None) == (want["controls"][name] is None), f"{number} {name}"
            if control is not None:
                assert control == approx(want["controls"][name]), f"claim {number} {name}"
        if got["verdict"] == "shown":  # no pass without every control measured
            assert all(v is not None for v in want["controls"].values()), f"claim {number}"


def test_readme_results_table_is_generated_from_the_pinned_numbers():
    readme = README.read_text()
    assert readme_with_table(readme, render_table(PINNED)) == readme, (
        "README's results table differs from tests/expected_metrics.json: run "
        "`python tests/pin.py outputs` after `make reproduce`"
    )


def test_readme_prose_numbers_are_the_pinned_ones():
    readme = README.read_text()
    assert readme.count("<!-- pin:") >= 2
    assert readme_with_values(readme, PINNED) == readme, (
        "a number in README's prose differs from tests/expected_metrics.json: run "
        "`python tests/pin.py outputs` after `make reproduce`."
    )


def test_readme_gallery_is_fresh():
    # The gallery's figures were drawn by the shipped testbed in the pinned run.
    manifest = json.loads((GALLERY_DIR / "manifest.json").read_text())
    assert manifest["weights_sha256"] == sha256(WEIGHTS), (
        "the gallery was drawn by other testbed weights: run `make reproduce` then `make pin`"
    )
    assert sorted(manifest["figures"]) == sorted(GALLERY)
    for name, digest in manifest["figures"].items():
        assert sha256(GALLERY_DIR / f"{name}.png") == digest, f"{name}.png was changed by hand"
    readme = README.read_text()
    block = readme_with_table(readme, render_gallery(PINNED), GALLERY_START, GALLERY_END)
    assert block == readme, "README's gallery differs from the pinned run: run `make pin`"


def test_every_claim_is_pinned_once():
    names = sorted((claim_number(n), n) for p in PINNED.values() for n in p["claims"])
    paper = [n for k, n in names if k <= 15]
    assert paper == [str(k) for k in range(1, 16)]  # the paper's claims, once each
    kit = [n for k, n in names if 15 < k <= 20]  # notebook 09's checks, once per variant
    assert kit == [f"{k}[{v}]" for k in range(16, 21) for v in ("8bit", "fp4", "nf4")]
    assert [n for k, n in names if k > 20] == ["21"]  # notebook 10's, on the image tokens


@pytest.mark.slow
@pytest.mark.kernels
def test_the_colab_notebook_runs_the_quickstart_as_it_would_on_llava(tmp_path):
    """colab/llava_1_5_7b.ipynb with the testbed in place of LLaVA (no weights download
    here): the same cells, the quickstart run through papermill, its figures shown."""
    import papermill as pm

    colab = Path(__file__).resolve().parent.parent / "colab" / "llava_1_5_7b.ipynb"
    out = tmp_path / "quick"
    params = {
        "MODEL": "testbed",
        "QUANTIZATION": None,
        "OUTPUT_DIR": str(out),
        "NOTEBOOK": str(NOTEBOOKS / "00_quickstart.ipynb"),
        "MAX_NEW_TOKENS": 8,
    }
    pm.execute_notebook(
        str(colab),
        str(tmp_path / "colab.ipynb"),
        parameters=params,
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=300,
        start_timeout=120,
        cwd=str(tmp_path),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_tokens"] == 8 and (out / "00_quickstart.ipynb").is_file()
    executed = json.loads((tmp_path / "colab.ipynb").read_text())
    shown = [
        o
        for c in executed["cells"]
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(shown) == len(list(out.glob("*.png"))) >= 1
