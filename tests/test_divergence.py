import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lvlm_kit.divergence import LN2, entropy, js_divergence, js_divergence_dola, kl_divergence

logit_vectors = arrays(np.float64, 7, elements=st.floats(-30, 30))


def logp(x) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(x, dtype=torch.float64), -1)


@settings(max_examples=200, deadline=None)
@given(logit_vectors, logit_vectors)
def test_jsd_symmetric_and_bounded(a, b):
    p, q = logp(a), logp(b)
    d = js_divergence(p, q)
    assert 0.0 <= d.item() <= LN2
    assert d.item() == pytest.approx(js_divergence(q, p).item(), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(logit_vectors)
def test_jsd_zero_on_equal(a):
    p = logp(a)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-12)
    assert js_divergence_dola(p, p).item() == pytest.approx(0.0, abs=1e-15)


@settings(max_examples=100, deadline=None)
@given(logit_vectors, logit_vectors)
def test_jsd_matches_textbook_formula(a, b):
    p, q = logp(a).exp().numpy(), logp(b).exp().numpy()
    m = 0.5 * (p + q)
    ref = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    assert js_divergence(logp(a), logp(b)).item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_jsd_disjoint_is_ln2_and_handles_zeros():
    p = torch.log(torch.tensor([1.0, 0.0, 0.0]))
    q = torch.log(torch.tensor([0.0, 0.5, 0.5]))
    assert js_divergence(p, q).item() == pytest.approx(LN2, abs=1e-7)
    assert entropy(q).item() == pytest.approx(LN2, abs=1e-7)
    assert kl_divergence(q, q).item() == 0.0


def test_dola_compat_is_the_authors_formula():
    # Independent float64 re-derivation: 0.5 * (mean_v M log(M/P) + mean_v M log(M/Q)).
    p = np.array([0.7, 0.2, 0.1])
    q = np.array([0.1, 0.3, 0.6])
    m = 0.5 * (p + q)
    ref = 0.5 * (np.mean(m * np.log(m / p)) + np.mean(m * np.log(m / q)))
    got = js_divergence_dola(torch.log(torch.tensor(p)), torch.log(torch.tensor(q)))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref, rel=1e-12)
    # ...which is NOT true JSD / V: KL(M||P) is the reverse direction of JSD's KL(P||M).
    jsd_over_v = js_divergence(torch.log(torch.tensor(p)), torch.log(torch.tensor(q))) / 3
    # By hand: KL(M||P) = 0.270403, KL(M||Q) = 0.320289; KL(P||M) = 0.221826,
    # KL(Q||M) = 0.239466 -> dola = 0.098449, JSD = 0.230646, JSD / V = 0.076882.
    assert got.item() == pytest.approx(0.098449, abs=1e-6)
    assert jsd_over_v.item() == pytest.approx(0.076882, abs=1e-6)


def test_dola_compat_close_to_jsd_over_v_for_near_distributions():
    # To second order KL(M||P) ~ KL(P||M), so for nearby layers the two agree closely.
    torch.manual_seed(0)
    a = torch.randn(4, 50, dtype=torch.float64)
    p, q = logp(a), logp(a + 0.01 * torch.randn_like(a))
    ratio = js_divergence_dola(p, q) / (js_divergence(p, q) / 50)
    assert torch.allclose(ratio, torch.ones(4, dtype=torch.float64), atol=1e-3)


def test_kl_and_entropy_values():
    p = torch.log(torch.tensor([0.5, 0.5]))
    q = torch.log(torch.tensor([0.9, 0.1]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p, q).item() == pytest.approx(expected, rel=1e-6)
    assert entropy(torch.log(torch.full((8,), 1 / 8))).item() == pytest.approx(math.log(8))


def test_batched_shapes():
    a = torch.log_softmax(torch.randn(3, 5, 11), -1)
    b = torch.log_softmax(torch.randn(3, 5, 11), -1)
    assert js_divergence(a, b).shape == (3, 5)
    assert js_divergence_dola(a, b).shape == (3, 5)
    assert entropy(a).shape == (3, 5)


def test_float32_at_vocabulary_scale_matches_float64():
    # The lens's case: [tokens, layers, V] float32 log-probabilities, adjacent layers compared.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 32000, generator=g) * torch.linspace(0.5, 12, 5)[:, None]
    lp = torch.log_softmax(z, -1)
    lp64 = lp.double()
    ref_js = js_divergence(lp64[:, :-1], lp64[:, 1:])
    ref_h = -(lp64.exp() * lp64).sum(-1)
    p = lp.exp()
    got_js = js_divergence(lp[:, :-1], lp[:, 1:], p[:, :-1], p[:, 1:])
    torch.testing.assert_close(got_js.double(), ref_js, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(js_divergence(lp[:, :-1], lp[:, 1:]), got_js)
    torch.testing.assert_close(entropy(lp, p).double(), ref_h, atol=2e-5, rtol=1e-6)


def test_zero_and_underflowing_probabilities_take_the_exact_path():
    tiny = torch.finfo(torch.float32).smallest_normal * 2**-23  # the smallest subnormal
    p = torch.tensor([1.0 - 1e-7, tiny, 0.0]).log()
    q = torch.tensor([1.0 - 1e-7, 0.0, 0.0]).log()
    assert js_divergence(p, q).item() == pytest.approx(0.0, abs=1e-7)  # m underflows to 0
    assert entropy(q).item() == pytest.approx(1e-7, abs=1e-7)
    lp = torch.log_softmax(torch.tensor([[0.0, -torch.inf, 2.0], [1.0, 1.0, -torch.inf]]), -1)
    assert torch.isfinite(entropy(lp)).all() and torch.isfinite(js_divergence(lp[0], lp[1]))
