"""The shipped testbed models: load offline and reproduce their recorded quality."""

import json

import pytest
from conftest import build_wheel

from lvlm_kit import load_model
from lvlm_kit.testbed.evaluate import evaluate
from lvlm_kit.testbed.train import CI_SAMPLE, SHAPE, WEIGHTS_DIR

METRICS = json.loads((WEIGHTS_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def testbed():
    return load_model("testbed")


def test_loads_offline_through_load_model(testbed):
    a = testbed.anatomy
    assert (a.model_type, a.n_layers, a.hidden_size) == ("llava", SHAPE.layers, SHAPE.hidden)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi."}]}]
    rendered = testbed.processor.apply_chat_template(chat, add_generation_prompt=True)
    assert rendered == "USER: <image>\nhi. ASSISTANT:"  # LLaVA-1.5's conversation format
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size <= 50 * 2**20  # both models, in the package


def test_base_language_model_is_the_lvlms_text_model(testbed):
    llm = load_model("testbed-llm")
    assert not llm.is_vision and llm.anatomy.model_type == "llama"
    assert (llm.anatomy.n_layers, llm.anatomy.hidden_size) == (SHAPE.layers, SHAPE.hidden)
    assert llm.tokenizer.get_vocab() == testbed.tokenizer.get_vocab()
    assert llm.tokenizer.chat_template == testbed.tokenizer.chat_template


def test_reaches_the_recorded_metrics_on_the_ci_sample(testbed):
    got = evaluate(testbed, **CI_SAMPLE, progress=False)
    want = METRICS["ci_sample"]
    for key in ("object_precision", "object_recall", "colour_accuracy", "vqa_accuracy"):
        assert got[key] == pytest.approx(want[key], abs=0.02), key
    assert got["relations_per_description"] == want["relations_per_description"]
    for g, w in zip(got["priors"], want["priors"]):
        assert g["hallucination_rate_b"] == pytest.approx(w["hallucination_rate_b"], abs=0.09)


def test_recorded_quality():
    assert METRICS["n_scenes"] >= 200
    assert METRICS["object_precision"] >= 0.95  # the aim
    assert METRICS["relation_accuracy"] is None or METRICS["relation_accuracy"] >= 0.90
    assert METRICS["vqa_accuracy"] >= 0.95  # the aim
    # Every question type is at least 0.96 except "what is the <colour> object?", whose
    # colour-to-category lookup is the hardest (0.78).
    by_type = METRICS["vqa_accuracy_by_type"]
    assert METRICS["vqa_accuracy"] == pytest.approx(0.9590, abs=1e-4)
    assert min(v for k, v in by_type.items() if k != "object") >= 0.96
    assert by_type["object"] == pytest.approx(0.7848, abs=1e-4)
    for prior in METRICS["priors"]:  # B named clearly above the rate of other absent objects
        assert prior["hallucination_rate_b_ci95"][0] > prior["base_rate_other_absent_ci95"][1]
        assert prior["hallucination_rate_b"] >= 0.1


@pytest.mark.slow
def test_wheel_ships_both_testbed_models(tmp_path):
    """The weights are package data: a wheel built from the checkout holds them (<= 50 MB)."""
    import zipfile

    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for model in ("lvlm", "llm"):
        for file in ("config.json", "model.safetensors", "tokenizer.json"):
            assert f"lvlm_kit/testbed/weights/{model}/{file}" in names
    assert "lvlm_kit/testbed/weights/metrics.json" in names
    assert wheel.stat().st_size <= 50 * 2**20
