"""Tiny random-weight models of each supported vision-language family, built offline.

Each model is built from its family's real config class (a few small layers), with its
family's real processor class around a small byte-level tokenizer that carries the family's
special tokens, and saved with ``save_pretrained`` so that ``load_model(folder)`` loads it
the way it loads a hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

from lvlm_kit.processors import build_processor, torchvision_available

TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def byte_tokenizer(special: list[str], bos: str, eos: str, pad: str, **attrs: str):
    """A byte-level tokenizer (256 byte symbols, no merges) plus ``special`` tokens."""
    vocab: dict[str, int] = {}
    for t in (pad, bos, eos):
        vocab.setdefault(t, len(vocab))
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=attrs,
    )
    tok.add_special_tokens({"additional_special_tokens": [s for s in special if s not in vocab]})
    return tok


def chat_template(user: str, assistant: str, end: str, image: str, bos: str = "") -> str:
    """A one-image chat template: ``bos`` + per message ``user``/``assistant`` + text + ``end``."""
    return (
        bos
        + "{% for m in messages %}{% if m['role'] == 'user' %}"
        + user
        + "{% else %}"
        + assistant
        + "{% endif %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        + image
        + "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        + end
        + "{% endfor %}{% if add_generation_prompt %}"
        + assistant
        + "{% endif %}"
    )


@dataclass(frozen=True)
class Family:
    """How to build one family's tiny model: config, processor and the model class name."""

    model_type: str
    build: Callable[[], tuple[object, object]]  # -> (config, processor)


def _qwen(model_type: str, cfg_cls: str, proc_cls: str, ip_cls: str, patch: int, vision: dict):
    def build():
        tok = byte_tokenizer(
            [
                "<|im_start|>",
                "<|im_end|>",
                "<|vision_start|>",
                "<|vision_end|>",
                "<|image_pad|>",
                "<|video_pad|>",
            ],
            "<|endoftext|>",
            "<|im_end|>",
            "<|endoftext|>",
        )
        tpl = chat_template(
            "<|im_start|>user\n",
            "<|im_start|>assistant\n",
            "<|im_end|>\n",
            "<|vision_start|><|image_pad|><|vision_end|>",
        )
        side = patch * 2
        ip = getattr(transformers, ip_cls)(
            patch_size=patch,
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=(2 * side) ** 2,
            max_pixels=(4 * side) ** 2,
        )
        processor = build_processor(proc_cls, image_processor=ip, tokenizer=tok, chat_template=tpl)
        ids = tok.convert_tokens_to_ids
        config = getattr(transformers, cfg_cls)(
            text_config={
                **_text(tok),
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "mrope_section": [2, 3, 3],
                },
            },
            vision_config={
                "depth": 2,
                "num_heads": 2,
                "patch_size": patch,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                **vision,
            },
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
        return config, processor

    return Family(model_type, build)


def _vision(**extra: object) -> dict:
    return {**VISION, **extra}


def _text(tok: object, **extra: object) -> dict:
    """The tiny decoder's config: its vocabulary and special ids are the tokenizer's."""
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    return {**TEXT, "vocab_size": len(tok), **ids, **extra}


def _internvl():
    tok = byte_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        "<|endoftext|>",
        "<|im_end|>",
        "<|endoftext|>",
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    tpl = chat_template(
        "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<IMG_CONTEXT>\n"
    )
    ip = transformers.GotOcr2ImageProcessorPil(
        size={"height": 64, "width": 64}, crop_to_patches=False
    )
    processor = build_processor(
        "InternVLProcessor",
        image_processor=ip,
        tokenizer=tok,
        chat_template=tpl,
        image_seq_length=4,
    )
    config = transformers.InternVLConfig(
        text_config=_text(tok, model_type="qwen2"),
        vision_config=_vision(image_size=[64, 64], patch_size=[16, 16]),
        downsample_ratio=0.5,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
    )
    return config, processor


def _aya_vision():
    special = [
        "<|START_OF_TURN_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
    ]
    tok = byte_tokenizer(special, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<PAD>")
    tpl = chat_template(
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<image>",
        bos="<BOS_TOKEN>",
    )
    ip = transformers.GotOcr2ImageProcessorPil(
        size={"height": 64, "width": 64}, crop_to_patches=False
    )
    processor = build_processor(
        "AyaVisionProcessor",
        image_processor=ip,
        tokenizer=tok,
        chat_template=tpl,
        patch_size=16,
        img_size=64,
        downsample_factor=2,
    )
    config = transformers.AyaVisionConfig(
        text_config=_text(tok, model_type="cohere2", logit_scale=0.25, sliding_window=8),
        vision_config=_vision(image_size=64, patch_size=16),
        downsample_factor=2,
        adapter_layer_norm_eps=1e-6,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
    )
    return config, processor


def _llava_onevision():
    tok = byte_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        "<|endoftext|>",
        "<|im_end|>",
        "<|endoftext|>",
        image_token="<image>",
        video_token="<video>",
    )
    tpl = chat_template(
        "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<image>\n"
    )
    ip = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32},
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
    )
    processor = build_processor(
        "LlavaOnevisionProcessor",
        image_processor=ip,
        tokenizer=tok,
        chat_template=tpl,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
    )
    config = transformers.LlavaOnevisionConfig(
        text_config=_text(tok, model_type="qwen2"),
        vision_config=_vision(image_size=32, patch_size=16),
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
    )
    return config, processor


