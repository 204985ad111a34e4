"""Divergences between next-token distributions, computed from log-probabilities.

Every function takes log-probabilities (``log_softmax`` outputs) over the last dimension
(``dim=-1``, the vocabulary) and reduces that dimension away, so ``[..., V] -> [...]``.
Working in log space keeps tiny probabilities exact; mixtures use ``logsumexp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def _plogp_ratio(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p * (log p - log q)`` with the convention ``0 * log 0 = 0``."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))


def entropy(logp: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy in nats.

    Args:
        logp: log-probabilities ``[..., V]``.
        p: ``logp.exp()``, if the caller already has it (saves one pass).

    Returns:
        ``[...]`` entropies in ``[0, ln V]``.
    """
    p = logp.exp() if p is None else p
    h = -torch.linalg.vecdot(p, logp)
    if h.isnan().any():  # a zero probability (log p = -inf): 0 · log 0 = 0
        h = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return h


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) in nats, summed over the vocabulary.

    Args:
        logp: log-probabilities of P ``[..., V]``.
        logq: log-probabilities of Q ``[..., V]`` (broadcastable).

    Returns:
        ``[...]`` non-negative divergences (``inf`` where Q is 0 and P is not).
    """
    return _plogp_ratio(logp, logq).sum(-1).clamp_min(0.0)


def js_divergence(
    logp: torch.Tensor,
    logq: torch.Tensor,
    p: torch.Tensor | None = None,
    q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Jensen–Shannon divergence in nats, the true (summed) definition.

    ``JSD = ½ KL(P ‖ M) + ½ KL(Q ‖ M)`` with ``M = ½ (P + Q)``. Symmetric, zero iff
    P = Q, bounded by ``ln 2``; rounding noise is clamped into ``[0, ln 2]``. The mixture
    is formed from the probabilities and its log taken once; where a probability is zero
    the sum is redone in log space (``log M = logsumexp(log P, log Q) - ln 2``) with
    ``0 · log 0 = 0``.

    Args:
        logp: log-probabilities ``[..., V]``.
        logq: log-probabilities ``[..., V]`` (broadcastable).
        p: ``logp.exp()`` and
        q: ``logq.exp()``, if the caller already has them (saves two passes).

    Returns:
        ``[...]`` divergences in ``[0, ln 2]``.
    """
    logp, logq = torch.broadcast_tensors(logp, logq)
    p = logp.exp() if p is None else p.expand_as(logp)
    q = logq.exp() if q is None else q.expand_as(logq)
    logm = torch.lerp(p, q, 0.5).log_()
    kl_p = torch.sub(logp, logm).mul_(p).sum(-1)
    kl_q = torch.sub(logq, logm, out=logm).mul_(q).sum(-1)
    js = 0.5 * (kl_p + kl_q)
    if not js.isfinite().all():  # a zero probability (or m underflowing): 0 · log 0 = 0
        logm = torch.logaddexp(logp, logq) - LN2
        js = 0.5 * (_plogp_ratio(logp, logm).sum(-1) + _plogp_ratio(logq, logm).sum(-1))
    return js.clamp(0.0, LN2)


def js_divergence_dola(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """The "JS divergence" of DoLa's code, which the paper's authors reuse (``dola_compat``).

    Computed in float64 as ``½ (mean_v KL_v(M ‖ P) + mean_v KL_v(M ‖ Q))``, i.e.
    ``F.kl_div(log P, M, reduction="none").mean(-1)`` per side. Note the direction:
    ``F.kl_div(input, target)`` is KL(target ‖ input), so this is the *reverse* KL to the
    mixture, averaged (not summed) over the vocabulary. It is **not** ``JSD / V`` in
    general (it is unbounded: for disjoint supports it is ``inf`` where JSD is ``ln 2``);
    the two agree only at P = Q (both 0). Use it only to compare with figures made by
    that code; analyses in this kit use :func:`js_divergence`.

    Args:
        logp: log-probabilities ``[..., V]``.
        logq: log-probabilities ``[..., V]`` (broadcastable).

    Returns:
        ``[...]`` float64 values.
    """
    logp, logq = torch.broadcast_tensors(logp.double(), logq.double())
    m = 0.5 * (logp.exp() + logq.exp())
    kl1 = F.kl_div(logp, m, reduction="none").mean(-1)
    kl2 = F.kl_div(logq, m, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)
