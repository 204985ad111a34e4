"""The shipped testbed model: loads offline and reproduces its recorded quality."""

import json

import pytest

from lvlm_kit import load_model
from lvlm_kit.testbed.evaluate import evaluate
from lvlm_kit.testbed.train import CI_SAMPLE, SHAPE, TESTBED_DIR

METRICS = json.loads((TESTBED_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def testbed():
    return load_model("testbed")


def test_loads_offline_through_load_model(testbed):
    a = testbed.anatomy
    assert (a.model_type, a.n_layers, a.hidden_size) == ("llava", SHAPE.layers, SHAPE.hidden)
    assert testbed.processor.chat_template is not None
    size = sum(p.stat().st_size for p in (TESTBED_DIR / "model").iterdir())
    assert size < 40 * 2**20  # the data folder stays small


def test_reaches_the_recorded_metrics_on_the_ci_sample(testbed):
    got = evaluate(testbed, **CI_SAMPLE, progress=False)
    want = METRICS["ci_sample"]
    for key in ("object_precision", "object_recall", "colour_accuracy", "vqa_accuracy"):
        assert got[key] == pytest.approx(want[key], abs=0.02), key
    for g, w in zip(got["priors"], want["priors"]):
        assert g["hallucination_rate_b"] == pytest.approx(w["hallucination_rate_b"], abs=0.09)


def test_recorded_quality():
    assert METRICS["n_scenes"] >= 200
    assert METRICS["object_precision"] >= 0.85 and METRICS["vqa_accuracy"] >= 0.90  # the aims
    for prior in METRICS["priors"]:  # the planted prior shows: B named above the base rate
        assert prior["hallucination_rate_b"] > 1.5 * prior["base_rate_other_absent"]
        assert prior["hallucination_rate_b"] >= 0.1
