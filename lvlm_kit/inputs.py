"""Images and prompts in, model inputs out.

Accepts an image path, a ``PIL.Image`` or an ``[H, W]`` / ``[H, W, C]`` array; converts
grayscale, palette and RGBA images to RGB (transparent areas on white). Prompts are wrapped
by the processor's (or tokenizer's) chat template.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from .loading import LoadedModel

ImageLike = str | os.PathLike | Image.Image | np.ndarray
_IMAGE_HELP = "Pass an image file path, a PIL.Image, or an [H, W] / [H, W, 3|4] array."


def load_image(image: ImageLike) -> Image.Image:
    """Return ``image`` as an RGB ``PIL.Image``.

    Args:
        image: a path, a ``PIL.Image`` or an array (uint8 0..255, or float 0..1).

    Returns:
        An RGB image.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not an image, or the array/object cannot be one.
    """
    rgb = _load(image)
    if rgb.width == 0 or rgb.height == 0:
        raise ValueError(f"the image has size {rgb.width}x{rgb.height}; pass a non-empty image.")
    return rgb


def _load(image: ImageLike) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if path.is_dir():
            raise IsADirectoryError(
                f"'{path}' is a folder, not an image file (its name ends like one); pass an "
                "image file, or the folder as a dataset (DATA / --data)."
            )
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: '{path}'. {_IMAGE_HELP}")
        try:
            with Image.open(path) as im:
                im.load()
                return _to_rgb(im)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(
                f"'{path}' is not an image file that PIL can read ({exc}). {_IMAGE_HELP}"
            ) from None
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        return _to_rgb(Image.fromarray(_array_to_uint8(image)))
    raise ValueError(f"cannot use an object of type {type(image).__name__} as image. {_IMAGE_HELP}")


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image array has shape {arr.shape}. {_IMAGE_HELP}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:  # 16-bit images: 0..65535 onto 0..255
        return (arr.astype(np.float64) / 257).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise ValueError("float image arrays must lie in [0, 1]; scale them or pass uint8.")
        return (np.nan_to_num(arr) * 255).round().astype(np.uint8)
    raise ValueError(
        f"image array dtype {arr.dtype} is not supported; use uint8, uint16 or float in [0, 1]."
    )


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grayscale (PNG): PIL's convert("RGB") would clip every value above 255 to
        # white; scale 0..65535 onto 0..255 instead.
        arr = np.asarray(im).astype(np.float64)
        return Image.fromarray((arr / 257).clip(0, 255).round().astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        return _to_rgb(Image.fromarray(_array_to_uint8(np.asarray(im))))
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def chat_prompt(loaded: LoadedModel, prompt: str, with_image: bool) -> str:
    """Wrap ``prompt`` in the model's chat template (generation prompt appended).

    Args:
        loaded: the loaded model (its processor or tokenizer carries the template).
        prompt: the user's instruction, e.g. "Please describe this image in detail."
        with_image: whether to put an image placeholder in the user turn.

    Returns:
        The templated text, ready for the processor.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string, e.g. 'Describe this image.'")
    templater = loaded.processor
    if not loaded.anatomy.chat:  # e.g. PaliGemma: its processor puts the image tokens first
        return prompt
    if getattr(templater, "chat_template", None) is None:
        if not loaded.is_vision:  # e.g. lmsys/vicuna-7b-v1.5 ships no template
            warnings.warn(
                f"{loaded.name} has no chat template; using Vicuna v1.1's 'USER: ... "
                "ASSISTANT:' (LLaVA-1.5's language model format).",
                stacklevel=2,
            )
            return f"USER: {prompt} ASSISTANT:"
        raise ValueError(
            f"{loaded.name}: the processor has no chat template. Set "
            "`loaded.processor.chat_template` to a Jinja template (see the model card)."
        )
    if loaded.is_vision:
        content = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": prompt})
        conversation = [{"role": "user", "content": content}]
    else:
        conversation = [{"role": "user", "content": prompt}]
    # The tokenizer renders the processor's template: some processors' own
    # apply_chat_template reads their video processor, absent without torchvision.
    return loaded.tokenizer.apply_chat_template(
        conversation,
        chat_template=templater.chat_template,
        add_generation_prompt=True,
        tokenize=False,
    )


def prepare_inputs(
    loaded: LoadedModel, image: ImageLike | None, prompt: str
) -> tuple[dict[str, torch.Tensor], str]:
    """Build the model inputs for one image and prompt.

    Args:
        loaded: the loaded model.
        image: the image (None for text-only generation).
        prompt: the user's instruction.

    Returns:
        ``(inputs, prompt_text)``: tensors on the model's input device (``input_ids``
        ``[1, seq]``, ``attention_mask``, and ``pixel_values`` in the model's dtype when an
        image is given) and the templated prompt.
    """
    if image is not None and not loaded.is_vision:
        raise ValueError(
            f"{loaded.name} is a text-only language model; pass image=None "
            "(or load a vision-language model)."
        )
    text = chat_prompt(loaded, prompt, with_image=image is not None)
    if image is not None:
        batch = loaded.processor(images=load_image(image), text=text, return_tensors="pt")
    else:
        tok = loaded.tokenizer
        batch = tok(text, return_tensors="pt", add_special_tokens=not _starts_with_bos(tok, text))
    device = loaded.input_device
    out = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or key == "labels":  # PaliGemma's training labels
            continue
        value = value.to(device)
        if value.is_floating_point():
            value = value.to(loaded.model.dtype)
        out[key] = value
    return out, text


def _starts_with_bos(tokenizer: object, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)
