"""Feature encodings across layers (paper §5): collect residual features, project to 2-D.

Features come from Traces made with ``keep_hidden=True`` (``hidden`` is the residual
stream ``[K, L+1, d]``; the paper uses layers 1..L). Projections scale with
``MaxAbsScaler`` then run t-SNE (scikit-learn) or UMAP (umap-learn), seeded; defaults are
the authors' t-SNE settings (perplexity 40, learning rate 200, 2000 iterations), with the
perplexity capped below the number of points for small inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .tracing import Trace

METHODS: tuple[str, ...] = ("tsne", "umap")


def token_features(trace: Trace, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Features of every generated token at each layer.

    Args:
        trace: a Trace made with ``keep_hidden=True``.
        layers: lens layers to keep (default 1..L, as in the paper).

    Returns:
        ``[K, len(layers), d]`` float32.
    """
    if trace.hidden is None:
        raise ValueError("this trace has no hidden states; re-run trace(..., keep_hidden=True).")
    layers = list(range(1, trace.n_layers + 1)) if layers is None else list(layers)
    return trace.hidden[:, layers].float()


def answer_features(traces: Sequence[Trace], step: int = 0, layers: Sequence[int] | None = None):
    """Features of one generated token (e.g. a single-word answer) across images.

    Returns:
        ``[N, len(layers), d]`` float32, one row per trace.
    """
    return torch.stack([token_features(t, layers)[step] for t in traces])


def answer_words(traces: Sequence[Trace], step: int = 0) -> list[str]:
    """The token generated at ``step`` of each trace, stripped (a one-word answer)."""
    return [t.tokens[step].strip() for t in traces]


def question_panels(
    traces: Sequence[Trace],
    questions: Mapping[str, Sequence[int]],
    seed: int = 0,
    perplexity: float = 35.0,
    step: int = 0,
) -> dict[str, pd.DataFrame]:
    """One t-SNE of the answer token's features per question (the panels of the paper's Fig. 7).

    Args:
        traces: traces made with ``keep_hidden=True``, one per (image, question).
        questions: question -> indices of its traces (:func:`group_items`).
        seed: t-SNE seed.
        perplexity: t-SNE perplexity (capped below the number of points).
        step: the generated token that is the answer.

    Returns:
        Question -> :func:`project` frame of ``[its traces, layers 1..L]`` points.
    """
    return {
        q: project(
            answer_features([traces[i] for i in idx], step), "tsne", seed, perplexity=perplexity
        )
        for q, idx in questions.items()
    }


