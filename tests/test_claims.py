"""Claims: each statistic checked on synthetic data where the answer is known both ways, the
verdict rules, and every claim on random weights (never shown)."""

import math

import numpy as np
import pytest
import torch
from conftest import fake_trace, make_tiny_llava

from lvlm_kit import claims, runs, trace
from lvlm_kit.claims import ClaimConfig, Estimate, LabelledTokens, SweepAnswers
from lvlm_kit.runs import Counts, PresetCounts
from lvlm_kit.stages import critical_split

CFG = ClaimConfig(n_boot=200, n_boot_stages=30)
L = 12


def C(data):
    """One control, under the name notebooks give the re-initialised copy."""
    return {"re-initialised": data}


def traces(
    n_images=16,
    shallow_p=0.01,
    final_p=0.9,
    rise_at=4,
    mutate=None,
    seed=0,
    words=None,
    p_rise_at=None,
    n_layers=L,
):
    """Per image 6 tokens: p(emitted) `shallow_p` before `p_rise_at` (default `rise_at`),
    `final_p` from it; JS high before `rise_at`, low after; tokens in `mutate` (indices)
    spike in JS into layer 9. Split by TraceSet.of: half detect the stages, half are judged."""
    g = torch.Generator().manual_seed(seed)
    out = []
    words = words or ["the", "red", "boat", "is", "a", "fish"]
    for _ in range(n_images):
        p = torch.full((6, n_layers + 1), shallow_p)
        p[:, p_rise_at or rise_at :] = final_p
        js = torch.empty(6, n_layers)
        js[:, :rise_at] = 0.3 + 0.02 * torch.rand(6, rise_at, generator=g)
        js[:, rise_at:] = 0.004 + 0.001 * torch.rand(6, n_layers - rise_at, generator=g)
        for t in mutate or ():
            js[t, 8] = 0.2
        out.append(fake_trace(words, p, js=js))
    return claims.TraceSet.of(out)


