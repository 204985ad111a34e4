"""Seaborn figures of Traces, stages, projections and applications.

Every function returns a ``matplotlib.figure.Figure``; :func:`save_figure` writes it as a
PNG. Every title names the model (and the lens norm policy where a lens was used); axes over
layers also show the relative depth j / L on top, so layer numbers compare across models of
different depth (the paper's are of 32 layers); lines differ in dash and marker as well as
colour, and colour maps are perceptually uniform, so figures read in grey too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .stages import Stages
from .trace import Trace

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
        ax=ax, cmap="viridis", vmin=0, vmax=1, cbar_kws={"label": "p(token)"},
    )  # fmt: skip
    if stages is not None:
        ax.axvline(stages.critical_layer + 0.5, color="w", ls="--", lw=1.5)
        for m in stages.mutation_layers:
            ax.axvline(m + 0.5, color="r", ls=":", lw=1.5)
    title = _title("Token probability by layer", trace.model_name, trace.lens_norm)
    ax.set(xlabel="layer", ylabel="generated token", title=title)
    _depth_axis(ax, trace.n_layers, shift=0.5)  # layer j's cell is centred at j + 0.5
    return fig


def js_heatmap(trace: Trace, max_tokens: int = 24) -> plt.Figure:
    """Fig. 4: JS divergence between adjacent layers for each generated token."""
    n = min(max_tokens, trace.n_tokens)
    cols = [f"{j}→{j + 1}" for j in range(trace.n_layers)]
    fig, ax = plt.subplots(figsize=(0.4 * trace.n_layers + 2.5, 0.28 * n + 1.5))
    sns.heatmap(
        pd.DataFrame(trace.js[:n].numpy(), index=_labels(trace, n), columns=cols),
        ax=ax, cmap="magma", vmin=0, vmax=np.log(2), cbar_kws={"label": "JSD (nats)"},
    )  # fmt: skip
    title = _title("JS divergence of adjacent layers", trace.model_name, trace.lens_norm)
    ax.set(xlabel="adjacent layers", ylabel="generated token", title=title)
    _depth_axis(ax, trace.n_layers, shift=-0.5)  # j→j+1 is centred at j + 0.5: (j+1) / L
    return fig


def _js_mean_band(traces: Sequence[Trace]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean adjacent-layer JS over all tokens of ``traces`` and its 95% bootstrap band."""
    js = np.concatenate([t.js.double().numpy() for t in traces])  # [tokens, L]
    rng = np.random.default_rng(0)
    means = np.stack([js[rng.integers(0, len(js), len(js))].mean(0) for _ in range(500)])
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return js.mean(0), low, high


def js_curve(
    stages: Stages,
    curves: dict[str, Sequence[float] | Sequence[Trace]] | None = None,
    traces: Sequence[Trace] | None = None,
    model: str | None = None,
) -> plt.Figure:
    """Mean adjacent-layer JS with the three stages shaded (and optional extra curves).

    With the ``traces`` the stages came from, the mean gets a 95% confidence band
    (bootstrap over tokens), and the title names their model and lens (else ``model``).
    An extra curve given as traces gets its band too; given as values, it is drawn as is.
    Stages are told apart by hatching as well as colour.
    """
    fig, ax = plt.subplots(figsize=(7, 3.5))
    L, c = stages.n_layers, stages.critical_layer
    m = stages.stabilisation_end
    # A point at x = j is the transition into layer j: transitions into 1..c are the rapid
    # evolution, the transition into the first mutation layer m is its spike.
    for (a, b), name, hatch in (((0.5, c + 0.5), "rapid evolution", "//"),
                                ((c + 0.5, m - 0.5), "stabilisation", ""),
                                ((m - 0.5, L + 0.5), "mutation", "xx")):  # fmt: skip
        if b > a:
            ax.axvspan(a, b, facecolor=STAGE_COLOURS[name], alpha=0.35, hatch=hatch,
                       edgecolor="0.5", lw=0, label=name)  # fmt: skip
    x = np.arange(1, L + 1)  # JS(p_{j-1}, p_j) is drawn at layer j
    ax.plot(x, stages.js_curve, "k-o", ms=3, label="mean JS (all tokens)")
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
        ),  # fmt: skip
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
    sns.lineplot(pd.DataFrame(rows), x="layer", y="p", hue="token", style="token",
                 markers=True, ax=ax)  # fmt: skip
    ax.set(title=_title(f"token {step} {trace.tokens[step]!r}: candidates by layer",
                        trace.model_name, trace.lens_norm), ylim=(0, 1.02))  # fmt: skip
    _depth_axis(ax, trace.n_layers)
    return fig


