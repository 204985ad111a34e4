"""lvlm-kit: how knowledge evolves layer by layer inside large vision-language models.

The data flow is one way: image + prompt -> :func:`load_model` -> :func:`trace` (one greedy
generation, decoded at every layer by the float32 :class:`Lens`) -> :class:`Trace` ->
analyses, plots and widgets.
"""

from .anatomy import Anatomy, resolve_anatomy
from .divergence import entropy, js_divergence, js_divergence_dola, kl_divergence
from .inputs import load_image
from .lens import Lens, ResidualRecorder
from .loading import LoadedModel, load_model
from .trace import Trace, TraceFileError, trace

__version__ = "0.1.0"
__all__ = [
    "Anatomy", "Lens", "LoadedModel", "ResidualRecorder", "Trace", "TraceFileError",
    "entropy", "js_divergence", "js_divergence_dola", "kl_divergence", "load_image",
    "load_model", "resolve_anatomy", "trace",
]  # fmt: skip