def _idefics3(model_type: str, cfg_cls: str, proc_cls: str, ip_cls: str, text_key: str):
    def build():
        tok = byte_tokenizer(
            [
                "<image>",
                "<fake_token_around_image>",
                "<global-img>",
                "<end_of_utterance>",
                "<video>",
            ],
            "<|begin_of_text|>",
            "<end_of_utterance>",
            "<|end_of_text|>",
        )
        tpl = chat_template(
            "User:", "Assistant:", "<end_of_utterance>\n", "<image>", bos="<|begin_of_text|>"
        )
        ip = getattr(transformers, ip_cls)(
            size={"longest_edge": 64}, do_image_splitting=False, max_image_size={"longest_edge": 64}
        )
        processor = build_processor(
            proc_cls, image_processor=ip, tokenizer=tok, chat_template=tpl, image_seq_len=4
        )
        config = getattr(transformers, cfg_cls)(
            text_config=_text(tok, model_type="llama"),
            vision_config=_vision(image_size=64, patch_size=16),
            scale_factor=2,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            pad_token_id=tok.pad_token_id,
        )
        return config, processor

    return Family(model_type, build)


def _gemma3():
    tok = byte_tokenizer(
        [
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ],
        "<bos>",
        "<end_of_turn>",
        "<pad>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
    )
    tpl = chat_template(
        "<start_of_turn>user\n",
        "<start_of_turn>model\n",
        "<end_of_turn>\n",
        "<start_of_image>",
        bos="<bos>",
    )
    ip = transformers.Gemma3ImageProcessorPil(size={"height": 64, "width": 64})
    processor = build_processor(
        "Gemma3Processor", image_processor=ip, tokenizer=tok, chat_template=tpl, image_seq_length=4
    )
    ids = tok.convert_tokens_to_ids
    config = transformers.Gemma3Config(
        text_config=_text(tok, sliding_window=8, final_logit_softcapping=30.0),
        vision_config=_vision(image_size=64, patch_size=16),
        mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        pad_token_id=tok.pad_token_id,
    )
    return config, processor


def _paligemma():
    tok = byte_tokenizer(["<image>"], "<bos>", "<eos>", "<pad>", image_token="<image>")
    ip = transformers.SiglipImageProcessorPil(size={"height": 64, "width": 64})
    ip.image_seq_length = 16
    processor = build_processor("PaliGemmaProcessor", image_processor=ip, tokenizer=tok)
    config = transformers.PaliGemmaConfig(
        text_config=_text(tok, model_type="gemma2", final_logit_softcapping=30.0, sliding_window=8),
        vision_config=_vision(image_size=64, patch_size=16),
        projection_dim=64,
        hidden_size=64,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    config.text_config.num_image_tokens = 16
    return config, processor


def _llava(next_: bool):
    def build():
        tok = byte_tokenizer(["<image>"], "<s>", "</s>", "<pad>", image_token="<image>")
        tpl = chat_template("USER: ", "ASSISTANT: ", " ", "<image>\n")
        vision = _vision(
            image_size=32, patch_size=16, model_type="clip_vision_model", projection_dim=64
        )
        common = {
            "text_config": _text(tok, model_type="llama"),
            "vision_config": vision,
            "image_token_index": tok.convert_tokens_to_ids("<image>"),
            "vision_feature_layer": -1,
        }
        if not next_:
            crop = {"height": 32, "width": 32}
            ip = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=crop)
            processor = build_processor(
                "LlavaProcessor",
                image_processor=ip,
                tokenizer=tok,
                chat_template=tpl,
                patch_size=16,
                vision_feature_select_strategy="default",
                num_additional_image_tokens=1,
            )
            return transformers.LlavaConfig(**common), processor
        pinpoints = [[32, 32], [32, 64], [64, 32]]
        ip = transformers.LlavaNextImageProcessorPil(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_grid_pinpoints=pinpoints,
        )
        processor = build_processor(
            "LlavaNextProcessor",
            image_processor=ip,
            tokenizer=tok,
            chat_template=tpl,
            patch_size=16,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        return transformers.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints), processor

    return build