def decay(n_images=16, seed=1, n_layers=L, rate=0.8):
    """Random-weight-like traces: p flat near 1/V, JS falling smoothly (rate^j), no rise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_images):
        p = torch.full((6, n_layers + 1), 0.02) + 0.001 * torch.rand(6, n_layers + 1, generator=g)
        js = (0.05 * rate ** torch.arange(n_layers, dtype=torch.float32)).repeat(6, 1)
        js *= 1 + 0.05 * torch.rand(6, n_layers, generator=g)
        out.append(fake_trace(["the", "red", "boat", "is", "a", "fish"], p, js=js))
    return claims.TraceSet.of(out)


flat = decay


def test_estimate_rules_and_intervals():
    data = np.array([0.9, 1.1, 1.0, 0.95, 1.05] * 4)
    stat = lambda idx: float(data[idx].mean())  # noqa: E731
    assert claims.estimate(stat, [20], ">=", 0.5, CFG).holds == "yes"
    assert claims.estimate(stat, [20], ">=", 1.5, CFG).holds == "no"
    e = claims.estimate(stat, [20], ">=", 1.0, CFG)
    assert e.holds == "inconclusive" and e.low < 1.0 < e.high
    assert claims.estimate(stat, [20], "<=", 1.5, CFG).holds == "yes"
    zero = lambda idx: 0.0  # noqa: E731
    assert claims.estimate(zero, [20], ">=", 0.0, CFG).holds == "yes"
    assert claims.estimate(zero, [20], ">", 0.0, CFG).holds == "no"  # "more than" is strict
    assert claims.estimate(lambda idx: math.nan, [20], ">", 0, CFG).holds == "inconclusive"
    assert claims.estimate(stat, [1], ">=", 0.5, CFG).holds == "inconclusive"  # one unit


def test_all_or_nothing_shares_get_exact_intervals():
    # 12 of 12 agreeing units: the percentile bootstrap says [1, 1]; the exact interval
    # keeps a quarter of disagreement possible.
    ones = np.ones(12)
    boot = claims.estimate(lambda idx: float(ones[idx].mean()), [12], ">=", 0.8, CFG)
    assert (boot.low, boot.high) == (1.0, 1.0) and boot.holds == "yes"
    exact = claims.share_estimate([True] * 12, ">=", 0.8, CFG)
    assert exact.value == 1.0 and exact.high == 1.0
    assert exact.low == pytest.approx(0.7354, abs=1e-4) and exact.holds == "inconclusive"
    assert claims.share_estimate([True] * 12, ">=", 0.5, CFG).holds == "yes"
    half = claims.share_estimate([True, False] * 10, ">=", 0.5, CFG)
    assert half.low == pytest.approx(0.2720, abs=1e-4) and half.holds == "inconclusive"


def test_verdict_needs_the_model_and_every_control():
    def est(h):
        return Estimate(1.0, 0.9, 1.1, h, 10)

    both = lambda a, b: {"re-initialised": a, "permuted": b}  # noqa: E731
    assert claims.decide(est("yes"), both(est("no"), est("no"))) == "shown"
    # a control whose interval straddles the threshold might show it too
    assert claims.decide(est("yes"), both(est("no"), est("inconclusive"))) == "inconclusive"
    nan = Estimate(math.nan, math.nan, math.nan, "inconclusive", 10)  # no value on the control
    # no pass without a control: missing or undefined is never "shown"
    assert claims.decide(est("yes"), both(est("no"), nan)) == "inconclusive (no control)"
    assert claims.decide(est("yes"), both(None, est("no"))) == "inconclusive (no control)"
    assert claims.decide(est("yes"), {}) == "inconclusive (no control)"
    assert claims.decide(est("yes"), both(est("no"), est("yes"))) == "not shown"  # holds on noise
    assert claims.decide(est("yes"), both(nan, est("yes"))) == "not shown"
    assert claims.decide(est("no"), both(est("no"), est("no"))) == "not shown"
    assert claims.decide(est("inconclusive"), both(est("no"), est("no"))) == "inconclusive"
    with pytest.raises(TypeError, match="controls must map a control's name"):
        claims.near_zero_shallow(traces(), flat(), CFG)


def test_stages_are_detected_on_one_half_and_claims_judged_on_the_other():
    ts = traces(n_images=9)
    assert len(ts.traces) == 4 and ts.detection.critical_layer == ts.stages.critical_layer == 4
    assert len(ts.stages.token_mutations) == 4 * 6  # the judged tokens only
    r = claims.near_zero_shallow(ts, C(flat()), CFG)
    assert r.model.n == 4 and claims.SPLIT_NOTE in r.notes
    with pytest.raises(ValueError, match="at least 2 traces"):
        claims.TraceSet.of(traces(n_images=1).traces)


def test_token_probability_claims_both_ways():
    good, bad, noise = traces(), traces(shallow_p=0.5, final_p=0.6), flat()
    assert claims.near_zero_shallow(good, C(noise), CFG).verdict == "shown"
    assert claims.near_zero_shallow(bad, C(noise), CFG).verdict == "not shown"
    r = claims.sharp_rise(good, C(noise), CFG)
    assert r.verdict == "shown" and r.model.value == pytest.approx(0.89)
    assert claims.sharp_rise(bad, C(noise), CFG).verdict == "not shown"
    # A jump into the output layer, far from the critical layer, is not the paper's rise
    # (the largest rise anywhere passed it: 0.89 >= 0.3).
    late = traces(p_rise_at=L)
    assert late.stages.critical_layer == 4
    r = claims.sharp_rise(late, C(noise), CFG)
    assert r.verdict == "not shown" and r.model.value == pytest.approx(0.0)
    assert "the steepest one-layer rise is into layer 12 of 12" in r.notes[0]
    r = claims.near_zero_shallow(good, C(good), CFG)  # a control that shows it voids the claim
    assert r.verdict == "not shown" and "holds on the re-initialised control too" in r.notes[-1]
    r = claims.near_zero_shallow(good, {"re-initialised": noise, "permuted": good}, CFG)
    assert r.verdict == "not shown"  # beating one control is not enough
    assert r.controls["re-initialised"].holds == "no" and r.controls["permuted"].holds == "yes"


def switching(ts, tokens):
    """Make ``tokens`` (indices) change their top-1 at every layer in each judged trace."""
    for t in ts.traces:
        t.topk_ids[tokens, :, 0] = torch.arange(t.n_layers + 1)
    return ts


def test_content_tokens_keep_changing_both_ways():
    good, same = switching(traces(), [1, 2, 5]), traces()
    r = claims.content_keeps_changing(good, C(same), CFG)
    assert r.verdict == "shown" and r.model.value == pytest.approx(8.0)
    null = r.controls["labels shuffled"]
    assert null.holds == "no" and null.high < r.model.low
    assert claims.content_keeps_changing(same, C(same), CFG).verdict == "not shown"
    only_content = traces(words=["red", "boat", "fish", "tree", "sun", "cat"])
    r = claims.content_keeps_changing(only_content, C(same), CFG)
    assert r.verdict == "inconclusive" and math.isnan(r.model.value)  # no function word
    # A random model repeating "sun. sun. sun." compares two words, not two word classes.
    repeats = traces(words=["sun", ".", "sun", ".", "sun", "."])
    for t in repeats.traces:
        t.token_ids[:] = torch.tensor([7, 8, 7, 8, 7, 8])
        t.topk_ids[[0, 2, 4], :, 0] = torch.arange(L + 1)
    r = claims.content_keeps_changing(repeats, C(same), CFG)
    assert r.verdict == "inconclusive" and math.isnan(r.model.value)
    assert claims.entities_rise_again(repeats, C(same), CFG).verdict == "inconclusive"


def test_a_class_contrast_made_by_the_images_is_not_shown():
    # Half the images are content-heavy and every token of them switches; the others are
    # function-heavy and nothing switches. Pooled, content tokens switch more (the old
    # statistic said shown); shuffling labels within each image gives the same difference.
    ws = {
        "heavy": ["red", "boat", "fish", "tree", "the", "cat"],
        "light": ["the", "is", "a", "of", "sun", "in"],
    }
    out = []
    for i in range(32):
        kind = "heavy" if i % 4 in (1, 3) and i % 8 < 4 else "light"
        tr = traces(n_images=2, words=ws[kind]).traces[0]
        tr.token_ids = torch.tensor([hash(w) % 1000 for w in ws[kind]])
        if kind == "heavy":
            tr.topk_ids[:, :, 0] = torch.arange(L + 1)
        out.append(tr)
    confounded = claims.TraceSet.of(out)
    r = claims.content_keeps_changing(confounded, C(traces()), CFG)
    assert r.model.holds == "yes"  # the pooled contrast alone would pass
    assert r.controls["labels shuffled"].holds == "yes" and r.verdict == "not shown"


def test_divergence_and_stage_claims_both_ways():
    good = traces(mutate=[1, 2, 5])  # content tokens rise again into layer 9
    no_mutation, noise = traces(), flat()
    r = claims.js_split(traces(mutate=[2]), C(noise), CFG)  # one token in six rises again
    assert r.verdict == "shown" and r.model.value == pytest.approx(14.7, abs=0.1)
    assert claims.js_split(flat(), C(noise), CFG).verdict == "not shown"
    assert claims.entities_rise_again(good, C(noise), CFG).verdict == "shown"
    assert claims.entities_rise_again(no_mutation, C(noise), CFG).verdict == "not shown"
    assert good.stages.mutation_layers == [9]
    many = traces(n_images=48, mutate=[1, 2, 5])  # 24 judged images: 8 groups of 3
    r = claims.three_stages(many, C(traces(n_images=48)), CFG)
    assert r.verdict == "shown" and r.model.value == 1.0
    assert r.model.low == pytest.approx(0.6306, abs=1e-4)  # exact: 8 of 8
    # 8 judged images are 2 groups: 2 of 2 cannot tell a share above a half
    assert claims.three_stages(good, C(noise), CFG).verdict == "inconclusive"
    r = claims.three_stages(traces(n_images=48), C(noise), CFG)
    assert r.verdict == "not shown" and r.model.high == pytest.approx(0.3694, abs=1e-4)
    assert noise.stages.mutation_layers == []  # a smoothly falling curve: no mutation stage


def test_a_smooth_decay_is_not_a_step():
    # 0.85^j over 32 layers: shallow / deep mean JS is 13.5 (the old ratio said shown);
    # a straight line in log JS explains it, a step does not.
    smooth = decay(n_layers=32, rate=0.85)
    curve = torch.cat([t.js for t in smooth.traces]).double().mean(0)
    k = critical_split(curve)
    assert float(curve[:k].mean() / curve[k:].mean()) > 10
    r = claims.js_split(smooth, C(decay()), CFG)
    assert r.verdict == "not shown" and r.model.value < 0
    step = traces(n_layers=32, rise_at=18)
    assert claims.js_split(step, C(decay()), CFG).verdict == "shown"
    # The embedding step alone (JS high only from layer 0 to 1) is left out.
    embedding_only = traces(rise_at=1)
    assert claims.js_split(embedding_only, C(decay()), CFG).verdict != "shown"


def labelled(h_mutate, c_mutate, h_led, c_led, n=12):
    rows = [np.array([[1, h_mutate, h_led], [0, c_mutate, c_led]], float)] * n
    return LabelledTokens(rows, 4)


def test_hallucination_claims_both_ways():
    noise = labelled(0, 0, 0, 0)
    r = claims.hallucinations_mutate(labelled(1, 0, 1, 0), C(noise), CFG)
    assert r.verdict == "shown" and r.controls["labels shuffled"].holds == "no"
    assert claims.hallucinations_mutate(labelled(1, 1, 1, 0), C(noise), CFG).verdict == "not shown"
    assert claims.correct_leads_first(labelled(1, 0, 1, 0), C(noise), CFG).verdict == "shown"
    assert claims.correct_leads_first(labelled(1, 0, 0, 0), C(noise), CFG).verdict == "not shown"
    # An object of the image leads correct tokens as often: that is no sign of a
    # hallucination (the old statistic, hallucinated tokens only, said shown).
    r = claims.correct_leads_first(labelled(1, 0, 1, 1), C(noise), CFG)
    assert r.verdict == "not shown" and r.model.value == 0.0
    empty = LabelledTokens([np.empty((0, 3))] * 5, 4)
    assert claims.hallucinations_mutate(empty, C(noise), CFG).verdict == "inconclusive"


def test_labelled_tokens_use_the_annotated_objects_after_the_critical_layer():
    import pandas as pd

    trs = traces(n_images=16).traces  # 8 traces: 4 detect, 4 are judged
    lead = np.zeros(L + 1)
    early, late = lead.copy(), lead.copy()
    early[2] = 0.6  # before the critical layer 4: not counted
    late[7] = 0.6
    events = pd.DataFrame(
        [
            {"image": 1, "step": 2, "label": "hallucinated", "truth_lead": late},
            {"image": 1, "step": 1, "label": "correct", "truth_lead": early},
            {"image": 3, "step": 5, "label": "hallucinated", "truth_lead": np.full(L + 1, np.nan)},
            {"image": 2, "step": 5, "label": "hallucinated", "truth_lead": late},  # detection half
        ]
    )
    got = claims.labelled_tokens(events, trs, CFG)
    assert got.critical_layer == 4 and len(got.per_image) == 4
    np.testing.assert_array_equal(got.per_image[0], [[1, 0, 1], [0, 0, 0]])
    assert np.isnan(got.per_image[1][0, 2]) and got.per_image[2].shape == (0, 3)


def counts(overlap1, chair_plain, chair2, chair3, n=12, cover=(0.5, 0.5, 0.5, 0.5), random=None):
    """Per image 10 nouns; CHAIR and Cover per decoding; random skips like `random` (a
    dict of preset -> (chair, cover, overlap)), else like plain decoding."""
    ones = np.ones(n) * 10
    names = ("plain", "skip1", "skip2", "skip3")
    chair = dict(zip(names, (chair_plain, chair_plain, chair2, chair3)))
    cov = dict(zip(names, cover))
    overlap = {"plain": 1.0, "skip1": overlap1, "skip2": 0.9, "skip3": 0.5}
    for name in names[1:]:
        c, v, o = (random or {}).get(name, (chair_plain, cover[0], 0.5))
        chair[f"random.{name}"], cov[f"random.{name}"], overlap[f"random.{name}"] = c, v, o
    return PresetCounts(
        counts={k: Counts(ones, ones * chair[k], ones * cov[k], ones) for k in chair},
        overlap={k: np.full(n, v) for k, v in overlap.items()},
    )


def test_skip_claims_both_ways():
    good, bad = counts(0.95, 0.3, 0.1, 0.4), counts(0.5, 0.1, 0.3, 0.1)
    fs = (claims.skip1_keeps, claims.skip2_fewer, claims.skip3_more)
    results = [f(good, C(bad), CFG) for f in fs]
    assert [r.verdict for r in results] == ["shown"] * 3, [r.sentence() for r in results]
    assert all(set(r.controls) == {"re-initialised", "random skips"} for r in results)
    assert [f(bad, C(bad), CFG).verdict for f in fs] == ["not shown"] * 3
    # a control without the presets' data cannot pass the claim
    assert [f(good, C(None), CFG).verdict for f in fs] == ["inconclusive (no control)"] * 3
    one = np.ones(3)
    no_presets = PresetCounts({"plain": Counts(one, one, one, one)}, {"plain": one})
    r = claims.skip2_fewer(no_presets, C(good), CFG)
    assert r.verdict == "inconclusive" and "define no skip2 preset" in r.notes[0]


def test_skip_claims_counter_examples():
    bad = counts(0.5, 0.1, 0.3, 0.1)
    # skip.2 "removes hallucinations" by naming almost nothing: CHAIR falls 0.3 -> 0.1 but
    # Cover falls 0.5 -> 0.1 (the old CHAIR-only statistic said shown).
    mute = counts(0.95, 0.3, 0.1, 0.4, cover=(0.5, 0.5, 0.1, 0.5))
    r = claims.skip2_fewer(mute, C(bad), CFG)
    assert r.verdict == "not shown" and r.model.value == pytest.approx(-0.35)
    # Any 7 deep layers skipped hallucinate as much as skip.3: the number of layers, not
    # which, makes the difference.
    any7 = counts(0.95, 0.3, 0.1, 0.4, random={"skip3": (0.45, 0.5, 0.5)})
    r = claims.skip3_more(any7, C(bad), CFG)
    assert r.verdict == "not shown" and r.controls["random skips"].holds == "yes"
    # Random skips of as many layers keep the output as well as skip.1.
    any6 = counts(0.95, 0.3, 0.1, 0.4, random={"skip1": (0.3, 0.5, 0.95)})
    r = claims.skip1_keeps(any6, C(bad), CFG)
    assert r.verdict == "not shown" and r.controls["random skips"].holds == "yes"
    # Random skips of as many layers remove as many hallucinations as skip.2.
    any2 = counts(0.95, 0.3, 0.1, 0.4, random={"skip2": (0.1, 0.5, 0.9)})
    assert claims.skip2_fewer(any2, C(bad), CFG).verdict == "not shown"


def test_preset_layers_pair_each_preset_with_random_deep_sets():
    st = traces(mutate=[1, 2, 5]).detection  # critical layer 4, mutation layer 9
    got = claims.preset_layers(st, CFG, seed=0)
    assert (
        got["skip1"] == [[4, 5, 6, 7]]
        and got["skip2"] == [[8]]
        and got["skip3"] == [list(range(4, 10))]
    )
    for name in ("skip1", "skip2", "skip3"):
        sets = got[f"random.{name}"]
        assert len(sets) == CFG.random_skips
        assert all(len(s) == len(got[name][0]) and min(s) >= 4 and max(s) < L for s in sets)
    assert got == claims.preset_layers(st, CFG, seed=0)  # seeded


def test_feature_claims_both_ways():
    rng = np.random.default_rng(0)
    fan = rng.normal(size=(20, L, 2)) * np.linspace(0.2, 3, L)[None, :, None]
    ball = rng.normal(size=(20, 1, 2)).repeat(L, axis=1)  # the same spread at every layer
    assert claims.tokens_diverge(fan, C(ball), CFG).verdict == "shown"
    assert claims.tokens_diverge(ball, C(ball), CFG).verdict == "not shown"
    questions = {q: fan[:, :, :] + i for i, q in enumerate("abcd")}
    balls = {q: ball for q in "abcd"}
    r = claims.vqa_fan(questions, C(balls), CFG)
    assert r.verdict == "shown" and "mean of 4 questions" in r.statistic
    assert claims.vqa_fan(balls, C(balls), CFG).verdict == "not shown"


def test_vqa_fan_counter_examples():
    rng = np.random.default_rng(1)
    ball = rng.normal(size=(12, 1, 2)).repeat(L, axis=1)
    balls = {q: ball for q in "abcd"}
    # Tight at layer 1 only, then as wide as the deep layers: the old statistic (widest
    # layer / narrowest of layers 1-3) gave 10.
    neck1 = ball.copy()
    neck1[:, 0] *= 0.1
    r = claims.vqa_fan({q: neck1 for q in "abcd"}, C(balls), CFG)
    assert r.verdict == "not shown" and r.model.value < 2
    # Each question's answers stay as tight as they start; only the questions drift apart
    # with depth. Pooled in one projection this fans out; per question it does not.
    drift = {q: ball * 0.1 + np.linspace(0, 10 * i, L)[None, :, None] for i, q in enumerate("abcd")}
    pooled = np.concatenate(list(drift.values()))
    assert claims.vqa_fan({"all": pooled}, C(balls), CFG).model.holds == "yes"
    assert claims.vqa_fan(drift, C(balls), CFG).verdict == "not shown"


def test_llm_and_compression_claims_both_ways():
    mutating, calm = traces(mutate=[0, 1, 2, 3, 4, 5]), traces()
    assert claims.llm_fewer_mutations((mutating, calm), C((calm, calm)), CFG).verdict == "shown"
    assert claims.llm_fewer_mutations((calm, mutating), C((calm, calm)), CFG).verdict == "not shown"
    keeps = SweepAnswers(3, np.full(20, 0.95), np.full(20, 0.93))
    loses = SweepAnswers(3, np.full(20, 0.95), np.full(20, 0.70))
    chance = SweepAnswers(3, np.full(20, 0.5), np.full(20, 0.5))
    assert claims.compression(keeps, C(chance), CFG).verdict == "shown"
    assert claims.compression(loses, C(chance), CFG).verdict == "not shown"
    assert claims.compression(chance, C(chance), CFG).verdict == "not shown"  # nothing to keep
    r = claims.compression(None, C(chance), CFG, n_layers=12)
    assert r.verdict == "not shown" and "fewer than 3 layers" in r.notes[0]


def test_compression_k_is_set_by_the_config_not_the_sweep():
    from types import SimpleNamespace as P

    assert claims.compression_k(12, CFG) == 3 and claims.compression_k(32, CFG) == 8
    assert claims.compression_k(2, CFG) == 1
    points = [
        P(k=k, existence_correct={"a.png": [True, k < 2], "b.png": [True, True]})
        for k in (0, 1, 2, 3)
    ]
    got = claims.sweep_answers(points, 3)
    assert got.k == 3 and got.skipped.tolist() == [0.5, 1.0]  # not the sweep's largest k
    assert claims.sweep_answers(points[:3], 3) is None


def test_random_control_is_the_same_architecture_with_other_weights(tiny_llava):
    control = claims.random_control(tiny_llava, seed=0)  # tiny_llava is seed 0's init itself
    assert type(control.model) is type(tiny_llava.model)
    assert control.model.config.to_dict() == tiny_llava.model.config.to_dict()
    a, b = tiny_llava.anatomy.lm_head.weight, control.anatomy.lm_head.weight
    assert a.shape == b.shape and not torch.equal(a, b)
    assert control.processor is tiny_llava.processor


def test_permuted_control_shuffles_each_tensor_and_keeps_its_values(tiny_llava):
    control = claims.permuted_control(tiny_llava, seed=0)
    assert type(control.model) is type(tiny_llava.model) and control.name.endswith("(permuted)")
    source = dict(tiny_llava.model.named_parameters())
    for name, w in control.model.named_parameters():
        a, b = source[name].detach().flatten(), w.detach().flatten()
        assert torch.equal(a.sort().values, b.sort().values), name  # the same entries
        if a.unique().numel() > 1:  # (a fresh norm's ones cannot move)
            assert not torch.equal(a, b), f"{name} was not permuted"
    head, embed = control.anatomy.lm_head.weight, control.anatomy.embed_tokens.weight
    tied = tiny_llava.anatomy.lm_head.weight is tiny_llava.anatomy.embed_tokens.weight
    assert (head.data_ptr() == embed.data_ptr()) == tied
    again = claims.permuted_control(tiny_llava, seed=0).anatomy.lm_head.weight
    assert torch.equal(again, head)  # seeded
    assert set(claims.controls(tiny_llava, 0)) == set(claims.CONTROL_KINDS)


def test_the_layer_shuffled_control_runs_the_models_layers_in_another_order(tiny_llava, image):
    control = claims.layer_shuffled_control(tiny_llava, seed=0)
    assert control.name.endswith("(layer-shuffled)")
    mine, theirs = tiny_llava.anatomy.layers, control.anatomy.layers
    order = [
        next(
            i
            for i, m in enumerate(mine)
            if torch.equal(m.mlp.down_proj.weight, t.mlp.down_proj.weight)
        )
        for t in theirs
    ]
    assert sorted(order) == list(range(len(mine))) and order != sorted(order)
    src = dict(tiny_llava.model.named_parameters())
    for name, w in control.model.named_parameters():  # the same weights everywhere else
        if ".layers." not in name:
            assert torch.equal(w, src[name]), name
    tr = trace(control, image, "Describe the image.", 6)  # generates; its lens checks out
    assert tr.n_tokens == 6 and tr.n_layers == len(mine)
    assert set(claims.controls(tiny_llava, 0, order=True)) == {
        *claims.CONTROL_KINDS,
        "layer-shuffled",
    }


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["re-initialised", "permuted"])
@pytest.mark.parametrize("shape", ["testbed", "tiny-llava"])
def test_no_claim_is_shown_on_noise(shape, noise, tmp_path):
    """Every paper claim's analysis, as the notebooks run it, on a noise copy of a model
    against that copy's own two controls: nothing may be shown."""
    import dataclasses

    from lvlm_kit import data, load_model
    from lvlm_kit.applications import compression_sweep, stable_layers_by_js
    from lvlm_kit.features import answer_features, coords_array, project, token_features
    from lvlm_kit.generation import generate_texts
    from lvlm_kit.runs import object_token_events
    from lvlm_kit.stages import detect_stages

    base = load_model("testbed") if shape == "testbed" else make_tiny_llava()
    make = claims.random_control if noise == "re-initialised" else claims.permuted_control
    model = make(base, 0)
    amber = data.resolve_amber("testbed-probe", tmp_path, 8, seed=0)
    questions = data.resolve_amber("testbed-probe", tmp_path, 8, seed=0, queries="discriminative")
    images = [amber.image_path(q) for q in amber.queries]
    prompt, n = "describe this image.", 12
    events, trs, _ = object_token_events(model, amber, prompt, n, progress=False)
    llm = [trace(model, None, p, n) for p in ("describe.", "a boat.", "the sun.", "two cats.")]
    hidden = [trace(model, im, prompt, n, keep_hidden=True) for im in images]
    forced = claims.control_traces(model, trs, images, prompt, 1, progress=False, order=True)
    forced_llm = claims.control_traces(
        model, llm, [None] * 4, [t.prompt for t in llm], 1, progress=False
    )
    forced_hidden = claims.control_traces(
        model, hidden, images, prompt, 1, progress=False, keep_hidden=True
    )
    names = list(claims.CONTROL_KINDS)
    sets = {k: claims.TraceSet.of(v) for k, v in forced.items()}
    assert set(sets) == {*names, "layer-shuffled"}
    pairs = {k: (sets[k], claims.TraceSet.of(forced_llm[k])) for k in names}
    labelled = {}
    for k, control in claims.controls(model, 1).items():
        ev, ctrs, _ = object_token_events(control, amber, prompt, n, progress=False, force=trs)
        labelled[k] = claims.labelled_tokens(ev, ctrs, CFG)
    # skip presets: layers from the stages of half the images, judged on the others
    st = detect_stages(trs[0::2])
    presets = claims.preset_layers(st, CFG)
    judged = dataclasses.replace(amber, queries=amber.queries[1::2])
    judged_images = images[1::2]
    plain = [t.generated_text for t in trs[1::2]]
    counts = {
        "model": runs.preset_counts(model, judged, plain, presets, prompt, n, progress=False)[0]
    }
    for k, control in claims.controls(model, 1).items():
        texts = generate_texts(control, judged_images, [prompt] * 4, n, progress=False)
        counts[k] = runs.preset_counts(control, judged, texts, presets, prompt, n, progress=False)[
            0
        ]

    def xy(traces, step=None):
        f = token_features(traces[0]) if step is None else answer_features(traces, step=step)
        return coords_array(project(f, "tsne", perplexity=3, seed=0))

    fan = {"model": {"q": xy(hidden, 0)}, **{k: {"q": xy(v, 0)} for k, v in forced_hidden.items()}}
    tokens = {"model": xy(hidden), **{k: xy(v) for k, v in forced_hidden.items()}}
    k15 = claims.compression_k(st.n_layers, CFG)
    sweep = {}
    for k, lm in {"model": model, **claims.controls(model, 1)}.items():
        ks = [k15] if k15 <= len(stable_layers_by_js(st)) else []
        points = compression_sweep(lm, judged, st, ks, questions, 3, progress=False)
        sweep[k] = claims.sweep_answers(points, k15)
    assert sweep["model"] is None or sweep["model"].k == k15

    def of(d):
        return d["model"], {k: d[k] for k in names}

    model_set = claims.TraceSet.of(trs)
    model_pair = (model_set, claims.TraceSet.of(llm))
    free = claims.control_traces(
        model, trs, images, prompt, 1, progress=False, forced=False, order=True
    )
    free_sets = {k: claims.TraceSet.of(v) for k, v in free.items()}
    results = [f(model_set, free_sets, CFG) for f in (claims.near_zero_shallow, claims.sharp_rise)]
    results += [
        f(model_set, sets, CFG)
        for f in (
            claims.content_keeps_changing,
            claims.js_split,
            claims.entities_rise_again,
            claims.three_stages,
        )
    ]
    results += [
        claims.hallucinations_mutate(claims.labelled_tokens(events, trs, CFG), labelled, CFG),
        claims.correct_leads_first(claims.labelled_tokens(events, trs, CFG), labelled, CFG),
        *(f(*of(counts), CFG) for f in (claims.skip1_keeps, claims.skip2_fewer, claims.skip3_more)),
        claims.tokens_diverge(*of(tokens), CFG),
        claims.vqa_fan(*of(fan), CFG),
        claims.llm_fewer_mutations(model_pair, pairs, CFG),
        claims.compression(*of(sweep), CFG, n_layers=st.n_layers),
    ]
    assert sorted(r.number for r in results) == list(range(1, 16))
    shown = [r.sentence() for r in results if r.verdict == "shown"]
    assert not shown, "\n".join(shown)
    # every control was measured where the model was (teacher forcing, the model's layers)
    defined = [r for r in results if not math.isnan(r.model.value)]
    assert defined and all(all(r.controls.get(k) is not None for k in names) for r in defined)


