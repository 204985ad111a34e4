"""ipywidgets explorer over a Trace: pick a token, see its top-k per layer and its trajectory.

The logic lives in plain functions (:func:`topk_table`, :func:`token_summary`) that tests
call directly; :class:`TraceExplorer` only wires them to widgets.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
from PIL import Image

from .image_lens import PatchLens
from .plots import _depth_axis, _title, patch_heatmap
from .tracing import Trace


def topk_table(trace: Trace, step: int, k: int | None = None) -> pd.DataFrame:
    """Top-k candidates of every layer for generated token ``step``.

    Returns:
        Frame indexed by layer 0..L with columns ``top1..topk`` holding ``"token (p)"``,
        plus ``p(emitted)`` and ``rank(emitted)``.
    """
    if not 0 <= step < trace.n_tokens:
        raise IndexError(f"token {step} is out of range 0..{trace.n_tokens - 1}.")
    k = k or trace.topk_ids.shape[-1]
    rows = []
    for j in range(trace.n_layers + 1):
        row = {
            f"top{r + 1}": f"{trace.vocab[int(i)]!r} ({float(p):.3f})"
            for r, (i, p) in enumerate(
                zip(trace.topk_ids[step, j, :k], trace.topk_probs[step, j, :k])
            )
        }
        row["p(emitted)"] = round(float(trace.token_prob[step, j]), 4)
        row["rank(emitted)"] = int(trace.token_rank[step, j])
        rows.append(row)
    return pd.DataFrame(rows, index=pd.RangeIndex(trace.n_layers + 1, name="layer"))


def token_summary(trace: Trace, step: int) -> str:
    """One line on token ``step``: its text, final probability and the first layer at rank 0."""
    top1 = (trace.token_rank[step] == 0).nonzero()
    first = int(top1[0]) if len(top1) else None
    return (
        f"token {step}: {trace.tokens[step]!r} — p = {float(trace.token_prob[step, -1]):.3f} at "
        f"the last layer; top-1 from layer {first}"
    )


def trajectory_figure(trace: Trace, step: int) -> plt.Figure:
    """Probability of generated token ``step`` across layers 0..L (relative depth on top)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(trace.token_prob[step].numpy(), "o-")
    title = _title(f"p({trace.tokens[step]!r}) by layer", trace.model_name, trace.lens_norm)
    ax.set(xlabel="lens layer j", ylabel="p(emitted)", ylim=(0, 1.02), title=title)
    _depth_axis(ax, trace.n_layers)
    return fig


class TraceExplorer:
    """Slider over generated tokens; shows the top-k table and the probability trajectory.

    Args:
        trace: the Trace to explore.
        k: candidates per layer to show.

    Example:
        >>> TraceExplorer(tr).widget  # display in a notebook
    """

    def __init__(self, trace: Trace, k: int = 5) -> None:
        self.trace, self.k = trace, k
        self.slider = widgets.IntSlider(0, 0, trace.n_tokens - 1, description="token")
        self.title = widgets.HTML()
        self.table = widgets.HTML()
        self.plot = widgets.Output()
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        self.widget = widgets.VBox([self.slider, self.title, self.plot, self.table])
        self.show(0)

    def show(self, step: int) -> None:
        """Render token ``step`` (also called when the slider moves)."""
        self.title.value = f"<b>{html.escape(token_summary(self.trace, step))}</b>"
        self.table.value = topk_table(self.trace, step, self.k).to_html()
        self.figure = trajectory_figure(self.trace, step)
        plt.close(self.figure)  # shown through the Output widget only
        self.plot.clear_output(wait=True)
        with self.plot:
            display(self.figure)


class PatchExplorer:
    """Pick a layer and a word; see that word's lens probability at every image patch.

    Args:
        lens: the :class:`~lvlm_kit.image_lens.PatchLens` of one image (a square grid).
        image: the image.
        labels: optional ``[rows, cols]`` text per cell (what is drawn there).

    Example:
        >>> PatchExplorer(pl, image).widget  # display in a notebook
    """

    def __init__(self, lens: PatchLens, image: Image.Image, labels=None) -> None:
        self.lens, self.image, self.labels = lens, image, labels
        self.layer = widgets.IntSlider(lens.n_layers, 0, lens.n_layers, description="layer")
        self.word = widgets.Dropdown(options=lens.words, description="word")
        self.plot = widgets.Output()
        for control in (self.layer, self.word):
            control.observe(lambda change: self.show(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.layer, self.word]), self.plot])
        self.show()

    def show(self) -> None:
        """Render the chosen layer and word (also called when either changes)."""
        j, w = self.layer.value, self.word.value
        values = self.lens.as_grid(self.lens.word_probs[j, :, self.lens.words.index(w)])
        self.figure = patch_heatmap(
            self.image, values.numpy(), f"p({w!r}) at layer {j}", labels=self.labels, vmax=1.0
        )
        plt.close(self.figure)
        self.plot.clear_output(wait=True)
        with self.plot:
            display(self.figure)
