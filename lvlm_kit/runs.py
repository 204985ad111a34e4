"""Trace a dataset and score it: the one home of the loop over a model's images.

- :func:`trace_images`: one :class:`~lvlm_kit.tracing.Trace` per image (free, or teacher-forced
  on another model's traces), with a progress bar. Every per-image loop of the kit, its
  notebooks and its controls goes through it.
- :class:`Counts`: per image, what AMBER's CHAIR and Cover count, with pooled CHAIR / Cover
  / Hal over any subset of the images (one rule: :func:`~lvlm_kit.hallucination.chair`).
- :func:`run` / :class:`Run`: a model traced and scored on an AMBER-layout dataset (the
  reference and each variant of notebook 09).
- :func:`object_token_events`: every image traced, its object tokens labelled (correct or
  hallucinated) and their rivals followed through the layers (claims 4-5).
- :func:`preset_counts` / :class:`PresetCounts`: descriptions generated with each set of
  skipped layers, scored image by image (claims 9-11).

A folder of traces that several processes share and resume is :mod:`lvlm_kit.store`; it
traces one item at a time with :func:`~lvlm_kit.tracing.trace` and scores with the same
:func:`~lvlm_kit.hallucination.score_generative`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from .data import AmberData
from .hallucination import (
    GenerativeScore,
    chair,
    cover,
    label_tokens,
    noun_counts,
    overtake_layer,
    pooled_share,
    score_generative,
)
from .loading import LoadedModel
from .stages import Stages, detect_stages
from .tracing import Trace, trace, word_token_id

if TYPE_CHECKING:
    import pandas as pd


def trace_images(
    loaded: LoadedModel,
    images: Sequence[Any],
    prompts: str | Sequence[str],
    max_new_tokens: int | None = None,
    *,
    force: Sequence[Trace] | None = None,
    desc: str = "trace",
    progress: bool = True,
    **trace_kw: Any,
) -> list[Trace]:
    """Trace ``loaded`` on every image, in order.

    Args:
        loaded: the model (or a noise control).
        images: images, paths or None (text only), one per trace.
        prompts: one prompt, or one per image.
        max_new_tokens: generation limit; None with ``force``: each forced trace's length.
        force: traces (one per image) whose tokens ``loaded`` is made to emit (teacher
            forcing, e.g. a noise control read on the model's own words).
        desc: the progress bar's label.
        progress: show a progress bar.
        **trace_kw: passed to :func:`~lvlm_kit.tracing.trace` (``lens_norm``, ``watch``, ...).

    Returns:
        ``[len(images)]`` traces.

    Raises:
        ValueError: a number of prompts or forced traces that is not one per image, or no
            ``max_new_tokens`` without ``force``.
    """
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images) or (force is not None and len(force) != len(images)):
        raise ValueError(
            f"got {len(images)} images, {len(prompts)} prompts and "
            f"{'no' if force is None else len(force)} forced traces; pass one of each per image."
        )
    if force is None and max_new_tokens is None:
        raise ValueError("pass max_new_tokens (a generation limit) or force (traces to follow).")
    out = []
    for n, (image, prompt) in enumerate(
        tqdm(list(zip(images, prompts)), desc=desc, disable=not progress)
    ):
        if force is None:
            out.append(trace(loaded, image, prompt, max_new_tokens, **trace_kw))
        else:
            forced = force[n]
            limit = forced.n_tokens if max_new_tokens is None else max_new_tokens
            out.append(trace(loaded, image, prompt, limit, force=forced.token_ids, **trace_kw))
    return out


@dataclass
class Counts:
    """Per image, what AMBER's generative metrics count. Every array is ``[images]``."""

    nouns: np.ndarray  # nouns in CHAIR's denominator
    hallucinated: np.ndarray  # hallucinated object nouns
    covered: np.ndarray  # annotated objects the description names
    truth: np.ndarray  # annotated objects

    @classmethod
    def of(cls, amber: AmberData, queries: Sequence[dict], texts: Sequence[str]) -> Counts:
        """Score ``texts`` (one per generative query of ``amber``, in order)."""
        rows = noun_counts([{"id": q["id"], "response": t} for q, t in zip(queries, texts)], amber)
        return cls(*(np.array([r[f.name] for r in rows], float) for f in fields(cls)))

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __len__(self) -> int:
        return len(self.nouns)

    def chair_of(self, idx: np.ndarray | slice = slice(None)) -> float:
        """Pooled CHAIR of the images ``idx`` (with repeats)."""
        return chair(self.hallucinated[idx].sum(), self.nouns[idx].sum())

    def cover_of(self, idx: np.ndarray | slice = slice(None)) -> float:
        """Pooled Cover of the images ``idx`` (with repeats)."""
        return cover(self.covered[idx].sum(), self.truth[idx].sum())

    def hal_of(self, idx: np.ndarray | slice = slice(None)) -> float:
        """Share of the images ``idx`` with a hallucinated noun."""
        hallucinated = self.hallucinated[idx]
        return pooled_share((hallucinated > 0).sum(), len(hallucinated))

    @property
    def chair(self) -> float:
        """Pooled CHAIR over all images."""
        return self.chair_of()

    @property
    def cover(self) -> float:
        """Pooled Cover over all images."""
        return self.cover_of()

    @property
    def hal(self) -> float:
        """Share of the images with a hallucinated noun."""
        return self.hal_of()

    def per_image(self) -> list[dict[str, int]]:
        """``[{"nouns", "hallucinated"}, ...]``, as :func:`~lvlm_kit.plots.decoding_bars` reads."""
        return [
            {"nouns": int(n), "hallucinated": int(h)} for n, h in zip(self.nouns, self.hallucinated)
        ]


@dataclass
class Run:
    """One model traced on the images of an AMBER-layout dataset, and scored."""

    name: str
    traces: list[Trace]  # [N], one per image
    stages: Stages  # detected over all traces
    counts: Counts  # of the generated descriptions
    memory_bytes: int  # the model's parameters and buffers (quantized sizes)

    @property
    def chair(self) -> float:
        """Pooled CHAIR over all images."""
        return self.counts.chair

    @property
    def cover(self) -> float:
        """Pooled Cover over all images."""
        return self.counts.cover


def memory_footprint(loaded: LoadedModel) -> int:
    """Bytes of the model's parameters and buffers as stored (4-bit weights count 4 bits)."""
    return int(loaded.model.get_memory_footprint())


def run(
    loaded: LoadedModel,
    amber: AmberData,
    prompt: str,
    max_new_tokens: int,
    lens_norm: str = "final_norm",
    n_images: int | None = None,
    name: str | None = None,
) -> Run:
    """Trace ``loaded`` on the first ``n_images`` generative queries of ``amber`` and score it.

    Returns:
        The :class:`Run`, its hallucinations scored against AMBER's annotations.
    """
    queries = amber.queries[:n_images]
    name = name or loaded.name
    images = [amber.image_path(q) for q in queries]
    traces = trace_images(loaded, images, prompt, max_new_tokens, desc=name, lens_norm=lens_norm)
    counts = Counts.of(amber, queries, [t.generated_text for t in traces])
    return Run(name, traces, detect_stages(traces), counts, memory_footprint(loaded))


@dataclass
class PresetCounts:
    """Per decoding, the :class:`Counts` of each image and its word overlap with plain decoding.

    Decodings are ``plain``, the paper's presets (``skip1``, ``skip2``, ``skip3``) and, for
    each preset, ``random.<preset>``: random sets of as many layers after the critical
    layer (counts summed, overlap averaged over the sets). A preset the stages leave
    undefined is absent.
    """

    counts: dict[str, Counts]
    overlap: dict[str, np.ndarray]  # [images] word overlap with plain decoding

    def random_skips(self) -> PresetCounts:
        """These counts with each preset replaced by its random skips of as many layers."""

        def swap(d: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in d.items() if not k.startswith("random.")}
            out.update({k[len("random.") :]: v for k, v in d.items() if k.startswith("random.")})
            return {k: v for k, v in out.items() if k == "plain" or f"random.{k}" in d}

        return PresetCounts(swap(self.counts), swap(self.overlap))

    def table(
        self, presets: Mapping[str, Sequence[Sequence[int]]] | None = None
    ) -> dict[str, dict]:
        """Per decoding: CHAIR, Cover, Hal, overlap with plain, skipped layers, per-image rows.

        The rows are what :func:`~lvlm_kit.plots.decoding_bars` draws.
        """
        return {
            name: {
                "chair": c.chair,
                "cover": c.cover,
                "hal": c.hal,
                "overlap_with_plain": float(self.overlap[name].mean()),
                "skipped": list((presets or {}).get(name, [[]])[0]),
                "per_image": c.per_image(),
            }
            for name, c in self.counts.items()
        }


def preset_counts(
    loaded: LoadedModel,
    amber: AmberData,
    plain: Sequence[str],
    presets: Mapping[str, Sequence[Sequence[int]]],
    prompt: str,
    max_new_tokens: int,
    progress: bool = True,
) -> tuple[PresetCounts, dict[str, list[str]]]:
    """Generate with each layer set of each decoding and count nouns per image.

    Args:
        loaded: the model (or a noise control, given the model's ``presets``).
        amber: the images and their annotations (one generative query per image).
        plain: ``loaded``'s plain greedy description of each image.
        presets: decoding name -> decoder layer sets
            (:func:`~lvlm_kit.claims.preset_layers`).
        prompt: the instruction.
        max_new_tokens: generation limit.
        progress: show progress bars.

    Returns:
        ``(counts, texts)``: :class:`PresetCounts` and the generated texts by decoding (the
        first layer set's, for random skips).
    """
    from .generation import generate_texts

    images = [amber.image_path(q) for q in amber.queries]
    counts: dict[str, Counts] = {}
    overlap: dict[str, np.ndarray] = {}
    texts: dict[str, list[str]] = {}
    decodings = [("plain", [None])] + [(name, list(sets)) for name, sets in presets.items()]
    for name, sets in decodings:
        for layers in sets:
            outs = (
                list(plain)
                if layers is None
                else generate_texts(
                    loaded,
                    images,
                    [prompt] * len(images),
                    max_new_tokens,
                    skip=layers,
                    progress=progress,
                    desc=name,
                )
            )
            texts.setdefault(name, outs)
            found = Counts.of(amber, amber.queries, outs)
            counts[name] = counts[name] + found if name in counts else found
            same = [
                difflib.SequenceMatcher(None, a.split(), b.split()).ratio()
                for a, b in zip(outs, plain)
            ]
            overlap[name] = overlap.get(name, 0) + np.array(same) / len(sets)
    return PresetCounts(counts, overlap), texts


def _known_words(tokenizer: Any, words: Sequence[str], vocab_size: int) -> dict[str, int]:
    """Each word the model can name, with its first token's id; the others are left out."""
    known = {}
    for word in words:
        try:
            known[word] = word_token_id(tokenizer, word, vocab_size)
        except ValueError:
            continue
    return known


def object_token_events(
    loaded: LoadedModel,
    amber: AmberData,
    prompt: str,
    max_new_tokens: int,
    lens_norm: str = "final_norm",
    progress: bool = True,
    force: Sequence[Trace] | None = None,
) -> tuple[pd.DataFrame, list[Trace], GenerativeScore]:
    """Trace every image, label its object tokens, and follow their rivals through the layers.

    Two rivals are followed for each object token: its runner-up at the last layer, and the
    objects annotated in the image (their first tokens; the emitted object itself and any
    object the vocabulary cannot name left out). A second trace watches them at every
    layer; :func:`overtake_layer` gives the layer from which the emitted token stays ahead
    of the runner-up (the paper's mutation, for a hallucinated token).

    Args:
        loaded: the model.
        amber: images and annotations (one generative query per image).
        prompt: the instruction.
        max_new_tokens: generation limit.
        lens_norm: the lens's norm policy.
        progress: show a progress bar.
        force: traces (one per query, in order) whose tokens ``loaded`` is made to emit
            (teacher forcing, e.g. a noise control read on the model's own descriptions).

    Returns:
        ``(events, traces, score)``: one row per object token (``image`` index, ``step``,
        ``label``, ``object``, ``rival``, ``rival_id``, ``overtake``, ``rival_before``: the
        rival's probability one layer before the overtake; ``truth_lead``: ``[L+1]`` per
        layer the largest probability of an annotated object that is ahead of the emitted
        token, else 0, NaN everywhere when no other object is annotated; and the watched
        ``trace``); the plain traces in image order; the generative score of their
        descriptions.
    """
    import pandas as pd

    if force is not None and len(force) != len(amber.queries):
        raise ValueError(
            f"force holds {len(force)} traces for {len(amber.queries)} queries; pass one "
            "trace per query, in order."
        )
    images = [amber.image_path(q) for q in amber.queries]
    traces = trace_images(
        loaded, images, prompt, max_new_tokens, force=force, progress=progress, lens_norm=lens_norm
    )
    vocab_size = loaded.lens(lens_norm).vocab_size  # the lens trace_images used
    rows = []
    bar = tqdm(amber.queries, desc="rivals", disable=not progress)
    for n, (q, image, tr) in enumerate(zip(bar, images, traces)):
        ann = amber.annotations[q["id"]]
        kw: dict[str, Any] = {"lens_norm": lens_norm}
        if force is not None:
            kw["force"] = force[n].token_ids
        labels = label_tokens(
            tr, ann["truth"], ann.get("hallu", []), amber.relation, amber.safe_words
        )
        steps = [i for i, lab in enumerate(labels.labels) if lab != "other"]
        if not steps:
            continue
        rivals = [int(tr.topk_ids[i, -1, 1]) for i in steps]
        truth = _known_words(loaded.tokenizer, ann["truth"], vocab_size)
        watched = trace(
            loaded, image, prompt, max_new_tokens, watch=rivals + list(truth.values()), **kw
        )
        for i, rival in zip(steps, rivals):
            emitted = int(watched.token_ids[i])
            over = overtake_layer(watched, i, emitted, rival)
            before = None if not over else float(watched.prob_of(i, rival)[over - 1])
            others = [t for o, t in truth.items() if o != labels.objects[i] and t != emitted]
            lead = np.full(watched.n_layers + 1, np.nan)
            if others:
                p = watched.prob_of(i, emitted).double().numpy()
                po = np.stack([watched.prob_of(i, t).double().numpy() for t in others])
                lead = np.where(po > p, po, 0.0).max(0)
            rows.append(
                {
                    "image": n,
                    "step": i,
                    "label": labels.labels[i],
                    "object": labels.objects[i],
                    "rival": watched.vocab[rival],
                    "rival_id": rival,
                    "overtake": over,
                    "rival_before": before,
                    "truth_lead": lead,
                    "trace": watched,
                }
            )
    columns = [
        "image",
        "step",
        "label",
        "object",
        "rival",
        "rival_id",
        "overtake",
        "rival_before",
        "truth_lead",
        "trace",
    ]
    responses = [
        {"id": q["id"], "response": t.generated_text} for q, t in zip(amber.queries, traces)
    ]
    return pd.DataFrame(rows, columns=columns), traces, score_generative(responses, amber)


__all__: Sequence[str] = [
    "Counts",
    "PresetCounts",
    "Run",
    "memory_footprint",
    "object_token_events",
    "preset_counts",
    "run",
    "trace_images",
]
