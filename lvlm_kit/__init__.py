"""lvlm-kit: how knowledge evolves layer by layer inside large vision-language models.

The data flow is one way: image + prompt -> :func:`load_model` -> :func:`trace` (one greedy
generation, decoded at every layer by the float32 :class:`Lens`) -> :class:`Trace` ->
analyses (:func:`detect_stages`, hallucination labels, features), plots and widgets.

The package exposes its entry points here and every module by name (``lvlm_kit.claims``,
``lvlm_kit.tracing.StepReducer``), imported on first use. One concern per module:

- models: ``sources`` (where a model comes from), ``loading``, ``quantization``,
  ``processors``, ``anatomy`` (where a model's parts are), ``surgery`` (every hook and
  patch), ``generation``;
- reading them: ``lens``, ``divergence``, ``tracing`` (and ``trace_file``), ``stages``,
  ``image_lens``, ``features``, ``applications``, ``compare``;
- data and scoring: ``inputs``, ``data`` (images, prompts, AMBER, the testbed world),
  ``hallucination``, ``runs`` (trace a dataset and score it), ``store`` (a folder of traces);
- verdicts and reports: ``claims``, ``report``, ``reproduce``;
- around a notebook: ``plots``, ``widgets``, ``notebook``, ``files``, ``cli``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .data import read_amber
from .lens import Lens
from .loading import LoadedModel, load_model
from .stages import Stages, detect_stages
from .surgery import skip_layers
from .tracing import Trace, trace

__version__ = "0.1.0"
__all__ = [
    "Lens",
    "LoadedModel",
    "Stages",
    "Trace",
    "detect_stages",
    "load_model",
    "read_amber",
    "skip_layers",
    "trace",
]

#: Every module of the package, reachable as ``lvlm_kit.<name>`` (imported on first use).
MODULES: tuple[str, ...] = (
    "anatomy",
    "applications",
    "claims",
    "cli",
    "compare",
    "data",
    "divergence",
    "features",
    "files",
    "generation",
    "hallucination",
    "image_lens",
    "inputs",
    "lens",
    "loading",
    "notebook",
    "plots",
    "processors",
    "quantization",
    "report",
    "reproduce",
    "runs",
    "sources",
    "stages",
    "store",
    "surgery",
    "testbed",
    "trace_file",
    "tracing",
    "widgets",
)


def __getattr__(name: str) -> ModuleType:
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lvlm_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *MODULES})
