"""4-bit and 8-bit loads through bitsandbytes, on the CPU (its CPU backend, >= 0.49)."""

import pytest
import torch
from conftest import WORDS
from transformers import LlamaConfig, LlamaForCausalLM

from lvlm_kit import LoadedModel, load_model, trace
from lvlm_kit import quantization as quantization_mod
from lvlm_kit.anatomy import resolve_anatomy
from lvlm_kit.quantization import cpu_4bit_blockers, quantization_config
from lvlm_kit.testbed.model import LlavaShape, build_model, llava_processor
from lvlm_kit.testbed.tokenizer import build_word_tokenizer

bnb = pytest.importorskip("bitsandbytes")

#: Every linear width a multiple of 64: what the 4-bit CPU kernel takes.
QTINY = LlavaShape(
    image_size=32,
    patch_size=8,
    vision_hidden=64,
    vision_layers=2,
    vision_heads=2,
    hidden=128,
    layers=4,
    heads=4,
    kv_heads=2,
    intermediate=256,
    max_positions=256,
)
ODD = LlavaShape(**{**QTINY.__dict__, "intermediate": 352})  # the v1 testbed's MLP width


def _save(shape, path):
    tok = build_word_tokenizer(WORDS)
    model = build_model(shape, tok, seed=0)
    model.save_pretrained(path)
    llava_processor(shape, tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_q(tmp_path_factory):
    return _save(QTINY, tmp_path_factory.mktemp("qtiny"))


def test_quantization_names_map_to_bitsandbytes_configs():
    four = quantization_config("4bit", torch.float16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_use_double_quant and four.bnb_4bit_compute_dtype == torch.float16
    nf4, fp4 = quantization_config("nf4"), quantization_config("fp4")
    assert (nf4.bnb_4bit_quant_type, nf4.bnb_4bit_use_double_quant) == ("nf4", False)
    assert (fp4.bnb_4bit_quant_type, fp4.bnb_4bit_use_double_quant) == ("fp4", False)
    eight = quantization_config("8bit", skip_modules=["vision_tower"])
    assert eight.load_in_8bit and eight.llm_int8_skip_modules == ["lm_head", "vision_tower"]
    assert quantization_config(None) is None
    with pytest.raises(ValueError, match="'3bit' is unknown"):
        quantization_config("3bit")


@pytest.mark.parametrize(
    "q, kind",
    [
        ("8bit", "Linear8bitLt"),
        ("nf4", "Linear4bit"),
        ("fp4", "Linear4bit"),
        ("4bit", "Linear4bit"),
    ],
)
def test_quantized_load_traces_on_cpu(saved_q, image, q, kind):
    full = load_model(saved_q)
    quant = load_model(saved_q, quantization=q)
    assert quant.quantization == {"4bit": "nf4+dq"}.get(q, q)
    assert quant.precision == f"{quant.quantization}/torch.float32"
    mlp = quant.anatomy.layers[0].mlp
    assert type(mlp.down_proj).__name__ == kind
    assert type(quant.model.lm_head).__name__ == "Linear"  # the head stays full precision
    a = trace(full, image, "describe the image.", 4)
    b = trace(quant, image, "describe the image.", 4)
    assert b.meta["model_dtype"] == quant.precision
    assert b.token_prob.shape == a.token_prob.shape and torch.isfinite(b.token_prob).all()
    # 8-bit is close to full precision; 4-bit differs more (one random model, 4 steps)
    gap = (a.token_prob[-1] - b.token_prob[-1]).abs().max().item()
    assert gap < (0.05 if q == "8bit" else 0.5), gap


def test_quantized_last_layer_lens_equals_logits(saved_q, image):
    from lvlm_kit.inputs import prepare_inputs

    quant = load_model(saved_q, quantization="nf4")
    inputs, _ = prepare_inputs(quant, image, "describe the image.")
    with torch.no_grad():
        out = quant.model(**inputs, output_hidden_states=True)
    lens = quant.lens()
    last = lens.logits(out.hidden_states[-1][0, -1], layer=quant.anatomy.n_layers)
    torch.testing.assert_close(last, out.logits[0, -1].float(), atol=1e-4, rtol=1e-4)


def test_unsupported_4bit_shapes_are_named_with_the_fix(tmp_path, monkeypatch):
    odd = _save(ODD, tmp_path / "odd")
    with torch.device("meta"):
        skeleton = build_model(ODD, build_word_tokenizer(WORDS))
    blockers = cpu_4bit_blockers(skeleton)
    assert sorted(blockers) == [
        f"model.language_model.layers.{i}.mlp.down_proj" for i in range(ODD.layers)
    ]
    assert set(blockers.values()) == {"352 -> 128"}
    assert not cpu_4bit_blockers(skeleton, ["down_proj"])
    monkeypatch.setattr(quantization_mod, "_cpu_packs_4bit", lambda: True)  # as on AVX512-BF16 CPUs
    with pytest.raises(
        ValueError,
        match=r"4 are not: .*down_proj \(352 -> 128\).*"
        r"skip_modules=\['down_proj'\]",
    ):
        load_model(odd, quantization="nf4")
    kept = load_model(odd, quantization="nf4", skip_modules=["down_proj"])
    mlp = kept.anatomy.layers[0].mlp
    assert type(mlp.down_proj).__name__ == "Linear" and type(mlp.up_proj).__name__ == "Linear4bit"
    assert load_model(odd, quantization="8bit").quantization == "8bit"  # 8-bit has no such limit
    with pytest.raises(ValueError, match="skip_modules only applies to a quantized load"):
        load_model(odd, skip_modules=["down_proj"])


@pytest.mark.slow
def test_llava_7b_widths_trace_in_nf4_on_cpu(tmp_path):
    """LLaVA-1.5-7B's decoder widths (2 layers, random weights), traced in nf4 on the CPU."""
    tok = build_word_tokenizer(WORDS)
    shape = LlavaShape(
        image_size=32,
        patch_size=8,
        vision_hidden=64,
        vision_layers=1,
        vision_heads=2,
        hidden=4096,
        layers=2,
        heads=32,
        kv_heads=32,
        intermediate=11008,
        max_positions=512,
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = build_model(shape, tok, seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    model.resize_token_embeddings(32064, mean_resizing=False)
    model.save_pretrained(tmp_path / "m")
    llava_processor(shape, tok).save_pretrained(tmp_path / "m")
    del model
    quant = load_model(tmp_path / "m", quantization="nf4")
    assert quant.anatomy.hidden_size == 4096 and quant.lens().vocab_size == 32064
    assert type(quant.anatomy.layers[1].mlp.down_proj).__name__ == "Linear4bit"
    image = (torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()
    t = trace(quant, image, "describe the image.", 3)
    assert t.token_prob.shape == (3, 3) and torch.isfinite(t.token_prob).all()
    assert t.meta["model_dtype"] == "nf4/torch.bfloat16"  # the checkpoint's dtype elsewhere


def test_quantized_loads_keep_plain_models_untouched(tiny_llama):
    assert isinstance(tiny_llama, LoadedModel) and tiny_llama.quantization is None
    assert tiny_llama.precision == "torch.float32"
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    assert resolve_anatomy(LlamaForCausalLM(config)).n_layers == 1


def test_missing_bitsandbytes_is_one_clear_error(saved_q, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(RuntimeError, match="needs the bitsandbytes package.*pip install"):
        load_model(saved_q, quantization="8bit")


def test_skip_modules_name_a_part_of_the_path_as_documented(tmp_path):
    from conftest import make_tiny_llava, save_loaded

    from lvlm_kit.quantization import expand_skip_modules

    tiny = make_tiny_llava()
    assert expand_skip_modules(tiny.model, ["vision_tower", "linear_1"]) == [
        "model.multi_modal_projector.linear_1",
        "model.vision_tower",
    ]
    assert expand_skip_modules(tiny.model, ["model.vision_tower"]) == ["model.vision_tower"]
    with pytest.raises(TypeError, match=r"a list of module names, e.g. \['vision_tower'\]"):
        expand_skip_modules(tiny.model, "vision_tower")  # a string is not 12 one-letter names
    with pytest.raises(ValueError, match="'vision_towr' names no module.*'model'"):
        expand_skip_modules(tiny.model, ["vision_towr"])
    path = save_loaded(tiny, tmp_path / "tiny")
    with pytest.raises(TypeError, match="a list of module names"):
        load_model(path, quantization="nf4", skip_modules="vision_tower")
    kept = load_model(
        path, quantization="nf4", skip_modules=["vision_tower", "multi_modal_projector"]
    )
    kinds = {
        n: type(m).__name__
        for n, m in kept.model.named_modules()
        if type(m).__name__ in ("Linear", "Linear4bit")
    }
    vision = {k for n, k in kinds.items() if ".vision_tower." in n or "projector" in n}
    language = {k for n, k in kinds.items() if ".language_model." in n}
    assert vision == {"Linear"} and language == {"Linear4bit"}
    assert sum(k == "Linear" for k in kinds.values()) == 12 + 2 + 1  # tower, projector, head
