import pytest
import torch

from lvlm_kit import Lens
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.surgery import ResidualRecorder


def forward_with_residuals(loaded, image, prompt="Describe the image."):
    inputs, _ = prepare_inputs(loaded, image, prompt)
    with ResidualRecorder(loaded.anatomy) as rec, torch.inference_mode():
        logits = loaded.model(**inputs).logits[0, -1]
    return rec.stacked(), logits


@pytest.mark.parametrize("which", ["tiny_llava", "tiny_llama"])
def test_last_layer_lens_equals_model_logits(which, request, image):
    loaded = request.getfixturevalue(which)
    residuals, logits = forward_with_residuals(loaded, image if which == "tiny_llava" else None)
    assert residuals.shape == (1, loaded.anatomy.n_layers + 1, loaded.anatomy.hidden_size)
    for norm in ("final_norm", "raw"):
        lens_logits = Lens(loaded.anatomy, norm).logits(residuals)
        assert lens_logits.dtype == torch.float32
        torch.testing.assert_close(lens_logits[0, -1], logits.float(), atol=1e-4, rtol=0)


def test_raw_and_final_norm_differ_before_last_layer(tiny_llava, image):
    residuals, _ = forward_with_residuals(tiny_llava, image)
    normed = Lens(tiny_llava.anatomy, "final_norm").logits(residuals)
    raw = Lens(tiny_llava.anatomy, "raw").logits(residuals)
    torch.testing.assert_close(normed[:, -1], raw[:, -1])
    for j in range(tiny_llava.anatomy.n_layers):
        assert (normed[:, j] - raw[:, j]).abs().max() > 1e-2
    # "raw" is lm_head on the un-normed residual, exactly.
    expected = residuals[:, 0].float() @ tiny_llava.model.lm_head.weight.T.float()
    torch.testing.assert_close(raw[:, 0], expected)


def test_lens_is_float32_on_a_bfloat16_model(image):
    from conftest import make_tiny_llava

    loaded = make_tiny_llava()
    loaded.model.to(torch.bfloat16)
    residuals, logits = forward_with_residuals(loaded, image)
    assert residuals.dtype == torch.bfloat16
    lens = Lens(loaded.anatomy)
    assert lens.weight.dtype == torch.float32
    out = lens.logits(residuals)
    assert out.dtype == torch.float32
    # The model's own head runs in bf16; the lens agrees to bf16 precision.
    torch.testing.assert_close(out[0, -1], logits.float(), atol=0.05, rtol=0.02)


def test_lens_rejects_bad_input(tiny_llava):
    with pytest.raises(ValueError, match="norm policy 'layernorm' is unknown"):
        Lens(tiny_llava.anatomy, "layernorm")
    with pytest.raises(ValueError, match=r"expected a stack of all layers, shape \[\.\.\., 5, d\]"):
        Lens(tiny_llava.anatomy).logits(torch.zeros(2, 3, 64))
    with pytest.raises(ValueError, match="lens layer 5 is out of range 0..4"):
        Lens(tiny_llava.anatomy).logits(torch.zeros(2, 64), layer=5)


@pytest.mark.parametrize("norm", ["final_norm", "raw"])
def test_lens_takes_any_leading_shape_and_one_layer(tiny_llava, image, norm):
    residuals, _ = forward_with_residuals(tiny_llava, image)  # [1, L+1, d]
    lens = Lens(tiny_llava.anatomy, norm)
    stack = lens.logits(residuals)  # [1, L+1, V]
    # The same states with extra leading dims, and one layer at a time, give the same logits.
    torch.testing.assert_close(lens.logits(residuals[None, None])[0, 0], stack)
    for j in range(tiny_llava.anatomy.n_layers + 1):
        torch.testing.assert_close(lens.logits(residuals[:, j], layer=j), stack[:, j])
        torch.testing.assert_close(
            lens.log_probs(residuals[:, j], layer=j), torch.log_softmax(stack[:, j], -1)
        )