def test_report_gathers_every_notebooks_claims(tmp_path):
    import json

    from lvlm_kit.report import write_report

    good, noise = traces(), flat()
    results = {
        "01_a": [claims.near_zero_shallow(good, C(noise), CFG)],
        "03_b": [
            claims.js_split(good, C(noise), CFG),
            claims.sharp_rise(flat(), C(noise), CFG),
            claims.near_zero_shallow(good, C(None), CFG),
        ],
    }
    for name, rs in results.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "claims.json").write_text(json.dumps([r.as_dict() for r in rs]))
        (tmp_path / name / "metrics.json").write_text("{}")
        (tmp_path / name / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    md, html = write_report(tmp_path)
    text = md.read_text()
    assert "Claims measured: 4; shown 2, not shown 1, inconclusive 0, no control 1." in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "**" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 1", "| 2", "| 6"]
    assert rows[2].endswith("**not shown** |") and "critical layer 4 of 12 (0.33)" in text
    assert rows[1].endswith("re-initialised n/a | **inconclusive (no control)** |")
    assert "| re-initialised 0." in rows[0]  # each control's value and interval
    page = html.read_text()
    assert page.count("<tr>") == 5 and page.count("data:image/png;base64,") == 4


def test_the_registry_binds_each_number_once_to_its_function_and_row():
    from lvlm_kit.claims import REGISTRY, kit, paper, spec_of

    assert sorted(REGISTRY) == list(range(1, 22))
    assert sorted(n for n, s in REGISTRY.items() if s.source == "paper") == list(range(1, 16))
    for n, spec in REGISTRY.items():
        home = paper if spec.source == "paper" else kit
        assert (
            getattr(home, spec.key) is spec.function and getattr(claims, spec.key) is spec.function
        )
        assert spec_of(spec.function) is spec_of(n) is spec
    assert len({s.key for s in REGISTRY.values()}) == 21
    # a result names the claim it was built by, from the registry
    r = claims.near_zero_shallow(traces(), C(flat()), CFG)
    assert (r.number, r.key, r.figure) == (1, "near_zero_shallow", "§3, Fig. 2")
    with pytest.raises(KeyError, match="not a registered claim"):
        spec_of(test_the_registry_binds_each_number_once_to_its_function_and_row)
    with pytest.raises(ValueError, match="claim 1 is already near_zero_shallow"):
        claims.paper_claim(1, "x", "y", "z")(lambda: None)


def test_one_bootstrap_band_for_figures_and_notebooks():
    values = np.random.default_rng(3).normal(size=(30, 4))
    rng = np.random.default_rng(7)
    by_hand = np.stack([values[rng.integers(0, 30, 30)].mean(0) for _ in range(200)])
    low, high = claims.bootstrap_band(30, lambda idx: values[idx].mean(0), 200, 7)
    np.testing.assert_array_equal(low, np.percentile(by_hand, 2.5, axis=0))
    np.testing.assert_array_equal(high, np.percentile(by_hand, 97.5, axis=0))
    assert (low < values.mean(0)).all() and (values.mean(0) < high).all()
    # one generator shared by two bands draws them in turn, as a notebook's seeded stream
    shared = np.random.default_rng(7)
    first = claims.bootstrap_band(30, lambda idx: values[idx].mean(0), 200, shared)
    second = claims.bootstrap_band(30, lambda idx: values[idx].mean(0), 200, shared)
    np.testing.assert_array_equal(first[0], low)
    assert not np.array_equal(second[0], low)
    # NaN resamples: skipped with ignore_nan, else they make the band NaN
    holes = values.copy()
    holes[0] = np.nan
    stat = lambda idx: holes[idx[:1]].mean(0)  # noqa: E731  one unit: sometimes the NaN one
    assert np.isfinite(claims.bootstrap_band(30, stat, 200, 0, ignore_nan=True)[0]).all()
    assert np.isnan(claims.bootstrap_band(30, stat, 200, 0)[0]).all()
