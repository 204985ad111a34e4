"""The lens on the image tokens: what each patch of the image decodes to, layer by layer.

The paper decodes generated tokens only. :func:`image_token_lens` runs the prompt once
(one forward pass, no generation) and decodes the residual stream at every image-token
position of every lens layer with the same float32 :class:`~lvlm_kit.lens.Lens`: per
(layer, patch) the top-k tokens, the probability of chosen words (every category and
colour word, say), and the rank of a true word per patch where one is known (the testbed
knows which object sits in each of its 36 cells). Vocabulary-sized work is done a chunk
of patches at a time, as in :func:`~lvlm_kit.tracing.trace`; ``[layers, patches, vocabulary]``
is never held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .inputs import ImageLike, prepare_inputs
from .lens import NormPolicy, check_norm_policy
from .loading import LoadedModel
from .surgery import ResidualRecorder
from .tracing import word_token_id


@dataclass
class PatchLens:
    """The lens over the image tokens of one prompt, at every lens layer 0..L."""

    positions: torch.Tensor  # [P] prompt positions of the image tokens
    grid: tuple[int, int] | None  # (rows, cols) when the P patches form a square grid
    topk_ids: torch.Tensor  # [L+1, P, k] token ids, most probable first
    topk_probs: torch.Tensor  # [L+1, P, k]
    words: list[str]  # the chosen words
    word_ids: torch.Tensor  # [W] their (first) token ids
    word_probs: torch.Tensor  # [L+1, P, W] probability of each chosen word
    true_rank: torch.Tensor | None  # [L+1, P] rank of each patch's true word (-1: none)
    lens_norm: str

    @property
    def n_layers(self) -> int:
        """L (the lens has L + 1 layers, 0 the embeddings)."""
        return self.topk_ids.shape[0] - 1

    def top_word(self, layer: int) -> list[str]:
        """Per patch, the chosen word with the highest probability at ``layer``."""
        best = self.word_probs[layer].argmax(-1).tolist()
        return [self.words[i] for i in best]

    def true_word_prob(self, layer: int, truth: Sequence[str | None]) -> torch.Tensor:
        """``[P]`` probability of each patch's true word at ``layer`` (0 where truth is None)."""
        return torch.tensor(
            [
                float(self.word_probs[layer, p, self.words.index(t)]) if t else 0.0
                for p, t in enumerate(truth)
            ]
        )

    def as_grid(self, values: torch.Tensor) -> torch.Tensor:
        """``[..., P]`` values as ``[..., rows, cols]``.

        Raises:
            ValueError: the patches do not form a square grid.
        """
        if self.grid is None:
            raise ValueError(f"{len(self.positions)} image tokens do not form a square grid.")
        return values.reshape(*values.shape[:-1], *self.grid)


