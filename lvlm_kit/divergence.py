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


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats.

    Args:
        logp: log-probabilities ``[..., V]``.

    Returns:
        ``[...]`` entropies in ``[0, ln V]``.
    """
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) in nats, summed over the vocabulary.

    Args:
        logp: log-probabilities of P ``[..., V]``.
        logq: log-probabilities of Q ``[..., V]`` (broadcastable).

    Returns:
        ``[...]`` non-negative divergences (``inf`` where Q is 0 and P is not).
    """
    return _plogp_ratio(logp, logq).sum(-1).clamp_min(0.0)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence in nats, the true (summed) definition.

    ``JSD = ½ KL(P ‖ M) + ½ KL(Q ‖ M)`` with ``M = ½ (P + Q)`` and
    ``log M = logsumexp(log P, log Q) - ln 2``. Symmetric, zero iff P = Q, bounded by
    ``ln 2``; rounding noise is clamped into ``[0, ln 2]``.

    Args:
        logp: log-probabilities ``[..., V]``.
        logq: log-probabilities ``[..., V]`` (broadcastable).

    Returns:
        ``[...]`` divergences in ``[0, ln 2]``.
    """
    logp, logq = torch.broadcast_tensors(logp, logq)
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
