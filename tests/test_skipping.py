import pytest
import torch

from lvlm_kit import trace
from lvlm_kit.generation import greedy_config
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.stages import Stages, skip_preset
from lvlm_kit.surgery import check_layers, skip_layers

PROMPT = "Describe the image."


def generate(loaded, image, n=10, use_cache=True):
    inputs, _ = prepare_inputs(loaded, image, PROMPT)
    cfg = greedy_config(loaded.model, n)
    cfg.use_cache = use_cache
    out = loaded.model.generate(**inputs, generation_config=cfg)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_skipping_nothing_is_plain_generate(tiny_llava, image):
    plain = generate(tiny_llava, image)
    with skip_layers(tiny_llava.anatomy, []) as skipped:
        assert skipped == [] and generate(tiny_llava, image) == plain


@pytest.mark.parametrize("layers", [[1, 2], [0], [3], [0, 2]])
def test_kv_cache_is_consistent_under_skipping(tiny_llava, image, layers):
    with skip_layers(tiny_llava.anatomy, layers):
        cached = generate(tiny_llava, image, use_cache=True)
        uncached = generate(tiny_llava, image, use_cache=False)
    assert cached == uncached


def test_skipping_changes_the_output_and_is_restored(tiny_llava, image):
    plain = generate(tiny_llava, image)
    with skip_layers(tiny_llava.anatomy, [1, 2]):
        skipped = generate(tiny_llava, image)
    assert skipped != plain
    assert generate(tiny_llava, image) == plain
    attn_idx = [layer.self_attn.layer_idx for layer in tiny_llava.anatomy.layers]
    assert attn_idx == [0, 1, 2, 3]


def test_restored_after_an_exception(tiny_llava, image):
    plain = generate(tiny_llava, image)
    with pytest.raises(RuntimeError, match="boom"), skip_layers(tiny_llava.anatomy, [0, 1]):
        assert tiny_llava.anatomy.layers[2].self_attn.layer_idx == 0
        raise RuntimeError("boom")
    assert all("forward" not in vars(layer) for layer in tiny_llava.anatomy.layers)
    assert [layer.self_attn.layer_idx for layer in tiny_llava.anatomy.layers] == [0, 1, 2, 3]
    assert generate(tiny_llava, image) == plain


def test_trace_of_a_skipped_generation(tiny_llava, image):
    tr = trace(tiny_llava, image, PROMPT, 6, skip=[1], keep_hidden=True)
    assert tr.meta["skipped_layers"] == [1]
    # Decoder layer 1 outputs lens layer 2: the identity repeats lens layer 1.
    assert torch.equal(tr.hidden[:, 2], tr.hidden[:, 1])
    assert not torch.equal(tr.hidden[:, 3], tr.hidden[:, 2])
    with skip_layers(tiny_llava.anatomy, [1]):
        assert tr.token_ids.tolist() == generate(tiny_llava, image, 6)


def test_invalid_layer_lists():
    with pytest.raises(ValueError, match=r"\[4\] are out of range.*0..3"):
        check_layers([4], 4)
    with pytest.raises(ValueError, match=r"\[-1\] are out of range"):
        check_layers([-1], 4)
    with pytest.raises(ValueError, match=r"\[1\] are listed more than once"):
        check_layers([1, 1], 4)
    with pytest.raises(ValueError, match="cannot skip all 4"):
        check_layers([0, 1, 2, 3], 4)
    with pytest.raises(ValueError, match="must be ints"):
        check_layers([1.0], 4)
    assert check_layers([3, 0], 4) == [0, 3]


def stages(critical=8, mutation=(10,), L=12):
    return Stages(
        n_layers=L,
        critical_layer=critical,
        has_split=True,
        mutation_layers=list(mutation),
        js_curve=[0.0] * L,
        shallow_js=0.3,
        deep_js=0.01,
        token_critical=[],
        token_mutations=[],
        mutation_share=[0.0] * (L + 1),
    )


def test_presets_from_stages():
    st = stages()
    assert skip_preset(st, "skip1") == [8]  # lens layers 9 (decoder layer 8) up to m-1 = 9
    assert skip_preset(st, "skip2") == [9]  # lens layer 10 is decoder layer 9's output
    assert skip_preset(st, "skip3") == [8, 9]  # keep the last 2 decoder layers (10, 11)
    assert skip_preset(stages(critical=4, mutation=(9, 11)), "skip1") == [4, 5, 6, 7]
    assert skip_preset(stages(critical=4, mutation=(9, 11)), "skip2") == [8, 10]
    with pytest.raises(ValueError, match="none were detected"):
        skip_preset(stages(mutation=()), "skip2")
    with pytest.raises(ValueError, match="unknown skip preset 'skip9'"):
        skip_preset(st, "skip9")
    with pytest.raises(ValueError, match="skips no layer"):
        skip_preset(stages(critical=9, mutation=(10,)), "skip1")
