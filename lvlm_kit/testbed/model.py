"""Build a LLaVA-architecture model and processor of any size from plain settings.

The testbed model and the tests' tiny models both come from here: a CLIP vision tower,
LLaVA's 2-layer MLP projector and a Llama decoder, as
``transformers.LlavaForConditionalGeneration``, with a ``LlavaProcessor`` around a local
word-level tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from .tokenizer import CHAT_TEMPLATE, IMAGE


@dataclass
class LlavaShape:
    """Sizes of a LLaVA-architecture model."""

    image_size: int = 64  # square input resolution
    patch_size: int = 8  # ViT patch; (image_size / patch_size)^2 image tokens
    vision_hidden: int = 96  # CLIP width
    vision_layers: int = 3  # CLIP depth (the second-to-last layer feeds the projector)
    vision_heads: int = 4
    hidden: int = 192  # decoder width d
    layers: int = 12  # decoder depth L
    heads: int = 6
    kv_heads: int = 6
    intermediate: int = 512  # decoder MLP width
    max_positions: int = 512

    @property
    def n_image_tokens(self) -> int:
        """Image tokens per image: the patch grid (CLS is dropped, LLaVA's "default")."""
        return (self.image_size // self.patch_size) ** 2


def llava_config(shape: LlavaShape, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """A ``LlavaConfig`` for ``shape`` whose vocabulary is ``tokenizer``'s."""
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.vision_hidden,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=shape.n_image_tokens,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_model(
    shape: LlavaShape, tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> LlavaForConditionalGeneration:
    """A randomly initialised (seeded) LLaVA model in float32, eval mode."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(shape, tokenizer))
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def llava_processor(shape: LlavaShape, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """A ``LlavaProcessor`` (CLIP preprocessing at ``shape.image_size``, chat template)."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": shape.image_size},
        crop_size={"height": shape.image_size, "width": shape.image_size},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def shape_dict(shape: LlavaShape) -> dict:
    """Plain-dict form of a shape (for JSON metadata)."""
    return asdict(shape)