def _mistral3():
    tok = byte_tokenizer(
        ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"], "<s>", "</s>", "<pad>"
    )
    tpl = chat_template("[INST]", "", "[/INST]", "[IMG]", bos="<s>")
    ip = transformers.PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=16)
    processor = build_processor(
        "PixtralProcessor",
        image_processor=ip,
        tokenizer=tok,
        chat_template=tpl,
        patch_size=16,
        spatial_merge_size=2,
    )
    config = transformers.Mistral3Config(
        text_config=_text(tok, model_type="mistral"),
        vision_config=_vision(model_type="pixtral", image_size=64, patch_size=16, head_dim=16),
        spatial_merge_size=2,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        multimodal_projector_bias=False,
    )
    return config, processor


def _text_family(cfg_cls: str, **extra: object):
    def build():
        tok = byte_tokenizer(["<|user|>", "<|assistant|>", "<|end|>"], "<s>", "<|end|>", "<pad>")
        tok.chat_template = chat_template("<|user|>", "<|assistant|>", "<|end|>", "")
        return getattr(transformers, cfg_cls)(**_text(tok, **extra)), tok

    return build


FAMILIES: dict[str, Family] = {
    "llava": Family("llava", _llava(False)),
    "llava_next": Family("llava_next", _llava(True)),
    "llama": Family("llama", _text_family("LlamaConfig")),
    "mistral": Family("mistral", _text_family("MistralConfig", sliding_window=8)),
    "qwen2": Family("qwen2", _text_family("Qwen2Config")),
    "qwen3": Family("qwen3", _text_family("Qwen3Config")),
    "gemma": Family("gemma", _text_family("GemmaConfig")),
    "gemma2": Family(
        "gemma2", _text_family("Gemma2Config", final_logit_softcapping=30.0, sliding_window=8)
    ),
    "gemma3_text": Family(
        "gemma3_text",
        _text_family("Gemma3TextConfig", sliding_window=8, final_logit_softcapping=30.0),
    ),
    "cohere": Family("cohere", _text_family("CohereConfig", logit_scale=0.25)),
    "cohere2": Family("cohere2", _text_family("Cohere2Config", logit_scale=0.25, sliding_window=8)),
    "idefics3": _idefics3(
        "idefics3",
        "Idefics3Config",
        "Idefics3Processor",
        "Idefics3ImageProcessorPil",
        "text_config",
    ),
    "smolvlm": _idefics3(
        "smolvlm", "SmolVLMConfig", "SmolVLMProcessor", "Idefics3ImageProcessorPil", "text_config"
    ),
    "gemma3": Family("gemma3", _gemma3),
    "paligemma": Family("paligemma", _paligemma),
    "internvl": Family("internvl", _internvl),
    "aya_vision": Family("aya_vision", _aya_vision),
    "llava_onevision": Family("llava_onevision", _llava_onevision),
    "mistral3": Family("mistral3", _mistral3),
    "qwen2_vl": _qwen(
        "qwen2_vl",
        "Qwen2VLConfig",
        "Qwen2VLProcessor",
        "Qwen2VLImageProcessorPil",
        14,
        {"embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2},
    ),
    "qwen2_5_vl": _qwen(
        "qwen2_5_vl",
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLProcessor",
        "Qwen2VLImageProcessorPil",
        14,
        {
            "hidden_size": 32,
            "out_hidden_size": 64,
            "intermediate_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
    ),
    "qwen3_vl": _qwen(
        "qwen3_vl",
        "Qwen3VLConfig",
        "Qwen3VLProcessor",
        "Qwen2VLImageProcessorPil",
        16,
        {
            "hidden_size": 32,
            "out_hidden_size": 64,
            "intermediate_size": 64,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
    ),
}


def _special_ids(config: object, tok: object) -> None:
    """Point the configs' bos / eos / pad ids at the tiny tokenizer's tokens."""
    for cfg in {id(c): c for c in (config, config.get_text_config())}.values():
        cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
        cfg.pad_token_id = tok.pad_token_id


def save_tiny(model_type: str, out: Path, seed: int = 0) -> Path:
    """Build ``model_type``'s tiny random model and processor and save both under ``out``."""
    config, processor = FAMILIES[model_type].build()
    tok = getattr(processor, "tokenizer", processor)
    _special_ids(config, tok)
    torch.manual_seed(seed)
    vision = tok is not processor
    cls = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    model = cls.from_config(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    video = VIDEO_PROCESSOR_MAPPING_NAMES.get(model_type, {}).get("torchvision")
    if video and torchvision_available():  # as a hub checkpoint ships it
        getattr(transformers, video)().save_pretrained(out)
    return out
