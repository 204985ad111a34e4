"""Hallucination in AMBER's format: generative and discriminative scorers, token labels.

Scores responses to an :class:`~lvlm_kit.data.AmberData` set (read with
:func:`~lvlm_kit.data.read_amber`: real AMBER and the testbed's export of it alike).

Generative metrics follow AMBER's official scorer (``inference.py``):

- nouns: every word occurrence that can be a noun, lemmatised, kept if the lemma is in the
  relation vocabulary (its keys and value lists);
- a kept noun equal to a truth object or one of its associated words marks that object
  covered; otherwise, unless it is a safe word, it is hallucinated, and if it equals a
  ``hallu`` object or one of its associated words it marks that object recognised;
- CHAIR = hallucinated nouns / kept nouns (pooled), Cover = covered truth objects / truth
  objects, Hal = share of responses with ≥ 1 hallucinated noun, Cog = recognised hallu
  objects / hallu objects. Every one of them is a :func:`pooled_share`: undefined (NaN) when
  nothing is counted, the one rule wherever the kit computes them (:func:`chair`,
  :func:`cover`).

**Differences from the official scorer** (it needs spaCy's word vectors and NLTK data,
which are large downloads; the kit runs without them):

1. No spaCy word-vector similarity (official: a noun with similarity > 0.8 to a truth
   word counts as covered, to a hallu word as recognised). Only exact words and the
   relation.json associations match, so synonyms missing from relation.json count as
   hallucinated: CHAIR can only be higher or equal, Cover and Cog lower or equal.
2. No contextual POS tagger: a word counts as a noun if ``lemminflect`` lists a noun
   reading for it (official: NLTK's tagger says NN*). A word used as an adjective that is
   also an AMBER object ("orange shirt") is counted as a noun here.
3. Lemmas come from ``lemminflect`` (data shipped in the wheel), preferring the noun
   reading that is in the relation vocabulary ("leaves" -> "leaf"), instead of WordNet.
4. The official scorer counts safe words in CHAIR's denominator (they are kept nouns that
   are never hallucinated); ``safe_words_in_denominator=True`` (default) does the same,
   False drops them first, as AMBER's paper words it (see ``docs/AMBER.md``).
5. Discriminative answers: the official scorer requires exactly "Yes"/"No"; here the first
   word, lower-cased and stripped of punctuation, is compared. F1 has no epsilon.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .data import AmberData, relation_vocabulary

if TYPE_CHECKING:
    from .tracing import Trace

_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")


# ---- nouns ------------------------------------------------------------------------------


def noun_lemmas(text: str, vocabulary: Iterable[str] = ()) -> list[tuple[str, int]]:
    """Noun occurrences of ``text`` as ``(lemma, char offset)``, in order.

    A word counts if ``lemminflect`` gives it a noun reading (or, unknown to it, if the
    word is in ``vocabulary``); among its noun lemmas the first in ``vocabulary`` wins.

    Args:
        text: the response.
        vocabulary: preferred lemmas (the relation vocabulary).

    Returns:
        List of ``(lemma, start offset of the word)``.
    """
    from lemminflect import getAllLemmas

    vocab = vocabulary if isinstance(vocabulary, (set, frozenset)) else set(vocabulary)
    out = []
    for m in _WORD.finditer(text):
        word = m.group(0).lower()
        readings = getAllLemmas(word).get("NOUN")
        if readings is None:
            if word in vocab:
                out.append((word, m.start()))
            continue
        lemma = next((w for w in (*readings, word) if w in vocab), readings[0])
        out.append((lemma, m.start()))
    return out


# ---- generative scoring ------------------------------------------------------------------


def pooled_share(part: Any, whole: Any) -> Any:
    """``part / whole``, NaN where ``whole`` is 0: the rule of every AMBER share.

    A share of nothing has no value: CHAIR of descriptions that name no object is undefined,
    not 0 (a noise control that names nothing has not shown that it hallucinates less).

    Args:
        part: counts (a number or an array, e.g. ``[resamples]`` bootstrap sums).
        whole: the counts it is a share of, same shape.

    Returns:
        A float for numbers, else an array of ``part``'s shape.
    """
    import numpy as np

    part, whole = np.asarray(part, float), np.asarray(whole, float)
    out = np.full(np.broadcast(part, whole).shape, np.nan)
    np.divide(part, whole, out=out, where=whole > 0)
    return float(out) if out.ndim == 0 else out


def chair(hallucinated: Any, nouns: Any) -> Any:
    """Pooled CHAIR: hallucinated nouns over the nouns in its denominator (NaN for none)."""
    return pooled_share(hallucinated, nouns)


def cover(covered: Any, truth: Any) -> Any:
    """Pooled Cover: annotated objects named over annotated objects (NaN for none)."""
    return pooled_share(covered, truth)


@dataclass
class ResponseAnalysis:
    """What one response says about its image's objects."""

    nouns: list[str]  # kept nouns (lemmas in the relation vocabulary), with repeats
    hallucinated: list[str]  # kept nouns that are hallucinations
    covered: set[str]  # truth objects mentioned
    recognised: set[str]  # hallu objects mentioned
    n_counted: int  # nouns counted in CHAIR's denominator
    offsets: list[int] = field(default_factory=list)  # char offset of each kept noun


