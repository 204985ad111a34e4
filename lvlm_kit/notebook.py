"""What every notebook does besides its analysis: check its parameters, start, show, record.

Each notebook calls these with its ``parameters`` cell values, so the same notebook runs
on the embedded testbed and, with ``-p MODEL llava-hf/llava-1.5-7b-hf -p DATA <AMBER>``, on
a real model. Data sources are in :mod:`lvlm_kit.data`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from .data import TESTBED_DATA
from .files import write_json
from .lens import NORM_POLICIES
from .loading import DTYPES, LoadedModel, check_device_map, load_model
from .plots import save_figure
from .quantization import QUANTIZATIONS
from .sources import REPO_ROOT, base_llm


class ParameterError(ValueError):
    """A notebook parameter with a value the notebook cannot use."""


def _positive_int(v: Any) -> bool:
    return type(v) is int and v >= 1


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _texts(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_text(x) for x in v)


#: Parameter name -> (check, what a valid value is).
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "MODEL": (_text, "a hub id, a local folder or 'testbed'"),
    "QUANTIZATION": (lambda v: v in QUANTIZATIONS, f"one of {QUANTIZATIONS}"),
    "DEVICE": (
        lambda v: isinstance(v, dict) or v in ("auto", "cpu") or str(v).startswith("cuda"),
        "'auto', 'cpu', 'cuda', 'cuda:N' or an accelerate device map (dict)",
    ),
    "DTYPE": (lambda v: v in DTYPES, f"one of {tuple(DTYPES)}"),
    "LENS_NORM": (lambda v: v in NORM_POLICIES, f"one of {NORM_POLICIES}"),
    "DATA": (
        lambda v: v in TESTBED_DATA or (isinstance(v, str) and Path(v).expanduser().exists()),
        f"one of {TESTBED_DATA} or an existing folder or file",
    ),
    "PROMPT": (_text, "a non-empty instruction"),
    "MAX_NEW_TOKENS": (_positive_int, "an int of at least 1"),
    "N_IMAGES": (_positive_int, "an int of at least 1"),
    "SEED": (lambda v: type(v) is int, "an int"),
    "OUTPUT_DIR": (
        lambda v: v is None or (isinstance(v, str) and not Path(v).expanduser().is_file()),
        "None or a folder path (not a file)",
    ),
    "IMAGES_PER_QUESTION": (_positive_int, "an int of at least 1"),
    "N_STAGE_IMAGES": (_positive_int, "an int of at least 1"),
    "N_PROBE_IMAGES": (_positive_int, "an int of at least 1"),
    "QUESTION_OBJECTS": (_texts, "a non-empty list of object words"),
    "SKIP_KS": (
        lambda v: isinstance(v, list) and bool(v) and all(_positive_int(k) for k in v),
        "a non-empty list of ints of at least 1",
    ),
    "LLM_MODEL": (
        lambda v: v is None or _text(v),
        "'auto' (the base LLM of MODEL), None or a causal LM id / folder",
    ),
    "LLM_PROMPTS": (_texts, "a non-empty list of prompts"),
    "VARIANTS": (
        lambda v: isinstance(v, list) and bool(v) and all(q in QUANTIZATIONS and q for q in v),
        f"a non-empty list of quantizations from {QUANTIZATIONS[1:]}",
    ),
}


def check_parameters(parameters: dict[str, Any]) -> None:
    """Check a notebook's parameters against :data:`RULES` before anything runs.

    Raises:
        ParameterError: the first bad one, named with its value and what it must be.
    """
    for name, value in parameters.items():
        check, wanted = RULES[name]
        if not check(value):
            raise ParameterError(
                f"parameter {name}={value!r} cannot be used: it must be {wanted}. Set it in the "
                f"parameters cell, or with papermill: -p {name} VALUE."
            )
    if parameters.get("DEVICE") is not None:
        check_device_map(None if parameters["DEVICE"] == "auto" else parameters["DEVICE"])


def load(
    model: str, quantization: str | None = None, device: str | dict = "auto", dtype: str = "auto"
) -> LoadedModel:
    """Load ``model`` for a notebook.

    ``device="auto"`` means the GPU if there is one, else the CPU; ``dtype="auto"`` means the
    checkpoint's dtype on a GPU and float32 on the CPU (half precision is slow and
    imprecise there).
    """
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if dtype == "auto" and on_cpu:
        dtype = "float32"
    device_map = None if device == "auto" else device
    return load_model(model, quantization, dtype, device_map=device_map)


def output_root() -> Path:
    """Where notebooks write by default.

    ``<repo>/outputs`` when the kit runs from a checkout of its repository, else
    ``./outputs`` in the current folder (an installed kit never writes into site-packages).
    """
    in_checkout = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "notebooks").is_dir()
    return REPO_ROOT / "outputs" if in_checkout else Path.cwd() / "outputs"


def start(name: str, scope: Mapping[str, Any]) -> tuple[Path, LoadedModel]:
    """A notebook's first step: check its parameters, make its output folder, load the model.

    Args:
        name: the notebook's name, e.g. ``"03_js_divergence"``.
        scope: the notebook's namespace (``globals()``, after papermill's injected
            parameters): every parameter of :data:`RULES` defined there (``MODEL``,
            ``QUANTIZATION``, ``DEVICE``, ``DTYPE``, ..., ``OUTPUT_DIR``) is checked and used.

    Returns:
        ``(output folder, loaded model)``: the folder is ``OUTPUT_DIR``, or
        ``<output_root()>/<name>`` when it is None.

    Raises:
        ParameterError: a parameter the notebook cannot use (before the model loads).
    """
    parameters = {k: scope[k] for k in RULES if k in scope}
    check_parameters(parameters)
    if parameters.get("LLM_MODEL") == "auto":
        llm_model(parameters["MODEL"], "auto")  # an unknown base LLM stops before any load
    out = Path(parameters["OUTPUT_DIR"] or output_root() / name).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(parameters["SEED"])
    lm = load(
        parameters["MODEL"], parameters["QUANTIZATION"], parameters["DEVICE"], parameters["DTYPE"]
    )
    print(
        f"{parameters['MODEL']}: {lm.anatomy.n_layers} decoder layers, {lm.precision}; "
        f"outputs in {out}"
    )
    return out, lm


def llm_model(model: str, llm: str | None) -> str | None:
    """Notebook 07's ``LLM_MODEL``: ``"auto"`` becomes the base LLM of ``model``.

    Raises:
        ParameterError: ``"auto"`` for a model whose base LLM the kit does not know.
    """
    if llm != "auto":
        return llm
    try:
        return base_llm(model)
    except KeyError as exc:
        raise ParameterError(f"parameter LLM_MODEL='auto': {exc.args[0]}") from None


def show(fig: plt.Figure, output_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as PNG under ``output_dir`` and display it inline."""
    path = save_figure(fig, output_dir, name)
    plt.show()
    return path


def record(metrics: dict, output_dir: str | Path) -> dict:
    """Write the notebook's headline numbers to ``output_dir/metrics.json`` (atomically)."""
    write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics


def record_claims(results: list, output_dir: str | Path) -> list[dict]:
    """Print each claim's verdict and write them to ``output_dir/claims.json`` (atomically).

    Args:
        results: :class:`~lvlm_kit.claims.ClaimResult` objects.
        output_dir: the notebook's output folder.

    Returns:
        The claims as dicts (what ``claims.json`` holds).
    """
    for r in results:
        print(r.sentence())
        for note in r.notes:
            print(f"    {note}")
    out = [r.as_dict() for r in results]
    write_json(Path(output_dir) / "claims.json", out)
    return out
