"""The lens on the image tokens: every patch decoded at every layer, checked against the
model's own logits, on every image-text family."""

import pytest
import torch
from test_families import VISION, _image, _skip_without_torchvision, save_tiny

from lvlm_kit import load_model
from lvlm_kit.image_lens import image_token_lens
from lvlm_kit.inputs import prepare_inputs

PROMPT = "Describe the image."


def test_the_last_layer_is_the_models_own_prediction_at_each_patch(tiny_llava, image):
    words = ["boat", "tree", "red"]
    pl = image_token_lens(tiny_llava, image, PROMPT, words=words, top_k=3)
    inputs, _ = prepare_inputs(tiny_llava, image, PROMPT)
    with torch.inference_mode():
        logits = tiny_llava.model(**inputs).logits[0, pl.positions].float()  # [P, V]
    probs = logits.softmax(-1)
    L = tiny_llava.anatomy.n_layers
    assert pl.topk_ids.shape == (L + 1, 16, 3) and pl.grid == (4, 4) and pl.n_layers == L
    assert torch.equal(pl.topk_ids[L], probs.topk(3).indices)
    torch.testing.assert_close(pl.topk_probs[L], probs.topk(3).values, atol=1e-5, rtol=1e-4)
    ids = [tiny_llava.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
    torch.testing.assert_close(pl.word_probs[L], probs[:, ids], atol=1e-5, rtol=1e-4)
    assert (pl.topk_probs[:, :, :-1] >= pl.topk_probs[:, :, 1:]).all()
    assert pl.as_grid(pl.word_probs[L, :, 0]).shape == (4, 4)


def test_true_ranks_and_chunks(tiny_llava, image):
    base = image_token_lens(tiny_llava, image, PROMPT, words=["boat"])
    top1 = [tiny_llava.tokenizer.decode([int(i)]) for i in base.topk_ids[2, :, 0]]
    truth = [w if i % 2 else None for i, w in enumerate(top1)]  # the layer-2 winner, or none
    pl = image_token_lens(tiny_llava, image, PROMPT, words=["boat"], truth=truth, chunk_mb=0.001)
    torch.testing.assert_close(pl.word_probs, base.word_probs)  # one patch at a time
    assert torch.equal(pl.topk_ids, base.topk_ids)
    known = torch.tensor([t is not None for t in truth])
    assert (pl.true_rank[2, known] == 0).all() and (pl.true_rank[:, ~known] == -1).all()
    with pytest.raises(ValueError, match="truth has 3 entries for 16 image tokens"):
        image_token_lens(tiny_llava, image, PROMPT, truth=["boat"] * 3)
    with pytest.raises(ValueError, match="'zebra' is not in the model's vocabulary.*<unk>"):
        image_token_lens(tiny_llava, image, PROMPT, words=["boat", "zebra"])


def test_a_text_model_or_no_image_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="holds no image token.*image-text model"):
        image_token_lens(tiny_llama, None, PROMPT)


@pytest.mark.parametrize("name", VISION)
@pytest.mark.parametrize("size", [(60, 80), (100, 60)])
def test_every_image_text_family(name, size, tmp_path):
    _skip_without_torchvision(name)
    lm = load_model(save_tiny(name, tmp_path), dtype="float32")
    pl = image_token_lens(lm, _image(1, size), PROMPT, words=["a"], top_k=2)
    inputs, _ = prepare_inputs(lm, _image(1, size), PROMPT)
    mask = lm.anatomy.image_positions(inputs["input_ids"][0])
    assert torch.equal(pl.positions, mask.nonzero().flatten())  # dynamic resolution too
    L = lm.anatomy.n_layers
    with torch.inference_mode():
        logits = lm.model(**inputs).logits[0, pl.positions].float()
    assert torch.equal(pl.topk_ids[L, :, 0], logits.argmax(-1))


