"""What every notebook does besides its analysis: start, show a figure, record its numbers.

Each notebook calls these with its ``parameters`` cell values, so the same notebook runs
on the embedded testbed and, with ``-p MODEL llava-hf/llava-1.5-7b-hf -p DATA <AMBER>``, on
a real model. Data sources are in :mod:`lvlm_kit.data`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .files import write_json
from .loading import REPO_ROOT, LoadedModel, load_model
from .plots import save_figure


def load(model: str, quantization: str | None = None, device: str = "auto") -> LoadedModel:
    """Load ``model``; ``device="auto"`` means the GPU if there is one, else the CPU."""
    return load_model(model, quantization, device_map=None if device == "auto" else device)


def start(
    name: str,
    model: str,
    quantization: str | None,
    device: str,
    seed: int,
    output_dir: str | Path | None,
) -> tuple[Path, LoadedModel]:
    """A notebook's first step: its output folder, the seed, and the model.

    Args:
        name: the notebook's name, e.g. ``"03_js_divergence"``.
        model: hub id, local folder or ``"testbed"``.
        quantization: None, ``"4bit"`` or ``"8bit"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or an accelerate device map.
        seed: seeds torch (the testbed data take it separately).
        output_dir: where figures and ``metrics.json`` go; None for
            ``<repo>/outputs/<name>``.

    Returns:
        ``(output_dir, loaded model)``.
    """
    out = Path(output_dir or REPO_ROOT / "outputs" / name)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    lm = load(model, quantization, device)
    print(f"{model}: {lm.anatomy.n_layers} decoder layers; outputs in {out}")
    return out, lm


def show(fig: plt.Figure, output_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as PNG under ``output_dir`` and display it inline."""
    path = save_figure(fig, output_dir, name)
    plt.show()
    return path


def record(metrics: dict, output_dir: str | Path) -> dict:
    """Write the notebook's headline numbers to ``output_dir/metrics.json`` (atomically)."""
    write_json(Path(output_dir) / "metrics.json", metrics)
    return metrics
