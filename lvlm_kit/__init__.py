"""lvlm-kit: how knowledge evolves layer by layer inside large vision-language models.

The data flow is one way: image + prompt -> :func:`load_model` -> :func:`trace` (one greedy
generation, decoded at every layer by the float32 :class:`Lens`) -> :class:`Trace` ->
analyses (:func:`detect_stages`, hallucination labels, features), plots and widgets.

Modules, one concern each: ``anatomy`` (where a model's parts are), ``loading``, ``data``
(images, prompts, AMBER, the testbed world), ``surgery`` (every hook and patch),
``generation`` (greedy decoding), ``lens``, ``divergence``, ``trace``, ``stages``,
``hallucination``, ``features``, ``applications``, ``store`` (a folder of traces),
``plots``, ``widgets``, ``notebook``, ``cli``.
"""

from .anatomy import Anatomy, resolve_anatomy
from .data import AmberData, Item, dataset_items, export_amber, read_amber
from .divergence import entropy, js_divergence, js_divergence_dola, kl_divergence
from .generation import generate_texts, greedy_config
from .inputs import load_image
from .lens import Lens
from .loading import LoadedModel, load_model
from .stages import PRESETS, StageConfig, Stages, detect_stages, skip_preset
from .surgery import LayerTap, ResidualRecorder, skip_layers
from .trace import Trace, TraceFileError, trace

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "AmberData",
    "Anatomy",
    "Item",
    "LayerTap",
    "Lens",
    "LoadedModel",
    "ResidualRecorder",
    "StageConfig",
    "Stages",
    "Trace",
    "TraceFileError",
    "dataset_items",
    "detect_stages",
    "entropy",
    "export_amber",
    "generate_texts",
    "greedy_config",
    "js_divergence",
    "js_divergence_dola",
    "kl_divergence",
    "load_image",
    "load_model",
    "read_amber",
    "resolve_anatomy",
    "skip_layers",
    "skip_preset",
    "trace",
]
