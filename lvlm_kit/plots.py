"""Seaborn figures of Traces, stages, projections and applications.

Every function returns a ``matplotlib.figure.Figure``; :func:`save_figure` writes it as a
PNG. Every title names the model (and the lens norm policy where a lens was used); axes over
layers also show the relative depth j / L on top, so layer numbers compare across models of
different depth (the paper's are of 32 layers); lines differ in dash and marker as well as
colour, and colour maps are perceptually uniform, so figures read in grey too.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .claims.core import bootstrap_band
from .hallucination import chair
from .stages import Stages
from .tracing import Trace

STAGE_COLOURS = {"rapid evolution": "#f4a582", "stabilisation": "#92c5de", "mutation": "#ca0020"}


def save_figure(fig: plt.Figure, output_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``<output_dir>/<name>.png`` (folders created) and return the path."""
    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _title(text: str, model: str | None = None, lens: str | None = None) -> str:
    """``text`` with a second line naming the model and the lens norm policy."""
    parts = [part for part in (model, f"lens: {lens}" if lens else None) if part]
    return text + ("\n" + " · ".join(parts) if parts else "")


def _depth_axis(ax: plt.Axes, n_layers: int, shift: float = 0.0) -> None:
    """A top x axis in relative depth j / L for an axis whose position x shows layer x - shift."""
    top = ax.secondary_xaxis(
        "top", functions=(lambda x: (x - shift) / n_layers, lambda d: d * n_layers + shift)
    )
    top.set_xlabel("relative depth j / L", fontsize=8)
    top.tick_params(labelsize=7)


def _labels(trace: Trace, n: int) -> list[str]:
    return [f"{i}:{t!r}" for i, t in enumerate(trace.tokens[:n])]


def token_probability_heatmap(
    trace: Trace, max_tokens: int = 24, stages: Stages | None = None
) -> plt.Figure:
    """Fig. 2: probability of each generated token (rows) at every layer (columns)."""
    n = min(max_tokens, trace.n_tokens)
    fig, ax = plt.subplots(figsize=(0.35 * (trace.n_layers + 1) + 2.5, 0.28 * n + 1.5))
    sns.heatmap(
        pd.DataFrame(trace.token_prob[:n].numpy(), index=_labels(trace, n)),
        ax=ax,
        cmap="viridis",
        vmin=0,
        vmax=1,
        cbar_kws={"label": "p(token)"},
    )
    if stages is not None:
        ax.axvline(stages.critical_layer + 0.5, color="w", ls="--", lw=1.5)
        for m in stages.mutation_layers:
            ax.axvline(m + 0.5, color="r", ls=":", lw=1.5)
    title = _title("Token probability by layer", trace.model_name, trace.lens_norm)
    ax.set(xlabel="layer", ylabel="generated token", title=title)
    _depth_axis(ax, trace.n_layers, shift=0.5)  # layer j's cell is centred at j + 0.5
    return fig