def test_lens_keeps_a_biased_head(tiny_llava, image):
    from conftest import make_tiny_llava

    loaded = make_tiny_llava()
    head = loaded.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.copy_(torch.linspace(-1, 1, head.out_features))
    loaded.model.lm_head = biased
    from lvlm_kit.anatomy import resolve_anatomy

    loaded.anatomy = resolve_anatomy(loaded.model)
    residuals, logits = forward_with_residuals(loaded, image)
    lens = loaded.lens()
    torch.testing.assert_close(lens.logits(residuals)[0, -1], logits.float(), atol=1e-4, rtol=0)
    last = lens.logits(residuals[:, -1], layer=loaded.anatomy.n_layers)
    torch.testing.assert_close(last[0], logits.float(), atol=1e-4, rtol=0)


def test_loaded_model_builds_each_lens_once(tiny_llava):
    from conftest import make_tiny_llava

    loaded = make_tiny_llava()
    first = loaded.lens()
    assert loaded.lens() is first and loaded.lens("final_norm") is first
    raw = loaded.lens("raw")
    assert raw is not first and raw.norm_policy == "raw" and loaded.lens("raw") is raw
    with pytest.raises(ValueError, match="norm policy 'x' is unknown"):
        loaded.lens("x")
    loaded.forget_lens()
    assert loaded.lens() is not first


def test_recorder_removes_hooks(tiny_llava, image):
    inputs, _ = prepare_inputs(tiny_llava, image, "Describe the image.")
    with ResidualRecorder(tiny_llava.anatomy) as rec:
        tiny_llava.model(**inputs)
    tiny_llava.model(**inputs)
    assert len(rec.steps) == 1
    assert all(not layer._forward_hooks for layer in tiny_llava.anatomy.layers)
    with pytest.raises(RuntimeError, match="no forward pass"):
        ResidualRecorder(tiny_llava.anatomy).stacked()


def test_recorder_drops_steps_and_refuses_to_stack_them(tiny_llava, image):
    inputs, _ = prepare_inputs(tiny_llava, image, "Describe the image.")
    with ResidualRecorder(tiny_llava.anatomy) as rec, torch.inference_mode():
        tiny_llava.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    whole = rec.stacked()
    assert whole.shape == (4, tiny_llava.anatomy.n_layers + 1, 64)
    rec.drop(2)
    assert rec.steps[:2] == [None, None]
    assert torch.equal(rec.stacked(2), whole[2:]) and torch.equal(rec.stacked(3, 4), whole[3:])
    with pytest.raises(RuntimeError, match="steps before 2 were dropped"):
        rec.stacked()


def test_one_tap_primitive_under_both_recorders(tiny_llava, image):
    from lvlm_kit.surgery import LayerTap, LensTap

    class Seen(LensTap):
        def __init__(self, anatomy, layers):
            super().__init__(anatomy, layers)
            self.order, self.states = [], {}

        def on_state(self, layer, hidden):
            self.order.append(layer)
            self.states[layer] = hidden[0].clone()

    inputs, _ = prepare_inputs(tiny_llava, image, "Describe the image.")
    L = tiny_llava.anatomy.n_layers

    def hooks():  # transformers may keep hooks of its own (output_hidden_states)
        return [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks]

    blocks = tiny_llava.anatomy.layers
    with torch.inference_mode():
        tiny_llava.model(**inputs, output_hidden_states=True)
    before = hooks()
    with Seen(tiny_llava.anatomy, [0, 2, L]) as seen, LayerTap(tiny_llava.anatomy, [2, L]) as tap:
        with torch.inference_mode():
            out = tiny_llava.model(**inputs, output_hidden_states=True)
        latest = {j: tap.latest[j].clone() for j in tap.latest}
    assert seen.order == [0, 2, L]  # in depth order, once per forward pass
    hidden = out.hidden_states  # [L+1] of [1, seq, d]; the last one after the final norm
    torch.testing.assert_close(seen.states[0], hidden[0][0])
    torch.testing.assert_close(seen.states[2], hidden[2][0])
    torch.testing.assert_close(latest[2], hidden[2][0, -1:])  # LayerTap: the last position
    assert not seen.active and not tap.latest  # hooks removed, states let go
    assert hooks() == before
    with pytest.raises(ValueError, match="do not exist; use 0"):
        Seen(tiny_llava.anatomy, [L + 1])
    with pytest.raises(ValueError, match="cannot be tapped; use 1"):
        LayerTap(tiny_llava.anatomy, [0])