@torch.inference_mode()
def image_token_lens(
    loaded: LoadedModel,
    image: ImageLike,
    prompt: str,
    words: Sequence[str] = (),
    truth: Sequence[str | None] | None = None,
    top_k: int = 5,
    lens_norm: NormPolicy = "final_norm",
    chunk_mb: float = 64.0,
) -> PatchLens:
    """Decode every image token of the prompt at every layer (one forward pass).

    Args:
        loaded: an image-text model from :func:`~lvlm_kit.loading.load_model`.
        image: path / PIL / array.
        prompt: the instruction (the image tokens are those the processor inserts for it).
        words: words whose probability to keep at every (layer, patch); their first token.
        truth: per image token (``P`` entries, in the prompt's order), the word that is
            true there, or None where nothing is (e.g. an empty cell).
        top_k: candidates kept per (layer, patch).
        lens_norm: ``"final_norm"`` (default) or ``"raw"``.
        chunk_mb: memory budget of the vocabulary-sized work arrays.

    Returns:
        The :class:`PatchLens`.

    Raises:
        ValueError: no image tokens in the prompt (a text model, or no image), a ``truth``
            of the wrong length, or a word the vocabulary cannot encode.
    """
    check_norm_policy(lens_norm)
    inputs, _ = prepare_inputs(loaded, image, prompt)
    ids = inputs["input_ids"][0].cpu()
    mask = loaded.anatomy.image_positions(ids)
    if mask is None or not bool(mask.any()):
        raise ValueError(
            "the prompt holds no image token: image_token_lens needs an image-text model and "
            "an image."
        )
    positions = mask.nonzero().flatten()
    P = len(positions)
    if truth is not None and len(truth) != P:
        raise ValueError(f"truth has {len(truth)} entries for {P} image tokens; give one each.")
    lens = loaded.lens(lens_norm)
    V = lens.vocab_size
    tok = loaded.tokenizer
    word_ids = torch.tensor([word_token_id(tok, w, V) for w in words], dtype=torch.long)
    true_ids = None
    if truth is not None:
        true_ids = torch.tensor([-1 if w is None else word_token_id(tok, w, V) for w in truth])
    with ResidualRecorder(loaded.anatomy, device=lens.device, all_positions=True) as rec:
        loaded.model(**inputs)
    hidden = rec.stacked()[0][:, positions.to(lens.device)]  # [L+1, P, d]
    L1 = hidden.shape[0]
    rows = max(1, int(chunk_mb * 2**20 // (V * 4 * 2)))  # logits and log-probs of a chunk
    k = min(top_k, V)
    topk_ids = torch.empty(L1, P, k, dtype=torch.long)
    topk_probs = torch.empty(L1, P, k)
    word_probs = torch.empty(L1, P, len(word_ids))
    true_rank = None if true_ids is None else torch.full((L1, P), -1, dtype=torch.long)
    for j in range(L1):
        for s in range(0, P, rows):
            lp = lens.log_probs(hidden[j, s : s + rows], layer=j)  # [c, V]
            values, indices = lp.topk(k, dim=-1)
            topk_ids[j, s : s + rows] = indices.cpu()
            topk_probs[j, s : s + rows] = values.exp().cpu()
            word_probs[j, s : s + rows] = lp[:, word_ids.to(lp.device)].exp().cpu()
            if true_ids is not None:
                t = true_ids[s : s + rows].to(lp.device)
                known = t >= 0
                own = lp.gather(1, t.clamp_min(0)[:, None])  # [c, 1]
                rank = (lp > own).sum(-1)
                true_rank[j, s : s + rows] = torch.where(known, rank, -1).cpu()
    side = math.isqrt(P)
    return PatchLens(
        positions=positions,
        grid=(side, side) if side * side == P else None,
        topk_ids=topk_ids,
        topk_probs=topk_probs,
        words=list(words),
        word_ids=word_ids,
        word_probs=word_probs,
        true_rank=true_rank,
        lens_norm=lens_norm,
    )


def patch_accuracy(
    lenses: Sequence[PatchLens], truths: Sequence[Sequence[str | None]], words: Sequence[str]
) -> np.ndarray:
    """Per image and layer: the share of patches with a true word whose top word is it.

    The top word is the most probable of ``words`` (which must be among each lens's chosen
    words); patches whose truth is None (empty cells) are left out.

    Args:
        lenses: one :class:`PatchLens` per image.
        truths: per image, the true word of each patch, or None.
        words: the candidate words (e.g. the 12 categories).

    Returns:
        ``[images, L+1]`` accuracies (NaN for an image with no known patch).
    """
    out = []
    for pl, truth in zip(lenses, truths):
        cols = [pl.words.index(w) for w in words]
        best = pl.word_probs[:, :, cols].argmax(-1)  # [L+1, P]
        known = [i for i, t in enumerate(truth) if t is not None]
        want = torch.tensor([words.index(truth[i]) for i in known])
        hit = (
            (best[:, known] == want).double().mean(-1)
            if known
            else torch.full((len(best),), math.nan)
        )
        out.append(hit.numpy())
    return np.stack(out)


@dataclass
class PatchAccuracy:
    """Per image and lens layer, the share of a model's patches decoding to their object."""

    accuracy: np.ndarray  # [images, L+1]
    chance: float  # 1 / the number of candidate words

    @property
    def mean(self) -> np.ndarray:
        """``[L+1]`` mean accuracy over the images (images without a known patch left out)."""
        return np.nanmean(self.accuracy, 0)

    @property
    def best_layer(self) -> int:
        """The lens layer with the highest mean accuracy."""
        return int(np.nanargmax(self.mean))

    def first_layer_above_chance(
        self, rng: np.random.Generator | int = 0, n_boot: int = 500
    ) -> int | None:
        """The first lens layer whose mean accuracy's 95% band (images resampled) is above chance.

        Args:
            rng: a generator (drawn from in turn) or a seed.
            n_boot: bootstrap resamples.

        Returns:
            The layer, or None when no layer's band clears chance.
        """
        from .claims.core import bootstrap_band  # claims imports this module

        acc = self.accuracy
        low, _ = bootstrap_band(
            len(acc), lambda idx: np.nanmean(acc[idx], 0), n_boot, rng, ignore_nan=True
        )
        return next((j for j in range(len(low)) if low[j] > self.chance), None)


def cell_accuracy(
    lenses: Sequence[PatchLens],
    cells: Sequence[Sequence[tuple[str, ...] | None]],
    candidates: Mapping[str, Sequence[str]],
) -> dict[str, PatchAccuracy]:
    """:func:`patch_accuracy` of each kind of truth a cell holds (its category, its colour).

    Args:
        lenses: one :class:`PatchLens` per image.
        cells: per image, per patch, the cell's truth tuple (``(category, colour)`` on the
            testbed, :func:`~lvlm_kit.data.cell_truth`) or None for an empty cell.
        candidates: kind -> its candidate words, in the order of the truth tuple.

    Returns:
        Kind -> its :class:`PatchAccuracy` (chance: one over the number of candidates).
    """
    out = {}
    for i, (kind, words) in enumerate(candidates.items()):
        truth = [[c[i] if c else None for c in image] for image in cells]
        out[kind] = PatchAccuracy(patch_accuracy(lenses, truth, list(words)), 1 / len(words))
    return out


def neighbours(cells: Sequence[int], side: int) -> set[int]:
    """Grid cells next to any of ``cells`` (diagonals included), ``cells`` left out."""
    near = set()
    for c in cells:
        r, col = divmod(c, side)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, col + dc
                if 0 <= rr < side and 0 <= cc < side:
                    near.add(rr * side + cc)
    return near - set(cells)


def word_near(
    lenses: Sequence[PatchLens], cells: Sequence[Sequence[int]], word: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per image and layer, the mean probability of ``word`` next to some cells and elsewhere.

    Args:
        lenses: one :class:`PatchLens` per image (square grids; ``word`` among their words).
        cells: per image, the cells to look around (e.g. where the boat is).
        word: the word (e.g. "fish").

    Returns:
        ``(near, elsewhere)``, each ``[images, L+1]``: the mean over the patches next to the
        cells, and over the patches that are neither those cells nor next to them.
    """
    near, far = [], []
    for pl, own in zip(lenses, cells):
        p = pl.word_probs[:, :, pl.words.index(word)].double()  # [L+1, P]
        around = sorted(neighbours(own, pl.grid[0]))
        rest = sorted(set(range(p.shape[1])) - set(own) - set(around))
        near.append(p[:, around].mean(-1).numpy())
        far.append(p[:, rest].mean(-1).numpy())
    return np.stack(near), np.stack(far)


@dataclass
class PriorProbe:
    """A word's probability in the image tokens of scenes with and without an anchor object.

    Each array is ``[scenes, L+1]``, the mean over the patches named.
    """

    near: np.ndarray  # anchor scenes: the patches next to the anchor
    elsewhere: np.ndarray  # anchor scenes: the patches neither on nor next to it
    without: np.ndarray  # scenes without the anchor: every patch

    def layers_higher_near(
        self, rng: np.random.Generator | int = 0, n_boot: int = 1000
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Lens layers where near minus elsewhere is above zero (95% band, scenes resampled).

        Returns:
            ``(layers, low, high)``: the layers, and the band ``[L+1]`` of the mean difference.
        """
        from .claims.core import bootstrap_band  # claims imports this module

        difference = self.near - self.elsewhere
        low, high = bootstrap_band(
            len(difference), lambda idx: difference[idx].mean(0), n_boot, rng
        )
        return [j for j in range(len(low)) if low[j] > 0], low, high


def prior_probe(
    lenses: Sequence[PatchLens],
    cells: Sequence[Sequence[tuple[str, ...] | None]],
    anchor: str,
    word: str,
) -> PriorProbe:
    """Does ``word`` (a planted prior's B, "fish") light up next to ``anchor`` (its A, "boat")?

    Args:
        lenses: one :class:`PatchLens` per scene (square grids; ``word`` among their words).
        cells: per scene, per patch, the truth tuple whose first entry is the category.
        anchor: the category whose neighbours are looked at.
        word: the word whose probability is read.
    """
    has = [i for i, c in enumerate(cells) if any(x and x[0] == anchor for x in c)]
    others = [i for i in range(len(cells)) if i not in has]
    at = [[p for p, x in enumerate(cells[i]) if x and x[0] == anchor] for i in has]
    near, elsewhere = word_near([lenses[i] for i in has], at, word)
    without = [
        lenses[i].word_probs[:, :, lenses[i].words.index(word)].double().mean(-1).numpy()
        for i in others
    ]
    return PriorProbe(near, elsewhere, np.stack(without))