def probability_curve(traces: Sequence[Trace], stages: Stages) -> plt.Figure:
    """Fig. 2 as a mean: p(emitted) by layer over all tokens, with a 95% band and the stages.

    The band is a bootstrap over images (the unit the claims resample); the critical layer
    and the mutation layers are drawn as labelled lines.
    """
    probs = [t.token_prob.double().numpy() for t in traces]  # per image [tokens, L+1]
    low, high = bootstrap_band(
        len(probs), lambda idx: np.concatenate([probs[i] for i in idx]).mean(0)
    )
    x = np.arange(stages.n_layers + 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(x, np.concatenate(probs).mean(0), "k-o", ms=3, label="mean p(emitted token)")
    ax.fill_between(x, low, high, color="k", alpha=0.2, lw=0, label="95% CI (images)")
    ax.axvline(
        stages.critical_layer, color="C0", ls="--", label=f"critical layer {stages.critical_layer}"
    )
    for i, m in enumerate(stages.mutation_layers):
        ax.axvline(m, color="C3", ls=":", label="mutation layers" if i == 0 else None)
    ax.set(
        xlabel="lens layer j",
        ylabel="p(emitted token)",
        ylim=(0, 1.02),
        title=_title(
            "Token probability by layer, mean over tokens",
            traces[0].model_name,
            traces[0].lens_norm,
        ),
    )
    _depth_axis(ax, stages.n_layers)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def js_heatmap(trace: Trace, max_tokens: int = 24, stages: Stages | None = None) -> plt.Figure:
    """Fig. 4: JS divergence between adjacent layers for each generated token.

    With ``stages``, the critical layer and the mutation layers are drawn as labelled lines.
    """
    n = min(max_tokens, trace.n_tokens)
    cols = [f"{j}→{j + 1}" for j in range(trace.n_layers)]
    fig, ax = plt.subplots(figsize=(0.4 * trace.n_layers + 2.5, 0.28 * n + 1.5))
    sns.heatmap(
        pd.DataFrame(trace.js[:n].numpy(), index=_labels(trace, n), columns=cols),
        ax=ax,
        cmap="magma",
        vmin=0,
        vmax=np.log(2),
        cbar_kws={"label": "JSD (nats)"},
    )
    if stages is not None:  # column j is the pair j -> j+1, centred at j + 0.5
        ax.axvline(
            stages.critical_layer,
            color="w",
            ls="--",
            lw=1.5,
            label=f"critical layer {stages.critical_layer}",
        )
        for i, m in enumerate(stages.mutation_layers):
            ax.axvline(
                m - 0.5,
                color="c",
                ls=":",
                lw=1.5,
                label="into a mutation layer" if i == 0 else None,
            )
        ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    title = _title("JS divergence of adjacent layers", trace.model_name, trace.lens_norm)
    ax.set(xlabel="adjacent layers", ylabel="generated token", title=title)
    _depth_axis(ax, trace.n_layers, shift=-0.5)  # j→j+1 is centred at j + 0.5: (j+1) / L
    return fig


def _js_mean_band(traces: Sequence[Trace]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean adjacent-layer JS over all tokens of ``traces`` and its 95% bootstrap band."""
    js = np.concatenate([t.js.double().numpy() for t in traces])  # [tokens, L]
    low, high = bootstrap_band(len(js), lambda idx: js[idx].mean(0))
    return js.mean(0), low, high


def js_curve(
    stages: Stages,
    curves: dict[str, Sequence[float] | Sequence[Trace]] | None = None,
    traces: Sequence[Trace] | None = None,
    model: str | None = None,
    label: str = "mean JS (all tokens)",
) -> plt.Figure:
    """Mean adjacent-layer JS with the three stages shaded (and optional extra curves).

    With the ``traces`` the stages came from, the mean gets a 95% confidence band
    (bootstrap over tokens), and the title names their model and lens (else ``model``).
    An extra curve given as traces gets its band too; given as values, it is drawn as is.
    Stages are told apart by hatching as well as colour; only the detected mutation layers
    are shaded as mutation. ``label`` names the curve the stages belong to.
    """
    fig, ax = plt.subplots(figsize=(7, 3.5))
    L, c = stages.n_layers, stages.critical_layer
    # A point at x = j is the transition into layer j: transitions into 1..c are the rapid
    # evolution, those into a mutation layer are its spikes; the rest is stabilisation.
    spans = [((0.5, c + 0.5), "rapid evolution", "//"), ((c + 0.5, L + 0.5), "stabilisation", "")]
    spans += [((m - 0.5, m + 0.5), "mutation", "xx") for m in stages.mutation_layers]
    named = set()
    for (a, b), name, hatch in spans:
        ax.axvspan(
            a,
            b,
            facecolor=STAGE_COLOURS[name],
            alpha=0.35,
            hatch=hatch,
            edgecolor="0.5",
            lw=0,
            label=None if name in named else name,
        )
        named.add(name)
    x = np.arange(1, L + 1)  # JS(p_{j-1}, p_j) is drawn at layer j
    ax.plot(x, stages.js_curve, "k-o", ms=3, label=label)
    if traces:
        _, low, high = _js_mean_band(traces)
        ax.fill_between(x, low, high, color="k", alpha=0.2, lw=0, label="95% CI")
    styles = [("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v")]
    for (name, values), (ls, mk) in zip((curves or {}).items(), styles * 4):
        if len(values) and isinstance(values[0], Trace):
            values, low, high = _js_mean_band(values)
            line = ax.plot(x, values, ls=ls, marker=mk, ms=3, label=name)[0]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, lw=0)
        else:
            ax.plot(x, values, ls=ls, marker=mk, ms=3, label=name)
    ax.set_yscale("log")
    lens = traces[0].lens_norm if traces else None
    model = model or (traces[0].model_name if traces else None)
    ax.set(
        xlabel="layer j  (JS between j-1 and j)",
        ylabel="JSD (nats)",
        title=_title(
            f"critical layer {stages.critical_layer}, mutation {stages.mutation_layers}",
            model,
            lens,
        ),
    )
    _depth_axis(ax, L)
    ax.legend(fontsize=7, loc="best")
    return fig


def candidate_trajectories(
    trace: Trace, step: int, token_ids: Sequence[int] | None = None, labels: dict | None = None
) -> plt.Figure:
    """Fig. 3: probability across layers of the emitted token and competing candidates.

    Candidates default to the emitted token, every watched id, and the top-1 tokens of the
    deep half of the layers. Full curves exist for the emitted and watched tokens; others
    are read from the top-k lists and drawn as 0 where they fall outside the top-k.
    """
    L1 = trace.n_layers + 1
    if token_ids is None:
        deep = trace.topk_ids[step, L1 // 2 :, 0].tolist()
        watched = [] if trace.watch_ids is None else trace.watch_ids.tolist()
        token_ids = list(dict.fromkeys([int(trace.token_ids[step]), *watched, *deep]))
    rows = []
    for tid in token_ids:
        probs = trace.prob_of(step, tid, from_topk=True).numpy()
        name = (labels or {}).get(tid, trace.vocab.get(tid, str(tid)))
        rows += [{"layer": j, "p": float(p), "token": repr(name)} for j, p in enumerate(probs)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.lineplot(
        pd.DataFrame(rows), x="layer", y="p", hue="token", style="token", markers=True, ax=ax
    )
    ax.set(
        title=_title(
            f"token {step} {trace.tokens[step]!r}: candidates by layer",
            trace.model_name,
            trace.lens_norm,
        ),
        ylim=(0, 1.02),
    )
    _depth_axis(ax, trace.n_layers)
    return fig


def _projection(ax: plt.Axes, coords: pd.DataFrame, labels: Sequence[str] | None):
    """One projection panel: points coloured by layer, paths, one label per distinct word."""
    items = coords["item"].nunique()
    for _, g in coords.groupby("item"):
        g = g.sort_values("layer")
        ax.plot(g.x, g.y, "-", color="0.6", lw=0.5, alpha=0.5 if items <= 30 else 0.15, zorder=1)
    points = ax.scatter(coords.x, coords.y, c=coords.layer, cmap="viridis", s=12, zorder=2)
    if labels is not None:  # each word once, where its items end (the last layer)
        last = coords[coords.layer == coords.layer.max()].copy()
        last["label"] = [labels[i] for i in last["item"]]
        for word, g in last.groupby("label"):
            ax.annotate(
                word,
                (g.x.mean(), g.y.mean()),
                fontsize=7,
                ha="center",
                zorder=3,
                bbox={"boxstyle": "round,pad=0.15", "fc": "w", "ec": "none", "alpha": 0.7},
            )
    ax.set(xticks=[], yticks=[])
    return points


def projection_plot(
    coords: pd.DataFrame,
    labels: Sequence[str] | None = None,
    title: str = "",
    model: str | None = None,
) -> plt.Figure:
    """Figs. 6-7: 2-D projection coloured by layer, each item's layers joined in order.

    Each distinct label is written once, at the mean position of its items in the last
    layer (tokens that repeat a word no longer print on top of each other).
    """
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    points = _projection(ax, coords, labels)
    fig.colorbar(points, ax=ax, label="layer")
    ax.set(title=_title(title, model))
    return fig


def projection_panels(
    panels: dict[str, pd.DataFrame],
    labels: dict[str, Sequence[str]],
    title: str = "",
    model: str | None = None,
) -> plt.Figure:
    """Fig. 7's layout: one projection panel per question, each fitted on its own.

    Args:
        panels: question -> its projection (``item``, ``layer``, ``x``, ``y``).
        labels: question -> the label of each of its items (e.g. the answer given).
        title: the figure's title.
        model: the model, named in the title.
    """
    n = len(panels)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.2 * rows), squeeze=False)
    points = None
    for ax, (question, coords) in zip(axes.flat, panels.items()):
        points = _projection(ax, coords, labels[question])
        ax.set_title(question, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if points is not None:
        fig.colorbar(points, ax=axes, label="layer", shrink=0.8)
    fig.suptitle(_title(title, model), fontsize=10)
    return fig


def sweep_plot(points: Sequence, model: str | None = None) -> plt.Figure:
    """Compression sweep: quality and speed-up vs number of stable layers skipped."""
    df = pd.DataFrame([p.__dict__ for p in points])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    cols = ["object_precision", "object_recall", "existence_accuracy"]
    long = df.melt(id_vars="k", value_vars=[c for c in cols if df[c].notna().all()])
    long = long[long.variable != "existence_accuracy"]
    if df["existence_correct"].notna().all():  # per image: mean with a 95% CI over images
        per_image = [
            {"k": p.k, "variable": "existence_accuracy", "value": float(np.mean(v))}
            for p in points
            for v in p.existence_correct.values()
        ]
        long = pd.concat([long, pd.DataFrame(per_image)])
    names = {
        "object_precision": "object precision (pooled)",
        "object_recall": "object recall (pooled)",
        "existence_accuracy": "existence accuracy (mean, 95% CI)",
    }
    long["variable"] = long["variable"].map(names)
    sns.lineplot(
        long,
        x="k",
        y="value",
        hue="variable",
        style="variable",
        markers=True,
        ax=a,
        errorbar=("ci", 95),
        seed=0,
    )
    a.set(xlabel="stable layers skipped", ylabel="score", ylim=(0, 1.02), title="quality")
    a.legend(fontsize=7, loc="lower left")
    b.plot(df.k, df.speedup, "o-", label="measured")
    b.plot(df.k, df.ideal_speedup, "k--", label="ideal L/(L-k)")
    b.set(xlabel="stable layers skipped", ylabel="speed-up", title="speed")
    b.legend()
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(_title("Compression: stable layers skipped", model), fontsize=10, y=1.04)
    return fig


def decoding_bars(
    results: dict[str, dict], model: str | None = None, texts: dict[str, str] | None = None
) -> plt.Figure:
    """Hallucination metrics per decoding variant (CHAIR, Hal: lower is better).

    CHAIR is pooled, as AMBER defines it (hallucinated nouns over all kept nouns of the
    images; :func:`~lvlm_kit.hallucination.chair`), and Hal is the share of images with a
    hallucination; each has a 95% bootstrap interval over images. Every result must hold
    ``per_image`` rows (``{"nouns", "hallucinated"}``), as
    :func:`~lvlm_kit.applications.compare_decoding` returns them. With ``texts`` (variant ->
    one image's description), a panel below prints them, as the paper's Fig. 5 does.

    Raises:
        ValueError: a variant without ``per_image`` rows (a pooled value has no interval).
    """
    missing = [v for v, r in results.items() if "per_image" not in r]
    if missing:
        raise ValueError(
            f"decoding_bars needs per-image counts for its confidence intervals; {missing} "
            "have none. Pass each variant's 'per_image' list of {'nouns', 'hallucinated'} "
            "(compare_decoding returns it)."
        )
    rng = np.random.default_rng(0)
    if texts:
        fig, (ax, low) = plt.subplots(
            2,
            1,
            figsize=(8, 3.9 + 0.16 * len(texts)),
            height_ratios=[3.5, 0.4 + 0.16 * len(texts)],
            layout="constrained",
        )
        lines = [f"{v}: " + textwrap.shorten(t, 150) for v, t in texts.items()]
        low.text(
            0, 1, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace", wrap=True
        )
        low.set_title("one image's description under each decoding", fontsize=8, loc="left")
        low.axis("off")
    else:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(results), 1)
    for i, (v, r) in enumerate(results.items()):
        nouns = np.array([img["nouns"] for img in r["per_image"]], float)
        hal = np.array([img["hallucinated"] for img in r["per_image"]], float)
        idx = rng.integers(0, len(nouns), (500, len(nouns)))
        values = [chair(hal.sum(), nouns.sum()), float((hal > 0).mean())]
        boots = [chair(hal[idx].sum(1), nouns[idx].sum(1)), (hal[idx] > 0).mean(1)]
        lows = [np.nanpercentile(b, 2.5) for b in boots]
        highs = [np.nanpercentile(b, 97.5) for b in boots]
        x = np.arange(2) + (i - (len(results) - 1) / 2) * width
        err = [np.array(values) - lows, np.array(highs) - values]
        ax.bar(
            x,
            values,
            width,
            yerr=err,
            capsize=2,
            label=v,
            hatch=_HATCHES[i % len(_HATCHES)],
            edgecolor="0.3",
        )
    ax.set_xticks(range(2), ["CHAIR (pooled)", "Hal (share of images)"])
    ax.set(
        ylim=(0, 1),
        ylabel="value (95% CI over images)",
        title=_title("hallucination metrics by decoding variant", model),
    )
    ax.legend(fontsize=7)
    return fig


_HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++", "oo")


def layer_lines(
    curves: dict[str, np.ndarray],
    ylabel: str,
    title: str,
    log: bool = False,
    model: str | None = None,
    lens: str | None = None,
    references: dict[str, float] | None = None,
) -> plt.Figure:
    """Per-layer curves of several runs, each with a 95% band over images.

    Args:
        curves: run name -> ``[images, layers]`` values (e.g. the per-layer lens KL).
        ylabel: what the values are.
        title: the figure's title.
        log: logarithmic y axis; it is linear below the smallest positive value, so an
            exact 0 (a layer both runs share, such as the embeddings) is drawn at 0.
        model: the model, named in the title.
        lens: the lens norm policy, named in the title.
        references: label -> a value drawn as a horizontal line (a threshold, a control).
    """
    rows = [
        (name, layer, float(v))
        for name, values in curves.items()
        for image in np.asarray(values)
        for layer, v in enumerate(image)
    ]
    df = pd.DataFrame(rows, columns=["run", "layer", ylabel])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.lineplot(
        df,
        x="layer",
        y=ylabel,
        hue="run",
        style="run",
        markers=True,
        errorbar=("ci", 95),
        n_boot=500,
        seed=0,
        ax=ax,
    )
    for (label, value), ls in zip((references or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="0.3", ls=ls, lw=1, label=label)
    if log:
        positive = df[ylabel][df[ylabel] > 0]
        ax.set_yscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    if (df[ylabel] >= 0).all():
        ax.set_ylim(bottom=0)  # no axis space for impossible negative values
    ax.legend(fontsize=7)
    ax.set(xlabel="lens layer j", title=_title(title, model, lens))
    _depth_axis(ax, int(df.layer.max()))
    return fig


def patch_heatmap(
    image: Image.Image,
    values: np.ndarray,
    title: str,
    model: str | None = None,
    labels: np.ndarray | None = None,
    vmax: float | None = None,
) -> plt.Figure:
    """The image beside a ``[rows, cols]`` map of one value per image token (patch).

    Args:
        image: the image the patches come from.
        values: ``[rows, cols]``, e.g. the lens probability of a word at each patch.
        title: what the values are.
        model: the model, named in the title.
        labels: optional ``[rows, cols]`` text per cell (e.g. what is drawn there).
        vmax: top of the colour scale (default: the largest value).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
    a.imshow(image)
    a.set(title="image", xticks=[], yticks=[])
    sns.heatmap(
        values,
        ax=b,
        cmap="viridis",
        vmin=0,
        vmax=vmax,
        square=True,
        cbar_kws={"label": "value"},
        xticklabels=False,
        yticklabels=False,
    )
    if labels is not None:
        for (r, c), text in np.ndenumerate(labels):
            if text:
                b.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=6, color="w")
    b.set_title(_title(title, model), fontsize=9)
    return fig
