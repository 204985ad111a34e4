"""Every notebook runs through papermill on the testbed with small parameters; its recorded
headline numbers are asserted."""

import json
import math
from pathlib import Path

import papermill as pm
import pytest

pytestmark = pytest.mark.slow  # each runs a kernel and the testbed model

ROOT = Path(__file__).parent.parent
SMALL = {"MAX_NEW_TOKENS": 24, "N_IMAGES": 3, "SEED": 0}
EXTRA = {
    "00_quickstart": {"N_IMAGES": 1},
    "05_features_single_image": {"N_IMAGES": 1},
    "06_features_vqa": {"IMAGES_PER_QUESTION": 4, "MAX_NEW_TOKENS": 2},
    "07_lvlm_vs_llm": {"LLM_PROMPTS": ["describe this image.", "what colour is the boat?"]},
    "08_applications": {"N_IMAGES": 4, "N_STAGE_IMAGES": 2, "SKIP_KS": [1]},
}


def run(name: str, tmp_path: Path) -> dict:
    out = tmp_path / name
    params = {**SMALL, **EXTRA.get(name, {}), "OUTPUT_DIR": str(out)}
    pm.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters=params, kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False,
        execution_timeout=300, start_timeout=120,  # a dead kernel fails the test, never hangs it
    )  # fmt: skip
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs, "the notebook saved no figure"
    return {**json.loads((out / "metrics.json").read_text()), "_pngs": pngs}


def test_00_quickstart(tmp_path):
    m = run("00_quickstart", tmp_path)
    assert m["n_layers"] == 12 and m["lens_norm"] == "final_norm"
    assert m["last_layer_top1_share"] == 1.0  # greedy: the last layer's top-1 is emitted
    assert m["mean_p_last_layer"] > 0.6 > m["mean_p_first_layer"]
    assert m["generated_text"].startswith("there ")
    assert (tmp_path / "00_quickstart" / "trace.safetensors").is_file()


def test_01_token_probabilities(tmp_path):
    m = run("01_token_probabilities", tmp_path)
    assert m["n_layers"] == 12 and 1 <= m["critical_layer"] <= 6
    assert m["mean_p_deep"] > m["mean_p_shallow"] >= 0
    assert m["claim_near_zero_then_rise"] is (m["mean_p_shallow"] < 0.5 * m["mean_p_deep"])
    assert set(m["deep_top1_switches"]) == {"function", "content"}
    assert m["_pngs"] == ["fig2_candidates.png", "fig2_token_probabilities.png"]


def test_02_hallucination_trajectories(tmp_path):
    m = run("02_hallucination_trajectories", tmp_path)
    assert m["n_images"] == 3 and 0 <= m["chair"] <= 1 and 0 < m["cover"] <= 1
    assert m["n_object_tokens"].get("correct", 0) >= 3  # every description names objects
    for layer in m["mean_overtake_layer"].values():
        assert 0 <= layer <= 12
    assert isinstance(m["claim_hallucinated_overtake_later"], bool)


def test_03_js_divergence(tmp_path):
    m = run("03_js_divergence", tmp_path)
    assert m["has_split"] and m["split_ratio"] > 3 and m["claim_shallow_deep_split"]
    assert m["shallow_js"] <= math.log(2) and m["deep_js"] > 0
    assert all(m["critical_layer"] < j <= 12 for j in m["mutation_layers"])
    assert 0.5 < m["dola_over_jsd_per_v_median"] < 2


def test_04_skip_connections(tmp_path):
    m = run("04_skip_connections", tmp_path)
    presets = m["presets"]
    assert presets["plain"]["overlap_with_plain"] == 1.0 and presets["plain"]["skipped"] == []
    assert "skip3" in presets and presets["skip3"]["skipped"]
    for p in presets.values():
        assert 0 <= p["overlap_with_plain"] <= 1 and 0 <= p["chair"] <= 1


def test_05_features_single_image(tmp_path):
    m = run("05_features_single_image", tmp_path)
    assert m["n_layers"] == 12 and len(m["spread_by_layer"]) == 12
    assert 0 < m["median_path_linearity"] <= 1
    assert m["_pngs"] == ["fig6_tsne.png", "fig6_umap.png"]


def test_06_features_vqa(tmp_path):
    m = run("06_features_vqa", tmp_path)
    assert m["n_images"] == 16 and len(m["spread_by_layer"]) == 12
    assert m["accuracy"] == pytest.approx(15 / 16, abs=2 / 16)  # 15 of 16 here; chance is 1/6
    assert m["neck_spread"] <= m["fan_spread"]


def test_07_lvlm_vs_llm(tmp_path):
    m = run("07_lvlm_vs_llm", tmp_path)
    assert m["lvlm"]["n_layers"] == m["llm"]["n_layers"] == 12
    assert m["split_ratio"]["lvlm"] > 1 and m["split_ratio"]["llm"] > 0
    assert m["claim_llm_weaker_hierarchy"] is (m["split_ratio"]["llm"] < m["split_ratio"]["lvlm"])


def test_08_applications(tmp_path):
    m = run("08_applications", tmp_path)
    sweep = m["sweep"]
    assert [p["k"] for p in sweep] == [0, 1] and sweep[0]["speedup"] == 1.0
    assert sweep[1]["ideal_speedup"] == pytest.approx(12 / 11)
    assert list(m["decoding"]) in (
        ["plain", "skip2", "dola", "anchor"],
        ["plain", "dola", "anchor"],
    )
    # The same greedy decoding on the same images: the sweep's k=0 equals "plain".
    assert m["decoding"]["plain"]["chair"] == pytest.approx(sweep[0]["chair"])
    assert m["lowest_chair"] in m["decoding"]
