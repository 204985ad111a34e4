"""Greedy generation: the one decoding configuration the kit uses, single and batched.

Every analysis reads plain greedy decoding (no sampling, one beam), as the paper does:
:func:`greedy_config` switches a model's generation config to it, and
:func:`generate_texts` answers many (image, prompt) pairs with it in left-padded batches,
optionally with decoder layers skipped or the scores rescored at every step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .inputs import chat_prompt, load_image
from .loading import LoadedModel
from .surgery import skip_layers


def greedy_config(model: torch.nn.Module, max_new_tokens: int) -> GenerationConfig:
    """The model's generation config switched to plain greedy decoding."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.max_new_tokens = max_new_tokens
    for name in ("temperature", "top_p", "top_k"):
        setattr(config, name, None)
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id if config.eos_token_id is not None else 0
    return config


def check_lengths(loaded: LoadedModel, prompt_length: int, max_new_tokens: int) -> None:
    """Raise before generating when the prompt plus ``max_new_tokens`` exceed the context.

    Raises:
        ValueError: ``max_new_tokens`` below 1, or a total beyond the model's context length
            (its config's ``max_position_embeddings``), naming both numbers.
    """
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be an int of at least 1, got {max_new_tokens!r}.")
    limit = loaded.anatomy.max_positions
    if limit is not None and prompt_length + max_new_tokens > limit:
        raise ValueError(
            f"the prompt ({prompt_length} tokens, image tokens included) plus max_new_tokens="
            f"{max_new_tokens} exceed {loaded.name}'s context of {limit} tokens; use "
            f"max_new_tokens <= {max(limit - prompt_length, 0)}."
        )


def generate_texts(
    loaded: LoadedModel,
    images: Sequence,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    skip: Sequence[int] = (),
    contrast: LogitsProcessor | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy answers for (image, prompt) pairs, batched with left padding.

    Args:
        loaded: the model.
        images: images (paths, PIL or arrays).
        prompts: one instruction per image.
        max_new_tokens: generation limit.
        batch_size: items per ``generate()`` call.
        skip: decoder layers to skip while generating.
        contrast: a logits processor that is also a context manager (such as
            :class:`~lvlm_kit.applications.LayerContrast`), entered around each
            ``generate()`` call and applied at every step.
        progress: show a progress bar.
        desc: the progress bar's label.

    Returns:
        The decoded answers (special tokens removed, stripped).
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts.")
    proc, tok = loaded.processor, loaded.tokenizer
    config = greedy_config(loaded.model, max_new_tokens)
    old_side, tok.padding_side = tok.padding_side, "left"
    processors = LogitsProcessorList([contrast] if contrast is not None else [])
    out: list[str] = []
    try:
        with skip_layers(loaded.anatomy, skip):
            for s in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
                texts = [chat_prompt(loaded, p, True) for p in prompts[s : s + batch_size]]
                pics = [load_image(im) for im in images[s : s + batch_size]]
                batch = proc(images=pics, text=texts, return_tensors="pt", padding=True)
                check_lengths(loaded, batch["input_ids"].shape[1], max_new_tokens)
                batch = {
                    k: v.to(loaded.input_device, loaded.model.dtype)
                    if v.is_floating_point()
                    else v.to(loaded.input_device)
                    for k, v in batch.items()
                }
                with torch.inference_mode(), contrast if contrast is not None else nullcontext():
                    seq = loaded.model.generate(
                        **batch, generation_config=config, logits_processor=processors
                    )
                out += tok.batch_decode(
                    seq[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
                )
    finally:
        tok.padding_side = old_side
    return [t.strip() for t in out]