def test_patch_accuracy_and_the_prior_probe_read_the_right_cells():
    import numpy as np

    from lvlm_kit.image_lens import PatchLens, neighbours, patch_accuracy, word_near

    L1, P = 3, 9  # a 3x3 grid
    probs = torch.tensor([0.1, 0.1, 0.2]).repeat(L1, P, 1)  # "fish" on top unless set
    probs[2, 0, 0] = 0.9  # at the last layer, patch 0 says "boat"
    probs[1:, 4, 2] = 0.8  # from layer 1, patch 4 says "fish"
    probs[:, 1, 1] = 0.5  # patch 1 says "tree" everywhere
    pl = PatchLens(
        torch.arange(P),
        (3, 3),
        torch.zeros(L1, P, 1, dtype=torch.long),
        torch.zeros(L1, P, 1),
        ["boat", "tree", "fish"],
        torch.arange(3),
        probs,
        None,
        "final_norm",
    )
    truth = ["boat", "tree", None, None, "fish", None, None, None, None]
    acc = patch_accuracy([pl], [truth], ["boat", "tree", "fish"])
    np.testing.assert_allclose(acc, [[2 / 3, 2 / 3, 1.0]])  # tree; tree, fish; all three
    assert neighbours([0], 3) == {1, 3, 4} and neighbours([4], 3) == set(range(9)) - {4}
    near, far = word_near([pl], [[0]], "fish")  # around patch 0: 1, 3, 4; elsewhere 2, 5-8
    np.testing.assert_allclose(near, [[0.2, 0.4, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(far, [[0.2, 0.2, 0.2]], rtol=1e-6)


def test_the_testbeds_cells_are_known_and_real_images_are_refused(tmp_path):
    import json

    from lvlm_kit import data
    from lvlm_kit.testbed.world import GRID, Scene

    amber = data.resolve_amber("testbed", tmp_path, 3, seed=0)
    cells = data.cell_truth(amber)
    scenes = [Scene.from_dict(d) for d in json.loads((amber.root / "data/scenes.json").read_text())]
    assert len(cells) == 3 and all(len(c) == GRID * GRID for c in cells)
    for image, scene in zip(cells, scenes):
        drawn = {(g.category, g.colour) for g in scene.visible}
        assert {c for c in image if c} == drawn
        assert sum(c is not None for c in image) == sum(len(g.cells) for g in scene.visible)
    (amber.root / "data" / "scenes.json").unlink()
    with pytest.raises(ValueError, match="no data/scenes.json: per-cell ground truth"):
        data.cell_truth(amber)


def test_the_image_token_claim_both_ways():
    import numpy as np

    from lvlm_kit import claims

    cfg = claims.ClaimConfig(n_boot=200)
    rng = np.random.default_rng(0)
    rises = np.clip(np.linspace(0, 0.8, 6)[None] + rng.normal(0, 0.02, (20, 6)), 0, 1)
    chance_level = np.full((20, 6), 1 / 12) + rng.normal(0, 0.02, (20, 6))
    noise = {"permuted": claims.PatchAccuracy(chance_level, 1 / 12)}
    r = claims.image_tokens_decode(claims.PatchAccuracy(rises, 1 / 12), noise, cfg)
    assert r.verdict == "shown" and "best layer 5 of 5" in r.notes[0]
    r = claims.image_tokens_decode(claims.PatchAccuracy(chance_level, 1 / 12), noise, cfg)
    assert r.verdict != "shown"
    # A best layer picked on the same images would pass on noise by selection alone; it is
    # picked on the other half: a layer that is best on even images only does not count.
    spike = chance_level.copy()
    spike[0::2, 2] = 0.9
    assert claims.image_tokens_decode(claims.PatchAccuracy(spike, 1 / 12), noise, cfg).verdict != (
        "shown"
    )


def test_the_patch_explorer_follows_layer_and_word(tiny_llava, image):
    from PIL import Image

    from lvlm_kit.widgets import PatchExplorer

    pl = image_token_lens(tiny_llava, image, PROMPT, words=["boat", "tree"])
    view = PatchExplorer(pl, Image.fromarray(image))
    first = view.figure
    assert "layer 4" in first.axes[1].get_title() and "'boat'" in first.axes[1].get_title()
    view.layer.value, view.word.value = 1, "tree"
    assert "p('tree') at layer 1" in view.figure.axes[1].get_title()
    shown = view.figure.axes[1].collections[0].get_array().reshape(4, 4)
    np_pl = pl.as_grid(pl.word_probs[1, :, 1]).numpy()
    assert abs(shown - np_pl).max() < 1e-6


def _lens(probs: torch.Tensor, words: list[str]):
    from lvlm_kit.image_lens import PatchLens

    L1, P, _ = probs.shape
    zeros = torch.zeros(L1, P, 1)
    side = int(P**0.5)
    return PatchLens(
        torch.arange(P),
        (side, side),
        zeros.long(),
        zeros,
        words,
        torch.arange(len(words)),
        probs,
        None,
        "final_norm",
    )


def test_cell_accuracy_reads_each_kind_of_truth_and_the_true_words_probability():
    import numpy as np

    from lvlm_kit.image_lens import cell_accuracy

    words = ["boat", "tree", "fish", "red", "blue"]
    probs = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.2]).repeat(3, 9, 1)
    probs[2, 0, 0] = 0.9  # at the last layer, patch 0 says "boat"
    probs[1:, 4, 2] = 0.8  # from layer 1, patch 4 says "fish"
    probs[:, 1, 1] = 0.5  # patch 1 says "tree" everywhere
    probs[2, 1, 4] = 0.6  # and "blue" at the last layer
    cells = [[("boat", "red"), ("tree", "blue"), None, None, ("fish", "red"), *[None] * 4]]
    acc = cell_accuracy(
        [_lens(probs, words)],
        cells,
        {"category": ["boat", "tree", "fish"], "colour": ["red", "blue"]},
    )
    np.testing.assert_allclose(acc["category"].accuracy, [[2 / 3, 2 / 3, 1.0]])
    np.testing.assert_allclose(acc["colour"].accuracy, [[2 / 3, 2 / 3, 1.0]])
    assert acc["category"].chance == pytest.approx(1 / 3) and acc["colour"].chance == 0.5
    assert acc["category"].best_layer == 2
    truth = [c[0] if c else None for c in cells[0]]
    np.testing.assert_allclose(
        _lens(probs, words).true_word_prob(2, truth), [0.9, 0.5, 0, 0, 0.8, 0, 0, 0, 0]
    )


def test_the_first_layer_above_chance_needs_its_whole_band_above():
    import numpy as np

    from lvlm_kit.image_lens import PatchAccuracy

    rng = np.random.default_rng(0)
    n = 40
    acc = np.stack(
        [
            np.tile([0.0, 2 / 3], n // 2),  # layer 0: mean exactly chance, wide band
            0.36 + 0.3 * rng.standard_normal(n),  # layer 1: mean near chance, band straddles
            0.6 + 0.05 * rng.standard_normal(n),  # layer 2: clearly above
            np.full(n, 0.9),
        ],
        1,
    )
    acc[3] = np.nan  # an image without a known patch is left out
    assert PatchAccuracy(acc, 1 / 3).first_layer_above_chance(0) == 2
    assert PatchAccuracy(acc[:, :2], 1 / 3).first_layer_above_chance(0) is None
    assert PatchAccuracy(acc, 1 / 3).best_layer == 3


def test_the_prior_probe_splits_scenes_by_their_anchor():
    import numpy as np

    from lvlm_kit.image_lens import prior_probe

    words = ["boat", "fish"]
    with_boat = torch.tensor([0.5, 0.1]).repeat(3, 9, 1)
    with_boat[1:, [1, 3, 4], 1] = 0.3  # from layer 1, "fish" next to the boat (patch 0)
    without = torch.tensor([0.5, 0.05]).repeat(3, 9, 1)
    boat = [("boat", "red"), *[None] * 8]
    lenses = [_lens(with_boat, words), _lens(without, words), _lens(with_boat, words)]
    probe = prior_probe(lenses, [boat, [None] * 9, boat], anchor="boat", word="fish")
    np.testing.assert_allclose(probe.near, [[0.1, 0.3, 0.3]] * 2, rtol=1e-6)
    np.testing.assert_allclose(probe.elsewhere, [[0.1, 0.1, 0.1]] * 2, rtol=1e-6)
    np.testing.assert_allclose(probe.without, [[0.05] * 3], rtol=1e-6)
    layers, low, high = probe.layers_higher_near(0)
    assert layers == [1, 2]
    np.testing.assert_allclose(low, [0, 0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(high, low, atol=1e-6)  # two equal scenes: no spread
