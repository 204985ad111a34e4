"""Processors without torchvision: the image-text processors the kit builds and loads.

Several transformers processors hold a video processor that needs torchvision; images never
pass through it, so without torchvision the kit builds them for images and text only
(:func:`build_processor`, :func:`load_processor`), inserting the same image tokens.
"""

from __future__ import annotations

from typing import Any

from .anatomy import FAMILIES


def check_packages(model_type: str) -> None:
    """Raise one clear error, before loading, when a family's processor needs a missing package."""
    import importlib.util

    def usable(package: str) -> bool:
        if package == "torchvision":  # present is not enough: it must match this torch
            return torchvision_available()
        return importlib.util.find_spec(package) is not None

    missing = [p for p in FAMILIES[model_type].packages if not usable(p)]
    if missing:
        raise RuntimeError(
            f"model_type={model_type!r} needs the package(s) {missing} for its processor, "
            "and they do not import here. Install them (for torchvision, the build that "
            f"matches your torch: `pip install {' '.join(missing)}` next to the same torch "
            "release) and load again."
        )


def torchvision_available() -> bool:
    """Whether torchvision imports beside this torch (transformers' video processors need it)."""
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _without_video(cls: type) -> tuple[type, dict[str, Any]]:
    """``cls``, a processor class, with its video processor dropped (images and text only).

    The image-text processors of Qwen2/2.5/3-VL, LLaVA-OneVision, SmolVLM and InternVL
    also hold a video processor, which transformers builds only with torchvision. Images
    never pass through it, so without torchvision the kit builds the processor without it:
    the image processor (its PIL backend), the tokenizer and the chat template are the
    same, and so are the image tokens it inserts.

    Returns:
        ``(class, kwargs)``: the class to build (``cls`` itself when it has no video
        processor) and the keyword arguments its constructor then needs
        (``video_processor=None``, required by some classes and never used).
    """
    attrs = [a for a in cls.get_attributes() if a != "video_processor"]
    if len(attrs) == len(cls.get_attributes()):
        return cls, {}
    images_only = type(
        cls.__name__,
        (cls,),
        {
            "get_attributes": classmethod(lambda _: list(attrs)),
            "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} for images and text (no video processor: no torchvision).",
        },
    )
    return images_only, {"video_processor": None}


def build_processor(class_name: str, **parts: Any) -> Any:
    """Build a transformers processor class from its parts.

    Args:
        class_name: the processor class, e.g. ``"Qwen2VLProcessor"``.
        **parts: its ``image_processor``, ``tokenizer``, ``chat_template``... Without a
            ``video_processor`` the processor is built for images and text only (see
            :func:`_without_video`), with or without torchvision.

    Returns:
        The processor.
    """
    import transformers

    cls = getattr(transformers, class_name)
    if parts.get("video_processor") is None:
        cls, extra = _without_video(cls)
        parts.update(extra)
    return cls(**parts)


def load_processor(source: str, kind: str, **hub: Any) -> Any:
    """The processor (an LVLM's) or tokenizer (a text model's) saved with a model.

    Without torchvision, an image-text processor that would also load a video processor is
    loaded without it (see :func:`build_processor`).
    """
    from transformers import AutoProcessor, AutoTokenizer

    if kind != "vision":
        return AutoTokenizer.from_pretrained(source, **hub)
    if torchvision_available():
        return AutoProcessor.from_pretrained(source, **hub)
    import transformers
    from transformers.models.auto.processing_auto import processor_class_from_name

    config = transformers.ProcessorMixin.get_processor_dict(source, **hub)[0]
    name = config.get("processor_class")
    cls = processor_class_from_name(name) if name else None
    if cls is None:
        return AutoProcessor.from_pretrained(source, **hub)
    images_only, extra = _without_video(cls)
    return images_only.from_pretrained(source, **extra, **hub)
