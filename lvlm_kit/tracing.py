"""One greedy generation, reduced layer by layer: the :class:`Trace`.

:func:`trace` generates once with ``generate()`` (KV cache, greedy) while recording the
residual stream at the predicting position of every step (``[L+1, d]`` a step). The float32
:class:`~lvlm_kit.lens.Lens` decodes the steps a chunk at a time and :class:`StepReducer`
keeps only small per-(token, layer) reductions. When the residuals of ``max_new_tokens``
steps fit in ``chunk_mb`` they are reduced after the generation; otherwise each chunk is
reduced during it, as soon as its tokens are known, and then freed. ``[K, L+1, V]`` is never
held: the memory trace adds is bounded by ``chunk_mb``-sized arrays whatever the number of
tokens.

A Trace on disk (one safetensors file, written atomically) is enough to redo every figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from . import trace_file
from .divergence import entropy, js_divergence, js_divergence_dola
from .generation import check_lengths, greedy_config
from .inputs import ImageLike, prepare_inputs
from .lens import Lens, NormPolicy, check_norm_policy
from .loading import LoadedModel
from .surgery import ResidualRecorder, skip_layers
from .trace_file import TraceFileError


@dataclass
class Trace:
    """Per generated token t (K of them) and per layer j = 0..L (L decoder layers)."""

    model_name: str  # id or folder of the model
    lens_norm: str  # "final_norm" or "raw": the lens policy used for every array below
    prompt: str  # the user's instruction
    prompt_text: str  # the templated prompt given to the processor
    generated_text: str  # decoded generation (special tokens removed)
    tokens: list[str]  # [K] decoded generated tokens
    vocab: dict[int, str]  # decoded strings of every id that appears in token_ids / topk_ids
    token_ids: torch.Tensor  # [K] int64 generated ids (== plain greedy generate)
    topk_ids: torch.Tensor  # [K, L+1, k] int64 top-k ids of the lens at each layer
    topk_probs: torch.Tensor  # [K, L+1, k] float32 their probabilities
    token_prob: torch.Tensor  # [K, L+1] float32 probability of the emitted token
    token_rank: torch.Tensor  # [K, L+1] int64 rank of the emitted token (0 = top-1)
    entropy: torch.Tensor  # [K, L+1] float32 entropy (nats) of the lens distribution
    js: torch.Tensor  # [K, L] float32 JSD(p_j, p_{j+1}) in nats, in [0, ln 2]
    prompt_ids: torch.Tensor  # [S] int64 prompt ids (image placeholders expanded)
    image_positions: torch.Tensor  # [S] bool, True at image tokens
    offsets: list[int] = field(default_factory=list)  # [K] char start of token t in generated_text
    watch_ids: torch.Tensor | None = None  # [W] ids whose probabilities were tracked
    watch_probs: torch.Tensor | None = None  # [K, L+1, W] float32 their probability per layer
    js_dola: torch.Tensor | None = None  # [K, L] float64 dola_compat variant, if asked
    hidden: torch.Tensor | None = None  # [K, L+1, d] residual stream, if keep_hidden
    meta: dict[str, Any] = field(default_factory=dict)  # generation settings, versions

    @property
    def n_tokens(self) -> int:
        """K, the number of generated tokens."""
        return int(self.token_ids.shape[0])

    @property
    def n_layers(self) -> int:
        """L, the number of decoder layers (arrays have L + 1 layer entries)."""
        return int(self.token_prob.shape[1]) - 1

    def decode(self, token_id: int) -> str:
        """String of an id seen in this trace."""
        return self.vocab[int(token_id)]

    def prob_of(self, step: int, token_id: int, from_topk: bool = False) -> torch.Tensor:
        """Probability of ``token_id`` at generated token ``step``, at every layer.

        Exact for the emitted token and for watched ids (``trace(..., watch=[...])``).

        Args:
            step: generated-token index t.
            token_id: the token.
            from_topk: for any other id, read the top-k lists instead (0 at layers where it
                is outside the top-k) rather than raising.

        Returns:
            ``[L+1]`` float32 probabilities.

        Raises:
            ValueError: the id was neither emitted at ``step`` nor watched, and not
                ``from_topk``.
        """
        if int(self.token_ids[step]) == token_id:
            return self.token_prob[step]
        if self.watch_ids is not None:
            hits = (self.watch_ids == token_id).nonzero()
            if len(hits):
                return self.watch_probs[step, :, int(hits[0])]
        if from_topk:
            return (self.topk_probs[step] * (self.topk_ids[step] == token_id)).sum(-1)
        raise ValueError(
            f"token id {token_id} was neither emitted at step {step} nor tracked; "
            "re-run trace(..., watch=[...]) including it."
        )

    def to_frame(self):
        """Long pandas frame: one row per (token, layer) with prob, rank, entropy, js."""
        import pandas as pd

        K, L1 = self.token_prob.shape
        js = torch.cat([self.js, torch.full((K, 1), float("nan"))], dim=1)
        return pd.DataFrame(
            {
                "token_index": np.repeat(np.arange(K), L1),
                "token": np.repeat(np.array(self.tokens, dtype=object), L1),
                "layer": np.tile(np.arange(L1), K),
                "prob": self.token_prob.reshape(-1).numpy(),
                "rank": self.token_rank.reshape(-1).numpy(),
                "entropy": self.entropy.reshape(-1).numpy(),
                "js_next": js.reshape(-1).numpy(),
                "top1": [self.vocab[int(i)] for i in self.topk_ids[:, :, 0].reshape(-1)],
            }
        )

    # ---- persistence -------------------------------------------------------------------
    _TENSORS = (
        "token_ids",
        "topk_ids",
        "topk_probs",
        "token_prob",
        "token_rank",
        "entropy",
        "js",
        "prompt_ids",
        "image_positions",
        "watch_ids",
        "watch_probs",
        "js_dola",
        "hidden",
    )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one ``.safetensors`` file, atomically (:mod:`.trace_file`)."""
        tensors = {n: getattr(self, n) for n in self._TENSORS if getattr(self, n) is not None}
        header = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._TENSORS
        }
        header["vocab"] = {str(k): v for k, v in self.vocab.items()}
        return trace_file.write(path, tensors, header)

    @staticmethod
    def read_meta(path: str | os.PathLike) -> dict[str, Any]:
        """The ``meta`` dict of a saved trace, without reading its arrays.

        Raises:
            TraceFileError: not a readable trace file.
        """
        return trace_file.read_meta(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            TraceFileError: the file is truncated, corrupt, not a trace, or its fields are
                not this class's.
        """
        header, tensors = trace_file.read(path)
        names = {f.name for f in fields(cls)} - set(cls._TENSORS)
        required = {
            f.name
            for f in fields(cls)
            if f.name in names and f.default is MISSING and f.default_factory is MISSING
        }
        unknown, missing = sorted(set(header) - names), sorted(required - set(header))
        if unknown:
            raise TraceFileError(
                f"'{path}' has header fields {unknown} that this lvlm_kit does not know: it was "
                "written by a newer version. Upgrade lvlm-kit, or re-create the trace."
            )
        if missing:
            raise TraceFileError(f"'{path}' has a damaged header: {missing} missing; re-create it.")
        try:
            header["vocab"] = {int(k): v for k, v in header["vocab"].items()}
        except (AttributeError, TypeError, ValueError):
            raise TraceFileError(
                f"'{path}' has a damaged vocab in its header; re-create it."
            ) from None
        missing = [n for n in cls._TENSORS[:9] if n not in tensors]
        if missing:
            raise TraceFileError(f"'{path}' lacks arrays {missing}; re-create it.")
        return cls(**header, **tensors)


# ---- computing a trace -----------------------------------------------------------------


def word_token_id(tokenizer: Any, word: str, vocab_size: int) -> int:
    """The id of the first token ``word`` encodes to: how the kit watches a word.

    Args:
        tokenizer: the model's tokenizer.
        word: a word, encoded without special tokens.
        vocab_size: the lens's vocabulary size ``V``.

    Returns:
        A token id in ``0..V-1``.

    Raises:
        ValueError: the word encodes to no token, to the unknown token, or to an id
            outside the vocabulary.
    """
    pieces = tokenizer.encode(word, add_special_tokens=False)
    if not pieces:
        raise ValueError(f"word {word!r} encodes to no token.")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and pieces[0] == unk:
        raise ValueError(
            f"word {word!r} is not in the model's vocabulary (it encodes to the unknown "
            f"token {tokenizer.unk_token!r}); use a word the model knows, or a token id."
        )
    if not 0 <= int(pieces[0]) < vocab_size:
        raise ValueError(
            f"word {word!r} encodes to id {pieces[0]}, outside the vocabulary "
            f"(0..{vocab_size - 1})."
        )
    return int(pieces[0])


def _watch_ids(tokenizer: Any, watch: Sequence[int | str], vocab_size: int) -> torch.Tensor:
    ids = []
    for item in watch:
        if isinstance(item, str):
            item = word_token_id(tokenizer, item, vocab_size)
        if not 0 <= int(item) < vocab_size:
            raise ValueError(f"watch id {item} is outside the vocabulary (0..{vocab_size - 1}).")
        ids.append(int(item))
    return torch.tensor(ids, dtype=torch.long)


def _decode_with_offsets(tokenizer: Any, ids: list[int], window: int = 8) -> tuple[str, list[int]]:
    """Decoded text and each token's start offset in it.

    Token k's characters are what decoding ``ids[a:k+1]`` adds to decoding ``ids[a:k]``,
    with ``a`` ``window`` tokens back: linear in K. Where that does not simply extend the
    text (a multi-byte character completed, spaces cleaned up), or the pieces do not add up
    to the whole decoded text, the offsets are taken from decoding every prefix instead.
    """
    offsets, text = [], ""
    for k in range(len(ids)):
        a = max(0, k - window)
        head = tokenizer.decode(ids[a:k], skip_special_tokens=True)
        tail = tokenizer.decode(ids[a : k + 1], skip_special_tokens=True)
        if not tail.startswith(head):
            return _decode_prefixes(tokenizer, ids)
        added = tail[len(head) :]
        offsets.append(len(text) + (len(added) - len(added.lstrip())))
        text += added
    if text != tokenizer.decode(ids, skip_special_tokens=True):
        return _decode_prefixes(tokenizer, ids)
    return text, offsets


def _decode_prefixes(tokenizer: Any, ids: list[int]) -> tuple[str, list[int]]:
    """:func:`_decode_with_offsets` by decoding every prefix (quadratic in K, always exact)."""
    offsets, previous = [], ""
    for k in range(len(ids)):
        text = tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
        # Where this token's characters begin: after the common prefix with the text so far.
        common = len(previous)
        while common and not text.startswith(previous[:common]):
            common -= 1
        added = text[common:]
        offsets.append(common + (len(added) - len(added.lstrip())))
        previous = text
    return previous, offsets


def topk_last(x: torch.Tensor, k: int, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=-1)`` for a long last dimension, computed through block maxima.

    The k largest entries of a row lie in the k blocks of ``block`` entries with the largest
    maxima, so only those k blocks are searched: a cheap max-reduction over the row, then a
    top-k over ``k * block`` candidates instead of all of them. Same values and indices as
    ``torch.topk`` (ties may be ordered differently).

    Args:
        x: ``[..., V]`` values, contiguous in the last dimension.
        k: how many to keep.
        block: entries per block.

    Returns:
        ``(values, indices)``, each ``[..., k]``, sorted by decreasing value.
    """
    V = x.shape[-1]
    n_full = V // block
    if n_full < 4 * k:  # short rows: the plain top-k is as fast
        return x.topk(k, dim=-1)
    rows = x.reshape(-1, V)
    maxima = rows[:, : n_full * block].view(-1, n_full, block).amax(-1)  # [R, n_full]
    if V % block:
        maxima = torch.cat([maxima, rows[:, n_full * block :].amax(-1, keepdim=True)], 1)
    blocks = maxima.topk(k, dim=-1).indices  # [R, k]
    cand = (blocks[..., None] * block + torch.arange(block, device=x.device)).reshape(len(rows), -1)
    values = rows.gather(1, cand.clamp_max(V - 1))
    values.masked_fill_(cand >= V, float("-inf"))  # the short last block's missing entries
    top, where = values.topk(k, dim=-1)
    return top.view(*x.shape[:-1], k), cand.gather(1, where).view(*x.shape[:-1], k)


def chunk_steps(chunk_mb: float, n_lens_layers: int, vocab_size: int) -> int:
    """Steps decoded together by :class:`StepReducer` within ``chunk_mb`` of work arrays.

    A chunk of c steps holds its logits ``[L+1, c, V]`` and, for the layer being reduced,
    six float32 ``[c, V]`` arrays: this and the previous layer's log-probabilities and
    probabilities, and the JS divergence's two.
    """
    return max(1, int(chunk_mb * 2**20 // (4 * (n_lens_layers + 6) * vocab_size)))


class StepReducer:
    """Decodes residuals with the lens a chunk of steps at a time and keeps only reductions.

    Each chunk's heads run as one product (``[L+1, c, d] @ [d, V]``); then, layer by layer,
    one log-softmax and one ``exp`` serve every reduction: entropy, the JS divergence to the
    previous layer, the emitted token's probability and rank, the top-k and the watched
    probabilities. Only one layer's ``[c, V]`` arrays (and the previous layer's) exist at once.

    Args:
        lens: the float32 lens.
        top_k: how many top candidates to keep per layer.
        dola_compat: also compute the DoLa-code JS variant (float64).
        watch_ids: ``[W]`` ids whose probability to keep at every (step, layer).
    """

    def __init__(
        self,
        lens: Lens,
        top_k: int = 10,
        dola_compat: bool = False,
        watch_ids: torch.Tensor | None = None,
    ) -> None:
        self.lens, self.top_k, self.dola_compat = lens, top_k, dola_compat
        self.watch_ids = None if watch_ids is None else watch_ids.to(lens.device)
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.n_steps = 0

    @torch.inference_mode()
    def add(self, residuals: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Reduce one chunk of steps.

        Args:
            residuals: ``[c, L+1, d]`` residual stream at each predicting position.
            token_ids: ``[c]`` the emitted token of each step.
        """
        with record_function("lvlm_kit.lens"):
            h = self.lens.normed(residuals).transpose(0, 1).contiguous()  # [L+1, c, d]
            logits = self.lens.unembed(h)  # [L+1, c, V]
        emitted = token_ids.to(self.lens.device)[:, None]  # [c, 1]
        rows: dict[str, list[torch.Tensor]] = {}
        prev: tuple[torch.Tensor, torch.Tensor] | None = None
        for j in range(len(logits)):
            with record_function("lvlm_kit.lens"):
                logp = torch.log_softmax(logits[j], dim=-1)  # [c, V]
            with record_function("lvlm_kit.reduce"):
                p = logp.exp()
                tok_logp = logp.gather(-1, emitted)  # [c, 1]
                top_lp, top_ids = topk_last(logp, self.top_k)
                row = {
                    "topk_ids": top_ids,
                    "topk_probs": top_lp.exp(),
                    "token_prob": tok_logp[:, 0].exp(),
                    # How many entries exceed the token's: a float sign test and sum (exact:
                    # a - b > 0 iff a > b, counts < 2**24), twice as fast as a bool compare.
                    "token_rank": torch.sub(logp, tok_logp).gt_(0).sum(-1).long(),
                    "entropy": entropy(logp, p),
                }
                if prev is not None:
                    row["js"] = js_divergence(prev[0], logp, prev[1], p)
                    if self.dola_compat:
                        row["js_dola"] = js_divergence_dola(prev[0], logp)
                if self.watch_ids is not None:
                    row["watch_probs"] = p[:, self.watch_ids]
                for key, value in row.items():
                    rows.setdefault(key, []).append(value)
                prev = (logp, p)
        del logits, prev
        for key, values in rows.items():  # each [c, ...] per layer -> [c, L+1 (or L), ...]
            self.parts.setdefault(key, []).append(torch.stack(values, dim=1).cpu())
        self.n_steps += len(token_ids)

    def result(self) -> dict[str, torch.Tensor]:
        """Every chunk's reductions, concatenated over steps (see :func:`reduce_steps`)."""
        return {key: torch.cat(values) for key, values in self.parts.items()}


def reduce_steps(
    lens: Lens,
    residuals: torch.Tensor,
    token_ids: torch.Tensor,
    top_k: int = 10,
    dola_compat: bool = False,
    chunk_mb: float = 64.0,
    watch_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Decode residuals with the lens and reduce them per (step, layer), chunk by chunk.

    Args:
        lens: the float32 lens.
        residuals: ``[K, L+1, d]`` residual stream at each predicting position.
        token_ids: ``[K]`` the emitted token of each step.
        top_k: how many top candidates to keep per layer.
        dola_compat: also compute the DoLa-code JS variant (float64).
        chunk_mb: memory budget of one chunk's work arrays (:func:`chunk_steps`).
        watch_ids: ``[W]`` ids whose probability to keep at every (step, layer).

    Returns:
        Dict of CPU tensors: ``topk_ids``/``topk_probs`` ``[K, L+1, k]``, ``token_prob``,
        ``token_rank``, ``entropy`` ``[K, L+1]``, ``js`` (and ``js_dola``) ``[K, L]``,
        ``watch_probs`` ``[K, L+1, W]`` when ``watch_ids`` is given.
    """
    K, L1, _ = residuals.shape
    chunk = chunk_steps(chunk_mb, L1, lens.vocab_size)
    reducer = StepReducer(lens, top_k, dola_compat, watch_ids)
    for start in range(0, K, chunk):
        reducer.add(residuals[start : start + chunk], token_ids[start : start + chunk])
    return reducer.result()


class _ReduceWhileGenerating(StoppingCriteria):
    """Reduces recorded steps during ``generate()`` when they would outgrow the budget.

    ``generate()`` calls it after each step with the ids so far. After the first step it
    knows a step's size: if ``max_steps`` of them fit in ``budget`` bytes, every step is kept
    and reduced after the generation; otherwise each chunk of ``chunk`` steps is reduced as
    soon as its tokens are known and its residuals are dropped, so that the memory held stays
    the same for any number of tokens. It never stops the generation.
    """

    def __init__(
        self,
        recorder: ResidualRecorder,
        reducer: StepReducer,
        prompt_len: int,
        chunk: int,
        max_steps: int,
        budget: float,
        keep: bool,
    ) -> None:
        self.recorder, self.reducer, self.prompt_len = recorder, reducer, prompt_len
        self.chunk, self.max_steps, self.budget, self.keep = chunk, max_steps, budget, keep
        self.streaming: bool | None = None  # decided after the first step

    def reduce(self, token_ids: torch.Tensor, final: bool = False) -> None:
        """Reduce every whole chunk of recorded steps with known tokens (all, if ``final``)."""
        known = min(len(self.recorder.steps), len(token_ids))
        while known - self.reducer.n_steps >= (1 if final else self.chunk):
            start = self.reducer.n_steps
            stop = min(start + self.chunk, known)
            self.reducer.add(self.recorder.stacked(start, stop), token_ids[start:stop])
            if not self.keep:
                self.recorder.drop(stop)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self.streaming is None:
            step_bytes = self.recorder.steps[0].nbytes
            self.streaming = not self.keep and self.max_steps * step_bytes > self.budget
        if self.streaming:
            with record_function("lvlm_kit.stream"):
                self.reduce(input_ids[0, self.prompt_len :])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _Force(LogitsProcessor):
    """Makes greedy decoding emit the given tokens (teacher forcing inside ``generate``)."""

    def __init__(self, prompt_len: int, token_ids: torch.Tensor) -> None:
        self.prompt_len, self.token_ids = prompt_len, token_ids.tolist()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        forced = self.token_ids[input_ids.shape[1] - self.prompt_len]
        out = torch.full_like(scores, -math.inf)
        out[:, forced] = 0.0
        return out


@torch.inference_mode()
def trace(
    loaded: LoadedModel,
    image: ImageLike | None,
    prompt: str,
    max_new_tokens: int = 64,
    *,
    lens_norm: NormPolicy = "final_norm",
    top_k: int = 10,
    keep_hidden: bool = False,
    dola_compat: bool = False,
    chunk_mb: float = 64.0,
    watch: Sequence[int | str] = (),
    skip: Sequence[int] = (),
    force: Sequence[int] | torch.Tensor | None = None,
) -> Trace:
    """Generate greedily once and reduce every layer's early-exit distribution per token.

    Args:
        loaded: from :func:`~lvlm_kit.loading.load_model`.
        image: path / PIL / array, or None for text only.
        prompt: the instruction, e.g. "Please describe this image in detail."
        max_new_tokens: generation length limit K_max.
        lens_norm: ``"final_norm"`` (default) or ``"raw"`` (the authors' code).
        top_k: top candidates kept per (token, layer).
        keep_hidden: also keep the residual stream ``[K, L+1, d]`` (for features); memory
            then grows with K.
        dola_compat: also compute the DoLa-code JS variant.
        chunk_mb: memory budget (MB) for the lens's work arrays (:func:`chunk_steps` sets how
            many steps are reduced together) and for the recorded residuals: when
            ``max_new_tokens`` steps of them do not fit, they are reduced during the
            generation, a chunk at a time, and freed.
        watch: tokens (ids, or words whose first token is used) whose probability to track
            at every step and layer, e.g. the correct object of a hallucination.
        skip: decoder layers (0..L-1) removed from the forward pass while generating
            (:func:`~lvlm_kit.surgery.skip_layers`); their lens entries repeat their input.
        force: token ids ``[K]`` to emit instead of the greedy choice (teacher forcing:
            e.g. another model's ``Trace.token_ids``, so that a noise control is read on the
            same words); ``max_new_tokens`` must be at least ``K``, and exactly ``K`` tokens
            are generated. The lens is computed as always, from the residual stream.

    Returns:
        The :class:`Trace`.

    Raises:
        ValueError: ``force`` is empty, longer than ``max_new_tokens`` or holds an id outside
            the vocabulary.
    """
    check_norm_policy(lens_norm)
    check_lengths(loaded, 0, max_new_tokens)
    vocab_size = loaded.anatomy.vocab_size
    if not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise ValueError(
            f"top_k must be an int in 1..{vocab_size} (the vocabulary), got {top_k!r}."
        )
    forced = None
    if force is not None:
        forced = torch.as_tensor(force, dtype=torch.long).reshape(-1).cpu()
        if not 1 <= len(forced) <= max_new_tokens:
            raise ValueError(
                f"force holds {len(forced)} tokens; it needs 1..max_new_tokens "
                f"({max_new_tokens}). Pass max_new_tokens=len(force)."
            )
        if int(forced.min()) < 0 or int(forced.max()) >= vocab_size:
            raise ValueError(
                f"force holds ids outside the vocabulary 0..{vocab_size - 1}; pass token ids "
                "of this model's tokenizer (e.g. another Trace's token_ids)."
            )
        max_new_tokens = len(forced)
    inputs, prompt_text = prepare_inputs(loaded, image, prompt)
    check_lengths(loaded, int(inputs["input_ids"].shape[1]), max_new_tokens)
    lens = loaded.lens(lens_norm)
    watch_ids = _watch_ids(loaded.tokenizer, watch, lens.vocab_size) if watch else None
    prompt_len = int(inputs["input_ids"].shape[1])
    reducer = StepReducer(lens, top_k, dola_compat, watch_ids)
    with (
        record_function("lvlm_kit.generate"),
        skip_layers(loaded.anatomy, skip) as skipped,
        ResidualRecorder(loaded.anatomy, device=lens.device) as rec,
    ):
        chunk = chunk_steps(chunk_mb, loaded.anatomy.n_layers + 1, lens.vocab_size)
        streaming = _ReduceWhileGenerating(
            rec, reducer, prompt_len, chunk, max_new_tokens, chunk_mb * 2**20, keep_hidden
        )
        sequences = loaded.model.generate(
            **inputs,
            generation_config=greedy_config(loaded.model, max_new_tokens),
            stopping_criteria=StoppingCriteriaList([streaming]),
            logits_processor=LogitsProcessorList(
                [] if forced is None else [_Force(prompt_len, forced)]
            ),
        )
    prompt_ids = inputs["input_ids"][0].cpu()
    token_ids = sequences[0, prompt_len:].cpu()
    if len(rec.steps) != len(token_ids):  # pragma: no cover - generate internals
        raise RuntimeError(
            f"recorded {len(rec.steps)} forward steps for {len(token_ids)} tokens; "
            "the generation strategy is not plain greedy decoding."
        )
    streaming.reduce(token_ids, final=True)
    reduced = reducer.result()
    with record_function("lvlm_kit.bookkeeping"):
        tok = loaded.tokenizer
        extra = [] if watch_ids is None else [watch_ids]
        ids = torch.cat([token_ids, reduced["topk_ids"].reshape(-1), *extra])
        seen = torch.unique(ids).tolist()
        text, offsets = _decode_with_offsets(tok, token_ids.tolist())
        tokens = [tok.decode([i]) for i in token_ids.tolist()]
        vocab = {i: tok.decode([i]) for i in seen}
    return Trace(
        model_name=loaded.name,
        lens_norm=lens_norm,
        prompt=prompt,
        prompt_text=prompt_text,
        generated_text=text,
        offsets=offsets,
        watch_ids=watch_ids,
        tokens=tokens,
        vocab=vocab,
        token_ids=token_ids,
        prompt_ids=prompt_ids,
        image_positions=loaded.anatomy.image_positions(prompt_ids),
        hidden=rec.stacked().cpu() if keep_hidden else None,
        meta={
            "max_new_tokens": max_new_tokens,
            "top_k": top_k,
            "model_dtype": loaded.precision,
            "n_layers": loaded.anatomy.n_layers,
            "vocab_size": lens.vocab_size,
            "skipped_layers": skipped,
            "forced": forced is not None,
        },
        **reduced,
    )