def projection_plot(coords: pd.DataFrame, labels: Sequence[str] | None = None,
                    title: str = "", model: str | None = None) -> plt.Figure:  # fmt: skip
    """Figs. 6-7: 2-D projection coloured by layer, each item's layers joined in order."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for item, g in coords.groupby("item"):
        g = g.sort_values("layer")
        ax.plot(g.x, g.y, "-", color="0.75", lw=0.6, zorder=1)
        if labels is not None:
            last = g.iloc[-1]
            ax.annotate(labels[item], (last.x, last.y), fontsize=7)
    points = ax.scatter(coords.x, coords.y, c=coords.layer, cmap="viridis", s=14, zorder=2)
    fig.colorbar(points, ax=ax, label="layer")
    ax.set(title=_title(title, model), xticks=[], yticks=[])
    return fig


def sweep_plot(points: Sequence, model: str | None = None) -> plt.Figure:
    """Compression sweep: quality and speed-up vs number of stable layers skipped."""
    df = pd.DataFrame([p.__dict__ for p in points])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    cols = ["object_precision", "object_recall", "existence_accuracy"]
    long = df.melt(id_vars="k", value_vars=[c for c in cols if df[c].notna().all()])
    long = long[long.variable != "existence_accuracy"]
    if df["existence_correct"].notna().all():  # per image: mean with a 95% CI over images
        per_image = [{"k": p.k, "variable": "existence_accuracy", "value": float(np.mean(v))}
                     for p in points for v in p.existence_correct.values()]  # fmt: skip
        long = pd.concat([long, pd.DataFrame(per_image)])
    sns.lineplot(long, x="k", y="value", hue="variable", style="variable", markers=True, ax=a,
                 errorbar=("ci", 95), seed=0)  # fmt: skip
    a.set(xlabel="stable layers skipped", ylabel="score", ylim=(0, 1.02), title="quality")
    b.plot(df.k, df.speedup, "o-", label="measured")
    b.plot(df.k, df.ideal_speedup, "k--", label="ideal L/(L-k)")
    b.set(xlabel="stable layers skipped", ylabel="speed-up", title="speed")
    b.legend()
    fig.suptitle(_title("Compression: stable layers skipped", model), fontsize=10, y=1.04)
    return fig


def decoding_bars(results: dict[str, dict], model: str | None = None) -> plt.Figure:
    """Hallucination metrics per decoding variant (CHAIR, Hal: lower is better).

    Each variant is drawn as the mean over images of each image's CHAIR and Hal with a 95%
    confidence interval, so every result must hold ``per_image`` rows
    (``{"nouns", "hallucinated"}``), as :func:`~lvlm_kit.applications.compare_decoding`
    returns them.

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
    rows = []
    for v, r in results.items():
        for img in r["per_image"]:
            if img["nouns"]:
                rows.append({"variant": v, "metric": "chair",
                             "value": img["hallucinated"] / img["nouns"]})  # fmt: skip
            rows.append({"variant": v, "metric": "hal", "value": float(img["hallucinated"] > 0)})
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(pd.DataFrame(rows), x="metric", y="value", hue="variant", ax=ax,
                errorbar=("ci", 95), seed=0)  # fmt: skip
    ax.set(ylim=(0, 1), ylabel="mean over images (95% CI)",
           title=_title("hallucination metrics by decoding variant", model))  # fmt: skip
    return fig


def layer_lines(
    curves: dict[str, np.ndarray],
    ylabel: str,
    title: str,
    log: bool = False,
    model: str | None = None,
    lens: str | None = None,
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
    """
    rows = [
        (name, layer, float(v))
        for name, values in curves.items()
        for image in np.asarray(values)
        for layer, v in enumerate(image)
    ]
    df = pd.DataFrame(rows, columns=["run", "layer", ylabel])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.lineplot(df, x="layer", y=ylabel, hue="run", style="run", markers=True,
                 errorbar=("ci", 95), n_boot=500, seed=0, ax=ax)  # fmt: skip
    if log:
        positive = df[ylabel][df[ylabel] > 0]
        ax.set_yscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set(xlabel="lens layer j", title=_title(title, model, lens))
    _depth_axis(ax, int(df.layer.max()))
    return fig