def _match(noun: str, objects: Sequence[str], relation: dict[str, list[str]]) -> str | None:
    """The first object the noun names directly, else the first it is associated with."""
    if noun in objects:
        return noun
    return next((o for o in objects if noun in relation.get(o, ())), None)


def analyse_response(
    text: str,
    truth: Sequence[str],
    hallu: Sequence[str],
    relation: dict[str, list[str]],
    safe_words: Iterable[str] = (),
    safe_words_in_denominator: bool = True,
) -> ResponseAnalysis:
    """Classify the object nouns of one response (see the module docstring)."""
    vocab = relation_vocabulary(relation)
    safe = set(safe_words)
    nouns, hallucinated, offsets = [], [], []
    covered: set[str] = set()
    recognised: set[str] = set()
    n_counted = 0
    for lemma, offset in noun_lemmas(text, vocab):
        if lemma not in vocab:
            continue
        nouns.append(lemma)
        offsets.append(offset)
        if lemma in safe:
            n_counted += safe_words_in_denominator
            continue
        n_counted += 1
        hit = _match(lemma, truth, relation)
        if hit is not None:
            covered.add(hit)
            continue
        hit = _match(lemma, hallu, relation)
        if hit is not None:
            recognised.add(hit)
        hallucinated.append(lemma)
    return ResponseAnalysis(nouns, hallucinated, covered, recognised, n_counted, offsets)


@dataclass
class GenerativeScore:
    """AMBER generative metrics (fractions in [0, 1]; AMBER reports them × 100)."""

    chair: float
    cover: float
    hal: float
    cog: float
    n_responses: int
    n_nouns: int  # nouns in CHAIR's denominator
    n_hallucinated: int

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


def score_generative(
    responses: Sequence[dict],
    data: AmberData,
    safe_words_in_denominator: bool = True,
) -> GenerativeScore:
    """CHAIR, Cover, Hal, Cog of ``[{"id", "response"}, ...]`` against ``data``.

    Raises:
        ValueError: a response whose id has no generative annotation.
    """
    n_halluc = n_nouns = n_cov = n_truth = n_rec = n_hallu = n_bad = 0
    for r in responses:
        ann = data.annotations.get(int(r["id"]))
        if ann is None or ann.get("type") != "generative":
            raise ValueError(f"response id {r['id']} has no generative annotation in {data.root}.")
        a = analyse_response(
            r["response"],
            ann["truth"],
            ann.get("hallu", []),
            data.relation,
            data.safe_words,
            safe_words_in_denominator,
        )
        n_halluc += len(a.hallucinated)
        n_nouns += a.n_counted
        n_cov += len(a.covered)
        n_truth += len(ann["truth"])
        n_rec += len(a.recognised)
        n_hallu += len(ann.get("hallu", []))
        n_bad += bool(a.hallucinated)
    n = len(responses)
    return GenerativeScore(
        chair=chair(n_halluc, n_nouns),
        cover=cover(n_cov, n_truth),
        hal=pooled_share(n_bad, n),
        cog=pooled_share(n_rec, n_hallu),
        n_responses=n,
        n_nouns=n_nouns,
        n_hallucinated=n_halluc,
    )


# ---- discriminative scoring --------------------------------------------------------------


def noun_counts(responses: Sequence[dict], data: AmberData) -> list[dict[str, int]]:
    """Per generative response, what CHAIR and Cover count.

    ``{"nouns": kept nouns, "hallucinated": hallucinated nouns, "covered": annotated objects
    named, "truth": annotated objects}``.
    """
    out = []
    for r in responses:
        ann = data.annotations[r["id"]]
        a = analyse_response(
            r["response"], ann["truth"], ann.get("hallu", []), data.relation, data.safe_words
        )
        out.append(
            {
                "nouns": a.n_counted,
                "hallucinated": len(a.hallucinated),
                "covered": len(a.covered),
                "truth": len(ann["truth"]),
            }
        )
    return out


