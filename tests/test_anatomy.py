import pytest
import torch
from accelerate import init_empty_weights
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    Qwen2Config,
)

from lvlm_kit.anatomy import SUPPORTED, resolve_anatomy

TINY_TEXT = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def test_llava_anatomy(tiny_llava):
    a = tiny_llava.anatomy
    assert (a.model_type, a.kind, a.n_layers, a.hidden_size) == ("llava", "vision", 4, 64)
    assert a.vocab_size == len(tiny_llava.tokenizer)
    assert a.final_norm is tiny_llava.model.model.language_model.norm
    assert a.lm_head is tiny_llava.model.lm_head
    ids = torch.tensor([1, 4, 4, 9, 4])
    assert a.image_token_id == 4
    assert a.image_positions(ids).tolist() == [False, True, True, False, True]


@pytest.mark.parametrize("config_cls", [LlamaConfig, MistralConfig, Qwen2Config])
def test_causal_lm_anatomy(config_cls):
    model = AutoModelForCausalLM.from_config(config_cls(**TINY_TEXT))
    a = resolve_anatomy(model)
    assert (a.kind, a.n_layers, a.hidden_size, a.vocab_size) == ("text", 3, 32, 50)
    assert a.layers is model.model.layers and a.final_norm is model.model.norm
    assert a.image_positions(torch.tensor([4, 5])).tolist() == [False, False]


def test_llava_next_anatomy():
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(**TINY_TEXT),
        image_token_index=49,
        image_grid_pinpoints=[[32, 32]],
    )
    a = resolve_anatomy(LlavaNextForConditionalGeneration(config))
    assert (a.model_type, a.n_layers, a.image_token_id) == ("llava_next", 3, 49)


def test_unknown_architecture_names_supported():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(NotImplementedError, match="gpt2.*Supported: llava") as err:
        resolve_anatomy(model)
    for name in SUPPORTED:
        assert name in str(err.value)


def test_llava_15_7b_shapes_resolve_without_weights():
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000)
    with init_empty_weights():
        model = LlavaForConditionalGeneration(config)
    a = resolve_anatomy(model)
    assert (a.n_layers, a.hidden_size, a.vocab_size, a.image_token_id) == (32, 4096, 32064, 32000)
    assert a.lm_head.weight.device.type == "meta"
    assert sum(p.numel() for p in a.layers.parameters()) == 32 * 202_383_360
    with pytest.raises(ValueError, match="meta"):
        from lvlm_kit.lens import Lens

        Lens(a)