def project(
    features: torch.Tensor,
    method: str = "tsne",
    seed: int = 0,
    perplexity: float = 40.0,
    learning_rate: float = 200.0,
    max_iter: int = 2000,
    n_neighbors: int = 15,
) -> pd.DataFrame:
    """Project ``[items, layers, d]`` features to 2-D together.

    Args:
        features: ``[items, layers, d]`` (tokens or images × layers × width).
        method: ``"tsne"`` or ``"umap"``.
        seed: random seed.
        perplexity: t-SNE perplexity (capped at ``(n - 1) / 3`` for small inputs).
        learning_rate: t-SNE learning rate.
        max_iter: t-SNE iterations.
        n_neighbors: UMAP neighbours (capped at ``n - 1``).

    Returns:
        Frame with columns ``item``, ``layer`` (1-based position in the layer axis),
        ``x``, ``y``: one row per (item, layer).
    """
    from sklearn.preprocessing import MaxAbsScaler

    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {METHODS}.")
    n_items, n_layers, d = features.shape
    flat = MaxAbsScaler().fit_transform(features.reshape(-1, d).double().numpy())
    n = flat.shape[0]
    if n < 4:
        raise ValueError(f"need at least 4 points to project, got {n}.")
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(
            n_components=2,
            perplexity=min(perplexity, (n - 1) / 3),
            learning_rate=learning_rate,
            max_iter=max_iter,
            init="pca",
            random_state=seed,
        ).fit_transform(flat)
    else:
        import umap

        xy = umap.UMAP(
            n_neighbors=min(n_neighbors, n - 1), random_state=seed, n_jobs=1, init="random"
        ).fit_transform(flat)
    return pd.DataFrame(
        {
            "item": np.repeat(np.arange(n_items), n_layers),
            "layer": np.tile(np.arange(1, n_layers + 1), n_items),
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )


def layer_spreads(xy: np.ndarray) -> np.ndarray:
    """Mean distance of the units to their centroid, per layer (small = clustered).

    Args:
        xy: ``[units, layers, 2]`` projected features (see :func:`coords_array`).

    Returns:
        ``[layers]`` spreads.
    """
    return np.linalg.norm(xy - xy.mean(0, keepdims=True), axis=-1).mean(0)


def spread_by_layer(coords: pd.DataFrame) -> pd.Series:
    """:func:`layer_spreads` of a projection frame, indexed by layer."""
    layers = pd.Index(sorted(coords["layer"].unique()), name="layer")
    return pd.Series(layer_spreads(coords_array(coords)), index=layers)


def shallow_and_deep(spreads: np.ndarray | pd.Series, n_shallow: int) -> tuple[float, float]:
    """Mean spread of the first ``n_shallow`` layers and of the deep half.

    Args:
        spreads: ``[L]`` spreads of layers 1..L (:func:`layer_spreads`).
        n_shallow: how many of the first layers are "shallow" (claim 12: 2; claim 13: L/4).

    Returns:
        ``(shallow, deep)``; the deep half is layers L//2+1..L.
    """
    s = np.asarray(spreads)
    return float(s[:n_shallow].mean()), float(s[len(s) // 2 :].mean())


#: the last layer "draws in" (re-clusters by answer) when its spread is below this share of
#: the widest layer's
RECLUSTER_SHARE = 0.9


@dataclass
class FanProfile:
    """The shape of a spread-by-layer curve: a shallow neck, a widest layer, the last layer."""

    neck: float  # the narrowest of layers 1-3
    fan: float  # the widest layer's spread
    fan_layer: int
    last: float  # the last layer's spread
    reclusters: bool  # last < RECLUSTER_SHARE * fan


def fan_profile(spread: pd.Series) -> FanProfile:
    """The neck, the fan and the last layer of :func:`spread_by_layer`'s curve."""
    fan, last = float(spread.max()), float(spread.iloc[-1])
    return FanProfile(
        neck=float(spread.loc[1:3].min()),
        fan=fan,
        fan_layer=int(spread.idxmax()),
        last=last,
        reclusters=last < RECLUSTER_SHARE * fan,
    )


def path_linearity(coords: pd.DataFrame) -> pd.Series:
    """Per item: straight-line distance first→last layer over the path length (1 = straight)."""

    def ratio(g: pd.DataFrame) -> float:
        xy = g.sort_values("layer")[["x", "y"]].to_numpy()
        steps = np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()
        return float(np.linalg.norm(xy[-1] - xy[0]) / steps) if steps > 0 else 1.0

    return coords.groupby("item")[["layer", "x", "y"]].apply(ratio)


def coords_array(coords: pd.DataFrame) -> np.ndarray:
    """A projection frame as ``[items, layers, 2]`` (layers in ascending order)."""
    ordered = coords.sort_values(["item", "layer"])
    n_items, n_layers = ordered["item"].nunique(), ordered["layer"].nunique()
    return ordered[["x", "y"]].to_numpy().reshape(n_items, n_layers, 2)


def group_items(keys: Sequence[str], min_size: int = 4) -> dict[str, list[int]]:
    """Indices of the items sharing each key (e.g. a VQA question), in first-seen order.

    Keys with fewer than ``min_size`` items (AMBER asks each existence question about one
    image) are pooled under ``"other questions"``, if that pool reaches ``min_size``.
    """
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    small = [i for idx in groups.values() if len(idx) < min_size for i in idx]
    out = {k: idx for k, idx in groups.items() if len(idx) >= min_size}
    if len(small) >= min_size:
        out["other questions"] = sorted(small)
    return out
