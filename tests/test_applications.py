import math

import pytest
import torch
from conftest import contrast_step

from lvlm_kit.applications import (
    LayerContrast,
    compare_decoding,
    compression_sweep,
    decoding_table,
    stable_layers_by_js,
    sweep_table,
)
from lvlm_kit.data import export_amber, hold_out, read_amber
from lvlm_kit.divergence import js_divergence
from lvlm_kit.generation import generate_texts
from lvlm_kit.stages import Stages

PROMPT = "Describe the image."


def test_dola_step_matches_manual(tiny_llava, image):
    lc = LayerContrast(tiny_llava, [1, 2, 3], "dola", relative_top=0.1)
    out, logp = contrast_step(tiny_llava, image, PROMPT, lc)
    final = logp[-1]
    j = max([1, 2, 3], key=lambda i: js_divergence(final, logp[i]).item())
    assert lc.chosen == [j]
    keep = final >= final.max() + math.log(0.1)
    expected = (final - logp[j]).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert int(keep.sum()) >= 1 and torch.isinf(out[~keep]).all()


def test_anchor_step_matches_manual(tiny_llava, image):
    lc = LayerContrast(tiny_llava, [2], "anchor", alpha=0.5, relative_top=0.05)
    out, logp = contrast_step(tiny_llava, image, PROMPT, lc)
    keep = logp[-1] >= logp[-1].max() + math.log(0.05)
    expected = (logp[-1] + 0.5 * logp[2]).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_layer_contrast_arguments(tiny_llava):
    with pytest.raises(ValueError, match="mode='beam' is unknown"):
        LayerContrast(tiny_llava, [1], "beam")
    with pytest.raises(ValueError, match=r"lens layers in 1..3"):
        LayerContrast(tiny_llava, [4], "dola")
    with pytest.raises(ValueError, match="exactly one layer"):
        LayerContrast(tiny_llava, [1, 2], "anchor")
    with pytest.raises(RuntimeError, match="inside a `with` block"):
        LayerContrast(tiny_llava, [1], "dola")(None, torch.zeros(1, 5))


def test_batched_generation_matches_one_by_one(tiny_llava, image):
    images = [image, image[::-1].copy(), image[:, ::-1].copy()]
    prompts = [PROMPT, "what colour is the boat?", "how many cats are there?"]
    batched = generate_texts(tiny_llava, images, prompts, 6, batch_size=3, progress=False)
    single = [
        generate_texts(tiny_llava, [im], [p], 6, progress=False)[0]
        for im, p in zip(images, prompts)
    ]
    assert batched == single
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        generate_texts(tiny_llava, images, prompts[:2], 6)


def stages_4():
    return Stages(
        n_layers=4,
        critical_layer=1,
        has_split=True,
        mutation_layers=[4],
        js_curve=[0.4, 0.02, 0.01, 0.2],
        shallow_js=0.4,
        deep_js=0.08,
        token_critical=[],
        token_mutations=[],
        mutation_share=[0.0] * 5,
    )


def test_stable_layer_order():
    # Stabilisation = lens layers 1..3; layers 2, 3 are candidates, 3 is the most stable.
    assert stable_layers_by_js(stages_4()) == [2, 1]


def test_sweep_and_comparison_on_an_amber_export(tiny_llava, tmp_path):
    root = export_amber(tmp_path / "amber", n_images=4, seed=1)
    gen, dis = read_amber(root), read_amber(root, "discriminative")
    points = compression_sweep(tiny_llava, gen, stages_4(), [1, 2], dis, 8, progress=False)
    assert [p.k for p in points] == [0, 1, 2]
    assert [p.skipped for p in points] == [[], [2], [1, 2]]
    assert points[0].speedup == 1.0 and points[2].ideal_speedup == 2.0
    # the random tiny model names no AMBER object unskipped (CHAIR undefined, not 0), and
    # only hallucinated ones with layer 2 skipped; precision is 1 - CHAIR
    chairs = [p.chair for p in points]
    assert math.isnan(chairs[0]) and chairs[1] == 1.0 and math.isnan(chairs[2])
    assert [p.object_precision for p in points] == pytest.approx(
        [1 - c for c in chairs], nan_ok=True
    )
    for p in points:
        assert p.object_recall == 0 and 0 <= p.existence_accuracy <= 1 and p.tokens_per_second > 0
    with pytest.raises(ValueError, match="only 2 stable layers"):
        compression_sweep(tiny_llava, gen, stages_4(), [3], progress=False)
    results = compare_decoding(tiny_llava, gen, stages_4(), 8, progress=False)
    assert list(results) == ["plain", "skip2", "dola", "anchor"]
    assert results["skip2"]["skipped"] == [3]
    assert results["plain"]["chair"] == pytest.approx(points[0].chair, nan_ok=True)
    assert len(results["dola"]["responses"]) == 4
    table = decoding_table(results)
    assert list(table) == list(results) and "responses" not in table["dola"]
    assert "per_image" not in table["plain"] and table["skip2"]["skipped"] == [3]
    rows = sweep_table(points)
    assert [r["k"] for r in rows] == [0, 1, 2] and "existence_correct" not in rows[0]
    assert rows[1]["existence_accuracy"] == points[1].existence_accuracy
    # the first two images set aside, the questions of the other two kept
    aside, judged, questions = hold_out(gen, dis, 2)
    assert aside == [gen.image_path(q) for q in gen.queries[:2]]
    assert judged.queries == gen.queries[2:]
    kept = {q["image"] for q in gen.queries[2:]}
    assert questions.queries and {q["image"] for q in questions.queries} == kept
