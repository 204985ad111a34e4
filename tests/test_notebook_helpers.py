import json

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lvlm_kit import data, notebook
from lvlm_kit.testbed.world import DEFAULT_PRIORS, Scene


def test_testbed_probe_data_holds_a_without_b(tmp_path):
    items = data.resolve_data("testbed-probe", tmp_path, 6, seed=3)
    assert [i.id for i in items] == ["1", "2", "3", "4", "5", "6"]
    scenes = json.loads((tmp_path / "testbed_probe" / "data" / "scenes.json").read_text())
    for i, d in enumerate(scenes):
        prior = DEFAULT_PRIORS[i % len(DEFAULT_PRIORS)]
        cats = Scene.from_dict(d).categories
        assert prior.a in cats and prior.b not in cats
    # A second call with more images re-exports (no stale, smaller export is reused).
    assert len(data.resolve_data("testbed-probe", tmp_path, 9, seed=3)) == 9


def test_resolve_amber_slices_by_image(tmp_path):
    gen = data.resolve_amber("testbed", tmp_path, 4, seed=1)
    dis = data.resolve_amber("testbed", tmp_path, 4, seed=1, queries="discriminative")
    assert [q["id"] for q in gen.queries] == [1, 2, 3, 4]
    assert len(dis.queries) == 8 and {q["image"] for q in dis.queries} == {
        f"AMBER_{i}.jpg" for i in range(1, 5)
    }
    (tmp_path / "pics").mkdir()
    with pytest.raises(ValueError, match="no AMBER annotations"):
        data.resolve_amber(str(tmp_path / "pics"), tmp_path, 2)


def test_vqa_items(tmp_path):
    items = data.vqa_items("testbed", tmp_path, ["boat", "star"], 3, seed=0)
    assert [v["question"] for v in items] == ["what colour is the boat?"] * 3 + [
        "what colour is the star?"
    ] * 3
    assert all((tmp_path / "vqa_images").joinpath(v["image"]).is_file() for v in items)
    spec = tmp_path / "vqa.json"
    spec.write_text(json.dumps(items[:2]))
    assert data.vqa_items(str(spec), tmp_path, [], 0) == items[:2]


def test_record_and_show(tmp_path):
    out = notebook.record({"a": 1, "b": [0.5]}, tmp_path / "o")
    assert json.loads((tmp_path / "o" / "metrics.json").read_text()) == out
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["metrics.json"]
    fig, _ = plt.subplots()
    assert notebook.show(fig, tmp_path / "o", "f").name == "f.png"


def test_the_paper_models_preset_brings_its_base_llm(monkeypatch):
    from lvlm_kit import notebook
    from lvlm_kit.notebook import ParameterError
    from lvlm_kit.sources import base_llm, resolve_source

    assert resolve_source("llava-1.5-7b") == "llava-hf/llava-1.5-7b-hf"
    assert (
        base_llm("llava-1.5-7b") == base_llm("llava-hf/llava-1.5-7b-hf") == "lmsys/vicuna-7b-v1.5"
    )
    assert notebook.llm_model("testbed", "auto") == "testbed-llm"
    assert notebook.llm_model("llava-1.5-7b", "auto") == "lmsys/vicuna-7b-v1.5"
    assert notebook.llm_model("anything", None) is None
    assert notebook.llm_model("anything", "my/llm") == "my/llm"
    # The trap: another LVLM with the testbed's LLM. "auto" stops, before anything loads.
    monkeypatch.setattr(notebook, "load", lambda *a, **k: pytest.fail("loaded a model"))
    params = dict(
        MODEL="org/other-lvlm",
        QUANTIZATION=None,
        DEVICE="auto",
        DTYPE="auto",
        SEED=0,
        OUTPUT_DIR=None,
        LLM_MODEL="auto",
    )
    with pytest.raises(ParameterError, match="LLM_MODEL='auto'.*'org/other-lvlm' is not known"):
        notebook.start("07_lvlm_vs_llm", params)
