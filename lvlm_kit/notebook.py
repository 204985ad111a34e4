"""Small conveniences that keep the notebooks thin: loading, data, figures, metrics.

Every notebook calls these with its ``parameters`` cell values, so the same notebook runs
on the embedded testbed and, with ``-p MODEL llava-hf/llava-1.5-7b-hf -p DATA <AMBER>``, on
a real model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from .cli import Item, dataset_items
from .loading import LoadedModel, load_model
from .plots import save_figure


def load(model: str, quantization: str | None = None, device: str = "auto") -> LoadedModel:
    """Load ``model``; ``device="auto"`` means the GPU if there is one, else the CPU."""
    return load_model(model, quantization, device_map=None if device == "auto" else device)


TESTBED_DATA = ("testbed", "testbed-probe")


def _data_root(data: str, output_dir: str | Path, n_images: int, seed: int) -> str:
    if data not in TESTBED_DATA:
        return data
    from .testbed.amber import export_amber

    root = Path(output_dir) / data.replace("-", "_")  # deterministic: rewritten every call
    export_amber(root, n_images, seed, probe=data == "testbed-probe", overwrite=True)
    return str(root)


def resolve_data(data: str, output_dir: str | Path, n_images: int, seed: int = 0,
                 prompt: str | None = None, queries: str = "generative") -> list[Item]:  # fmt: skip
    """The first ``n_images`` items of ``data``.

    Args:
        data: ``"testbed"`` (fresh held-out scenes exported in AMBER's layout under
            ``output_dir``), ``"testbed-probe"`` (planted-prior probe scenes: A without B),
            an AMBER-layout folder, or a folder of images.
        output_dir: the notebook's output folder.
        n_images: how many items to use.
        seed: seed of the testbed scenes.
        prompt: overrides the queries' prompt (required for a folder of images).
        queries: AMBER query file.
    """
    return dataset_items(_data_root(data, output_dir, n_images, seed), prompt, queries)[:n_images]


def resolve_amber(data: str, output_dir: str | Path, n_images: int, seed: int = 0,
                  queries: str = "generative"):  # fmt: skip
    """AMBER data (annotations included) for the first ``n_images`` images of ``data``.

    Raises:
        ValueError: ``data`` is a plain folder of images (no annotations to score against).
    """
    from .hallucination import read_amber

    root = Path(_data_root(data, output_dir, n_images, seed))
    if not (root / "data" / "annotations.json").is_file():
        raise ValueError(f"'{root}' has no AMBER annotations; this notebook needs AMBER's "
                         "layout (or DATA='testbed').")  # fmt: skip
    amber = read_amber(root, queries)
    images = {q["image"] for q in read_amber(root, "generative").queries[:n_images]}
    amber.queries = [q for q in amber.queries if q["image"] in images]
    return amber


def vqa_items(data: str, output_dir: str | Path, objects: list[str], per_question: int,
              seed: int = 0) -> list[dict]:  # fmt: skip
    """Single-word VQA items: ``{"image", "question", "answer"}``, ``per_question`` each.

    With ``data="testbed"`` the images are fresh scenes holding each object and the
    question is "what colour is the {object}?"; otherwise ``data`` is a JSON file with such
    a list (``answer`` optional).
    """
    import random

    if data not in TESTBED_DATA:
        return json.loads(Path(data).read_text())
    from .testbed.world import render, sample_scene

    folder = Path(output_dir) / "vqa_images"
    folder.mkdir(parents=True, exist_ok=True)
    rng, out = random.Random(seed), []
    for obj in objects:
        for i in range(per_question):
            scene = sample_scene(rng, require=obj)
            path = folder / f"{obj}_{i}.png"
            render(scene).save(path)
            colour = next(g.colour for g in scene.groups if g.category == obj)
            out.append({"image": str(path), "question": f"what colour is the {obj}?",
                        "answer": colour})  # fmt: skip
    return out


def show(fig: plt.Figure, output_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as PNG under ``output_dir`` and display it inline."""
    path = save_figure(fig, output_dir, name)
    plt.show()
    return path


def record(metrics: dict, output_dir: str | Path) -> dict:
    """Write the notebook's headline numbers to ``output_dir/metrics.json`` (atomically)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".metrics.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    os.replace(tmp, out / "metrics.json")
    return metrics