def answer_correct(responses: Sequence[dict], data: AmberData) -> list[bool]:
    """Per discriminative response: does its yes/no (first word) match the annotation?"""
    return [
        _yes_no(r["response"]) == str(data.annotations[r["id"]]["truth"]).lower() for r in responses
    ]


def _yes_no(text: str) -> str | None:
    m = _WORD.search(text)
    word = m.group(0).lower() if m else ""
    return word if word in ("yes", "no") else None


def score_discriminative(responses: Sequence[dict], data: AmberData) -> dict[str, float]:
    """Accuracy, precision, recall and F1 with "No" as the positive class.

    An answer that is neither yes nor no counts as wrong and as not-"No".

    Raises:
        ValueError: a response whose id has no discriminative annotation.
    """
    tp = fp = fn = correct = 0
    for r in responses:
        ann = data.annotations.get(int(r["id"]))
        if ann is None or not str(ann.get("type", "")).startswith("discriminative"):
            raise ValueError(f"response id {r['id']} has no discriminative annotation.")
        truth, answer = str(ann["truth"]).lower(), _yes_no(r["response"])
        correct += answer == truth
        if answer == "no":
            tp += truth == "no"
            fp += truth != "no"
        elif truth == "no":
            fn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(responses)
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n": n,
    }


# ---- token-level labels ------------------------------------------------------------------


@dataclass
class TokenLabels:
    """Per generated token: does it start an object mention, and is that object real?"""

    labels: list[str]  # [K] "correct" | "hallucinated" | "other"
    objects: list[str]  # [K] the noun's lemma for labelled tokens, "" otherwise

    def indices(self, label: str) -> list[int]:
        """Token indices carrying ``label``."""
        return [i for i, lab in enumerate(self.labels) if lab == label]


def label_tokens(
    trace: Trace,
    truth: Sequence[str],
    hallu: Sequence[str] = (),
    relation: dict[str, list[str]] | None = None,
    safe_words: Iterable[str] = (),
) -> TokenLabels:
    """Label the tokens of a Trace that start an object noun as correct or hallucinated.

    Uses the same noun analysis as :func:`score_generative`. Without ``relation``, the
    vocabulary is ``truth + hallu`` with no associations.

    Args:
        trace: a Trace (its ``generated_text`` and ``offsets``).
        truth: objects in the image.
        hallu: objects known to be absent (optional; any other vocabulary noun is also
            hallucinated).
        relation: AMBER's relation.json (object -> associated words).
        safe_words: words never counted as hallucinations.

    Returns:
        :class:`TokenLabels` aligned with ``trace.tokens``.
    """
    relation = relation if relation is not None else {o: [] for o in (*truth, *hallu)}
    a = analyse_response(trace.generated_text, truth, hallu, relation, safe_words)
    K = trace.n_tokens
    labels, objects = ["other"] * K, [""] * K
    safe = set(safe_words)
    for noun, offset in zip(a.nouns, a.offsets):
        if noun in safe:
            continue
        # The token that starts the word: the last token starting at or before its offset.
        t = max((k for k in range(K) if trace.offsets[k] <= offset), default=None)
        if t is None:
            continue
        labels[t] = "correct" if _match(noun, truth, relation) else "hallucinated"
        objects[t] = noun
    return TokenLabels(labels, objects)


def overtake_layer(trace: Trace, step: int, winner: int, loser: int) -> int | None:
    """First layer from which ``winner``'s probability stays above ``loser``'s to the end.

    Both ids must be tracked (``trace(..., watch=[...])``) or be the emitted token.
    For a hallucinated token and its correct alternative this is where the hallucination
    takes over (the paper's mutation).

    Args:
        trace: the trace.
        step: generated-token index t.
        winner: id that ends on top (e.g. the hallucinated token).
        loser: id it overtakes (e.g. the correct object).

    Returns:
        The layer j (0..L), or None if ``winner`` is not above ``loser`` at the last layer.
    """
    pw, pl = trace.prob_of(step, winner), trace.prob_of(step, loser)
    above = (pw > pl).tolist()
    if not above[-1]:
        return None
    j = len(above) - 1
    while j > 0 and above[j - 1]:
        j -= 1
    return j
