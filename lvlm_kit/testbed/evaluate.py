"""Quality of the testbed model against the scene world's ground truth.

Descriptions are parsed back into (category, count, size, colour) mentions and relation
sentences with the world's fixed grammar; VQA answers are compared word for word. The
planted-prior probe draws held-out scenes holding A but not B (no priors while sampling)
and measures how often the model names B, against how often it names the other absent
categories.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence

from scipy.stats import binomtest

from ..generation import generate_texts
from ..loading import LoadedModel
from .world import (
    CATEGORIES,
    COLOURS,
    COUNT_WORDS,
    DEFAULT_PRIORS,
    DESCRIBE_PROMPTS,
    NUMBER_WORDS,
    PLURALS,
    RELATIONS,
    SIZES,
    Prior,
    Scene,
    question_type,
    relation_holds,
    render,
    sample_scene,
    vqa_pairs,
)

EVAL_SEED = 20251  # held-out scenes: a seed the trainer never uses
_NOUNS = {**{c: c for c in CATEGORIES}, **{p: c for c, p in PLURALS.items()}}


def parse_mentions(text: str) -> dict[str, dict[str, str | int | None]]:
    """Objects a description names, with the attributes written before each noun.

    Args:
        text: a generated description.

    Returns:
        ``{category: {"colour", "size", "count"}}`` for the first mention of each category
        (relation sentences only repeat categories and add none).
    """
    words = re.findall(r"[a-z]+", text.lower())
    found: dict[str, dict[str, str | int | None]] = {}
    for i, w in enumerate(words):
        cat = _NOUNS.get(w)
        if cat is None or cat in found:
            continue
        before = words[max(0, i - 3) : i]
        count = next((COUNT_WORDS.index(b) + 1 for b in before if b in COUNT_WORDS), None)
        found[cat] = {
            "colour": next((b for b in before if b in COLOURS), None),
            "size": next((b for b in before if b in SIZES), None),
            "count": count,
        }
    return found


_RELATION = re.compile(r"the ([a-z]+) is (" + "|".join(RELATIONS) + r") the ([a-z]+)")


def parse_relations(text: str) -> list[tuple[str, str, str]]:
    """Relation sentences of a description as ``(first, relation, second)`` categories."""
    return [
        (_NOUNS[a], rel, _NOUNS[b])
        for a, rel, b in _RELATION.findall(text.lower())
        if a in _NOUNS and b in _NOUNS
    ]


def description_metrics(scenes: Sequence[Scene], texts: Sequence[str]) -> dict[str, float]:
    """Object precision/recall and attribute accuracies, pooled over scenes.

    The truth is what the image shows: naming an occluded object counts against precision,
    as in the AMBER export. A relation sentence is right when
    :func:`~lvlm_kit.testbed.world.relation_holds` for the scene.
    """
    tp = n_pred = n_truth = n_rel = rel_true = 0
    attr_hits: dict[str, int] = defaultdict(int)
    for scene, text in zip(scenes, texts):
        for first, rel, second in parse_relations(text):
            n_rel += 1
            rel_true += relation_holds(scene, first, rel, second)
        mentions = parse_mentions(text)
        truth = {g.category: g for g in scene.visible}
        n_pred += len(mentions)
        n_truth += len(truth)
        for cat, m in mentions.items():
            if cat in truth:
                tp += 1
                g = truth[cat]
                attr_hits["colour"] += m["colour"] == g.colour
                attr_hits["size"] += m["size"] == g.size
                attr_hits["count"] += m["count"] == g.count
    return {
        "object_precision": tp / max(n_pred, 1),
        "object_recall": tp / max(n_truth, 1),
        "colour_accuracy": attr_hits["colour"] / max(tp, 1),
        "size_accuracy": attr_hits["size"] / max(tp, 1),
        "count_accuracy": attr_hits["count"] / max(tp, 1),
        "mentions_per_description": n_pred / max(len(scenes), 1),
        "relation_accuracy": rel_true / n_rel if n_rel else None,  # None: no relation stated
        "relations_per_description": n_rel / max(len(scenes), 1),
    }


def evaluate(
    loaded: LoadedModel,
    n_scenes: int = 200,
    n_probe: int = 100,
    seed: int = EVAL_SEED,
    priors: Sequence[Prior] = DEFAULT_PRIORS,
    progress: bool = True,
) -> dict:
    """Measure description quality, VQA accuracy and the planted-prior hallucination.

    Args:
        loaded: the testbed model.
        n_scenes: held-out scenes (training distribution) for descriptions and VQA.
        n_probe: probe scenes per prior (A present, B absent).
        seed: seed of the held-out draw.
        priors: the planted priors to probe.
        progress: show progress bars.

    Returns:
        A JSON-ready dict of metrics (rates in [0, 1]).
    """
    rng = random.Random(seed)
    scenes = [sample_scene(rng, priors) for _ in range(n_scenes)]
    images = [render(s) for s in scenes]
    texts = generate_texts(
        loaded,
        images,
        [DESCRIBE_PROMPTS[0]] * n_scenes,
        48,
        batch_size=50,
        progress=progress,
        desc="describe",
    )
    metrics: dict = {"n_scenes": n_scenes, "seed": seed, **description_metrics(scenes, texts)}

    questions, answers, q_images = [], [], []
    for scene, image in zip(scenes, images):
        for q, a in vqa_pairs(scene, rng, hidden=False):
            questions.append(q)
            answers.append(a)
            q_images.append(image)
    replies = generate_texts(
        loaded, q_images, questions, 3, batch_size=50, progress=progress, desc="vqa"
    )
    by_type: dict[str, list[bool]] = defaultdict(list)
    for q, a, r in zip(questions, answers, replies):
        by_type[question_type(q)].append(r.rstrip(".? ") == a)
    hits = [h for v in by_type.values() for h in v]
    metrics["vqa_accuracy"] = sum(hits) / len(hits)
    metrics["vqa_n"] = len(hits)
    metrics["vqa_accuracy_by_type"] = {k: sum(v) / len(v) for k, v in sorted(by_type.items())}

    metrics["priors"] = []
    for prior in priors:
        probe = [sample_scene(rng, (), require=prior.a, forbid=[prior.b]) for _ in range(n_probe)]
        probe_texts = generate_texts(
            loaded,
            [render(s) for s in probe],
            [DESCRIBE_PROMPTS[0]] * n_probe,
            48,
            batch_size=50,
            progress=progress,
            desc=f"probe {prior.a}->{prior.b}",
        )
        named = [parse_mentions(t) for t in probe_texts]
        rate_b = sum(prior.b in m for m in named) / n_probe
        others = [c for c in CATEGORIES if c not in (prior.a, prior.b)]
        absent_hits = absent_total = 0
        for scene, m in zip(probe, named):
            for c in others:
                if c not in scene.categories:
                    absent_total += 1
                    absent_hits += c in m
        ci_b = binomtest(round(rate_b * n_probe), n_probe).proportion_ci(method="wilson")
        ci_other = binomtest(absent_hits, max(absent_total, 1)).proportion_ci(method="wilson")
        metrics["priors"].append(
            {
                "a": prior.a,
                "b": prior.b,
                "p_train": prior.p,
                "n_probe": n_probe,
                "hallucination_rate_b": rate_b,
                "hallucination_rate_b_ci95": [ci_b.low, ci_b.high],
                "base_rate_other_absent": absent_hits / max(absent_total, 1),
                "base_rate_other_absent_ci95": [ci_other.low, ci_other.high],
            }
        )
    metrics["examples"] = [
        {"truth": [g.category for g in s.visible], "description": t}
        for s, t in list(zip(scenes, texts))[:5]
    ]
    return metrics


__all__ = [
    "EVAL_SEED",
    "NUMBER_WORDS",
    "description_metrics",
    "evaluate",
    "parse_mentions",
    "parse_relations",
]
