import pytest
import torch
from conftest import fake_trace

from lvlm_kit.stages import StageConfig, critical_split, detect_stages, js_after_embedding

L = 12


def synthetic(n_tokens=10, critical=8, mutation=11, mutating=(0, 1, 2, 3, 4), seed=0):
    """JS high (~0.3) on pairs before `critical`, low (~0.005) after; tokens rise at
    `critical`; tokens in `mutating` spike in JS and jump in probability into `mutation`."""
    g = torch.Generator().manual_seed(seed)
    js = torch.empty(n_tokens, L)
    js[:, :critical] = 0.3 + 0.05 * torch.rand(n_tokens, critical, generator=g)
    js[:, critical:] = 0.005 + 0.002 * torch.rand(n_tokens, L - critical, generator=g)
    prob = torch.zeros(n_tokens, L + 1)
    prob[:, critical:] = 0.9
    for t in mutating:
        js[t, mutation - 1] = 0.25
        prob[t, critical:mutation] = 0.1
        prob[t, mutation:] = 0.8
    return fake_trace([f"w{i}" for i in range(n_tokens)], prob, js=js)


def test_detects_known_change_points():
    st = detect_stages(synthetic())
    assert st.critical_layer == 8 and st.has_split
    assert st.mutation_layers == [11]
    assert st.token_mutations[:5] == [[11]] * 5 and st.token_mutations[5:] == [[]] * 5
    # Mutating tokens sit at 0.1 < 0.5 * 0.8 until layer 11, the others reach 0.9 at 8.
    assert st.token_critical == [11] * 5 + [8] * 5
    assert st.shallow_js == pytest.approx(0.325, abs=0.02)
    assert st.deep_js < 0.07
    assert [st.stage_of(j) for j in (0, 7, 8, 10, 11, 12)] == [
        "rapid evolution",
        "rapid evolution",
        "stabilisation",
        "stabilisation",
        "mutation",
        "mutation",
    ]
    summary = st.summary()
    assert summary["critical_layer"] == 8 and summary["tokens_with_mutation"] == 0.5
    assert st.split_ratio == pytest.approx(st.shallow_js / st.deep_js) and st.split_ratio > 4


def test_the_js_curve_after_the_embedding_step_pools_every_token():
    a, b = synthetic(n_tokens=3, mutating=(0,), seed=1), synthetic(n_tokens=5, seed=2)
    curve = js_after_embedding([a, b])
    assert curve.dtype == torch.float64 and curve.shape == (L - 1,)
    torch.testing.assert_close(curve, torch.cat([a.js, b.js])[:, 1:].double().mean(0))
    assert float(curve[0]) == pytest.approx(0.325, abs=0.03) and float(curve[-1]) < 0.1


def test_a_late_probability_rise_is_no_mutation():
    # Tokens whose probability climbs 0.1 -> 0.8 in a deep layer with no JS event: the
    # paper's confidence rise after the critical layers, reported apart from mutations.
    tr = synthetic(mutating=(0, 1, 2, 3, 4))
    tr.js[:5, 10] = tr.js[:5, 9]  # the JS spike removed, the probability jump kept
    st = detect_stages(tr)
    assert st.token_rises[:5] == [[11]] * 5 and st.token_rises[5:] == [[]] * 5
    assert st.token_mutations == [[]] * 10 and st.mutation_layers == []
    assert st.summary()["tokens_with_late_rise"] == 0.5
    assert st.summary()["tokens_with_mutation"] == 0.0
    # A JS event without a probability jump is a mutation.
    spike = synthetic(mutating=())
    spike.js[:5, 10] = 0.25
    st = detect_stages(spike)
    assert st.token_mutations[:5] == [[11]] * 5 and st.token_rises == [[]] * 10


def test_per_token_critical_layer_follows_the_rise():
    tr = synthetic(n_tokens=2, mutating=())
    tr.token_prob[1, 5:] = 0.9  # token 1 rises earlier
    st = detect_stages(tr)
    assert st.token_critical == [8, 5]


def test_critical_layer_moves_with_the_split():
    for c in (3, 6, 9):
        assert detect_stages(synthetic(critical=c, mutation=11)).critical_layer == c


def test_no_mutation_without_spikes_and_thresholds():
    st = detect_stages(synthetic(mutating=()))
    assert st.mutation_layers == [] and st.stage_of(12) == "stabilisation"
    # Raising the share threshold above 50% removes the aggregate mutation layer.
    assert detect_stages(synthetic(), StageConfig(min_share=0.6)).mutation_layers == []


def test_evenly_spread_mutations_are_no_mutation_stage():
    # Each token mutates once, at deep layers 10..12 in turn: a third of tokens at each.
    tr = synthetic(n_tokens=9, mutating=())
    for t in range(9):
        tr.js[t, 9 + t % 3] = 0.25
    assert detect_stages(tr).mutation_layers == []
    assert detect_stages(tr, StageConfig(min_concentration=0)).mutation_layers == [10, 11, 12]
    tr.js[:5, 10] = 0.25  # over half of the tokens also mutate into layer 11: concentrated
    assert detect_stages(tr).mutation_layers == [11]


def test_a_smoothly_falling_js_curve_has_no_mutation_stage():
    # JS halves at every layer (as in random-weight decoders): the first deep steps are the
    # largest of the deep part, but nothing rises again.
    js = (0.5 * 0.6 ** torch.arange(L, dtype=torch.float32)).repeat(20, 1)
    js *= 1 + 0.01 * torch.rand(20, 1)
    st = detect_stages(
        fake_trace([f"w{i}" for i in range(20)], torch.full((20, L + 1), 0.01), js=js)
    )
    assert st.has_split and st.mutation_layers == []
    assert st.summary()["tokens_with_mutation"] == 0.0
    spike = js.clone()
    spike[:12, 9] = 0.2  # a real rise into layer 10 for 60% of the tokens
    st = detect_stages(
        fake_trace([f"w{i}" for i in range(20)], torch.full((20, L + 1), 0.01), js=spike)
    )
    assert st.mutation_layers == [10]


def test_pools_several_traces_and_checks_shapes():
    st = detect_stages([synthetic(seed=0), synthetic(seed=1)])
    assert len(st.token_critical) == 20 and st.mutation_layers == [11]
    short = fake_trace(["a"], torch.zeros(1, 5))
    with pytest.raises(ValueError, match="same number of layers"):
        detect_stages([synthetic(), short])
    with pytest.raises(ValueError, match="at least one trace"):
        detect_stages([])


def test_critical_split():
    assert critical_split(torch.tensor([1.0, 1.0, 1.0, 0.01, 0.01, 0.01])) == 3
    with pytest.raises(ValueError, match="at least 4"):
        critical_split(torch.tensor([1.0, 0.1, 0.1]))
