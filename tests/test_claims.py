"""Claims: each statistic checked on synthetic data where the answer is known both ways, the
verdict rules, and every claim on random weights (never shown)."""

import math

import numpy as np
import pytest
import torch
from conftest import fake_trace, make_tiny_llava

from lvlm_kit import claims, trace
from lvlm_kit.claims import ClaimConfig, Estimate, LabelledTokens, PresetCounts, SweepAnswers

CFG = ClaimConfig(n_boot=200, n_boot_stages=30)
L = 12


def C(data):
    """One control, under the name notebooks give the re-initialised copy."""
    return {"re-initialised": data}


def traces(n_images=8, shallow_p=0.01, final_p=0.9, rise_at=4, mutate=None, seed=0, words=None):
    """Per image 6 tokens: p(emitted) `shallow_p` before `rise_at`, `final_p` from it; JS high
    before the rise, low after; tokens in `mutate` (indices) spike in JS into layer 9."""
    g = torch.Generator().manual_seed(seed)
    out = []
    words = words or ["the", "red", "boat", "is", "a", "fish"]
    for _ in range(n_images):
        p = torch.full((6, L + 1), shallow_p)
        p[:, rise_at:] = final_p
        js = torch.empty(6, L)
        js[:, :rise_at] = 0.3 + 0.02 * torch.rand(6, rise_at, generator=g)
        js[:, rise_at:] = 0.004 + 0.001 * torch.rand(6, L - rise_at, generator=g)
        for t in mutate or ():
            js[t, 8] = 0.2
        out.append(fake_trace(words, p, js=js))
    return claims.TraceSet.of(out)


def flat(n_images=8, seed=1):
    """Random-weight-like traces: p flat near 1/V, JS falling smoothly, no rise anywhere."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_images):
        p = torch.full((6, L + 1), 0.02) + 0.001 * torch.rand(6, L + 1, generator=g)
        js = (0.05 * 0.8 ** torch.arange(L, dtype=torch.float32)).repeat(6, 1)
        js *= 1 + 0.05 * torch.rand(6, L, generator=g)
        out.append(fake_trace(["the", "red", "boat", "is", "a", "fish"], p, js=js))
    return claims.TraceSet.of(out)


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


def test_token_probability_claims_both_ways():
    good, bad, noise = traces(), traces(shallow_p=0.5, final_p=0.6), flat()
    assert claims.near_zero_shallow(good, C(noise), CFG).verdict == "shown"
    assert claims.near_zero_shallow(bad, C(noise), CFG).verdict == "not shown"
    assert claims.sharp_rise(good, C(noise), CFG).verdict == "shown"
    assert claims.sharp_rise(bad, C(noise), CFG).verdict == "not shown"
    r = claims.near_zero_shallow(good, C(good), CFG)  # a control that shows it voids the claim
    assert r.verdict == "not shown" and "holds on the re-initialised control too" in r.notes[-1]
    r = claims.near_zero_shallow(good, {"re-initialised": noise, "permuted": good}, CFG)
    assert r.verdict == "not shown"  # beating one control is not enough
    assert r.controls["re-initialised"].holds == "no" and r.controls["permuted"].holds == "yes"


def test_content_tokens_keep_changing_both_ways():
    good, same = traces(), traces()
    for t in good.traces:  # content tokens (red, boat, fish) change top-1 at every deep layer
        t.topk_ids[[1, 2, 5], :, 0] = torch.arange(L + 1)
    assert claims.content_keeps_changing(good, C(same), CFG).verdict == "shown"
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


def test_divergence_and_stage_claims_both_ways():
    good = traces(mutate=[1, 2, 5])  # content tokens rise again into layer 9
    no_mutation, noise = traces(), flat()
    assert claims.js_split(good, C(noise), CFG).verdict == "shown"
    assert claims.js_split(flat(), C(noise), CFG).verdict == "not shown"
    assert claims.entities_rise_again(good, C(noise), CFG).verdict == "shown"
    assert claims.entities_rise_again(no_mutation, C(noise), CFG).verdict == "not shown"
    assert good.stages.mutation_layers == [9]
    assert claims.three_stages(good, C(noise), CFG).verdict == "shown"
    assert claims.three_stages(no_mutation, C(noise), CFG).verdict == "not shown"
    assert noise.stages.mutation_layers == []  # a smoothly falling curve: no mutation stage


def labelled(hallucinated_mutate, correct_mutate, led, n=12):
    rows = [np.array([[1, hallucinated_mutate, led], [0, correct_mutate, np.nan]], float)] * n
    return LabelledTokens(rows)


def test_hallucination_claims_both_ways():
    noise = labelled(0, 0, 0)
    assert claims.hallucinations_mutate(labelled(1, 0, 1), C(noise), CFG).verdict == "shown"
    assert claims.hallucinations_mutate(labelled(1, 1, 1), C(noise), CFG).verdict == "not shown"
    assert claims.correct_leads_first(labelled(1, 0, 1), C(noise), CFG).verdict == "shown"
    assert claims.correct_leads_first(labelled(1, 0, 0), C(noise), CFG).verdict == "not shown"
    empty = LabelledTokens([np.empty((0, 3))] * 5)
    assert claims.hallucinations_mutate(empty, C(noise), CFG).verdict == "inconclusive"


def counts(overlap1, chair_plain, chair2, chair3, n=12):
    ones = np.ones(n) * 10
    return PresetCounts(
        nouns={k: ones for k in ("plain", "skip1", "skip2", "skip3")},
        hallucinated={"plain": ones * chair_plain, "skip1": ones * chair_plain,
                      "skip2": ones * chair2, "skip3": ones * chair3},
        overlap={"plain": np.ones(n), "skip1": np.full(n, overlap1),
                 "skip2": np.full(n, 0.9), "skip3": np.full(n, 0.5)},
    )  # fmt: skip


def test_skip_claims_both_ways():
    good, bad = counts(0.95, 0.3, 0.1, 0.4), counts(0.5, 0.1, 0.3, 0.1)
    fs = (claims.skip1_keeps, claims.skip2_fewer, claims.skip3_more)
    assert [f(good, C(bad), CFG).verdict for f in fs] == ["shown"] * 3
    assert [f(bad, C(bad), CFG).verdict for f in fs] == ["not shown"] * 3
    # a control without the presets (random weights detect no stages) cannot pass the claim
    assert [f(good, C(None), CFG).verdict for f in fs] == ["inconclusive (no control)"] * 3
    no_presets = PresetCounts({"plain": np.ones(3)}, {"plain": np.ones(3)}, {"plain": np.ones(3)})
    r = claims.skip2_fewer(no_presets, C(good), CFG)
    assert r.verdict == "inconclusive" and "define no skip2 preset" in r.notes[0]


def test_feature_claims_both_ways():
    rng = np.random.default_rng(0)
    fan = rng.normal(size=(20, L, 2)) * np.linspace(0.2, 3, L)[None, :, None]
    ball = rng.normal(size=(20, 1, 2)).repeat(L, axis=1)  # the same spread at every layer
    assert claims.tokens_diverge(fan, C(ball), CFG).verdict == "shown"
    assert claims.tokens_diverge(ball, C(ball), CFG).verdict == "not shown"
    assert claims.vqa_fan(fan, C(ball), CFG).verdict == "shown"
    assert claims.vqa_fan(ball, C(ball), CFG).verdict == "not shown"


def test_llm_and_compression_claims_both_ways():
    mutating, calm = traces(mutate=[0, 1, 2, 3, 4, 5]), traces()
    assert claims.llm_fewer_mutations((mutating, calm), C((calm, calm)), CFG).verdict == "shown"
    assert claims.llm_fewer_mutations((calm, mutating), C((calm, calm)), CFG).verdict == "not shown"
    keeps = SweepAnswers(2, np.full(20, 0.95), np.full(20, 0.93))
    loses = SweepAnswers(2, np.full(20, 0.95), np.full(20, 0.70))
    chance = SweepAnswers(2, np.full(20, 0.5), np.full(20, 0.5))
    assert claims.compression(keeps, C(chance), CFG).verdict == "shown"
    assert claims.compression(loses, C(chance), CFG).verdict == "not shown"
    assert claims.compression(chance, C(chance), CFG).verdict == "not shown"  # nothing to keep


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


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["re-initialised", "permuted"])
@pytest.mark.parametrize("shape", ["testbed", "tiny-llava"])
def test_no_claim_is_shown_on_noise(shape, noise, tmp_path):
    """Every claim's analysis on a noise copy of a model, against that model's two controls."""
    from lvlm_kit import data, load_model
    from lvlm_kit.applications import compression_sweep, stable_layers_by_js
    from lvlm_kit.features import answer_features, coords_array, project, token_features
    from lvlm_kit.hallucination import object_token_events

    base = load_model("testbed") if shape == "testbed" else make_tiny_llava()
    make = claims.random_control if noise == "re-initialised" else claims.permuted_control
    runs = {"model": make(base, 0), **claims.controls(base, 1)}
    amber = data.resolve_amber("testbed-probe", tmp_path, 6, seed=0)
    questions = data.resolve_amber("testbed-probe", tmp_path, 6, seed=0, queries="discriminative")
    prompt, n = "describe this image.", 12
    sets, llm, labelled, presets, xy, answers = {}, {}, {}, {}, {}, {}
    for name, lm in runs.items():
        events, trs, _ = object_token_events(lm, amber, prompt, n, progress=False)
        sets[name] = claims.TraceSet.of(trs)
        llm[name] = claims.TraceSet.of([trace(lm, None, p, n) for p in ("describe.", "a boat.")])
        labelled[name] = claims.labelled_tokens(events, trs, sets[name].stages, CFG)
        presets[name], _ = claims.preset_counts(
            lm, amber, trs, sets[name].stages, prompt, n, progress=False
        )
        hidden = [
            trace(lm, amber.image_path(q), prompt, n, keep_hidden=True) for q in amber.queries
        ]
        xy[name] = (
            coords_array(project(token_features(hidden[0]), "tsne", seed=0)),
            coords_array(project(answer_features(hidden), "tsne", perplexity=3, seed=0)),
        )
        k = min(1, len(stable_layers_by_js(sets[name].stages)))
        points = compression_sweep(lm, amber, sets[name].stages, [k], questions, 3, progress=False)
        answers[name] = claims.sweep_answers(points)

    def of(d, pick=lambda x: x):
        return pick(d["model"]), {k: pick(v) for k, v in d.items() if k != "model"}

    results = []
    for f in (claims.near_zero_shallow, claims.sharp_rise, claims.content_keeps_changing,
              claims.js_split, claims.entities_rise_again, claims.three_stages):  # fmt: skip
        results.append(f(*of(sets), CFG))
    pairs = {k: (sets[k], llm[k]) for k in runs}
    results += [claims.hallucinations_mutate(*of(labelled), CFG),
                claims.correct_leads_first(*of(labelled), CFG),
                claims.skip1_keeps(*of(presets), CFG),
                claims.skip2_fewer(*of(presets), CFG),
                claims.skip3_more(*of(presets), CFG),
                claims.tokens_diverge(*of(xy, lambda v: v[0]), CFG),
                claims.vqa_fan(*of(xy, lambda v: v[1]), CFG),
                claims.llm_fewer_mutations(*of(pairs), CFG),
                claims.compression(*of(answers), CFG)]  # fmt: skip
    assert sorted(r.number for r in results) == list(range(1, 16))
    shown = [r.sentence() for r in results if r.verdict == "shown"]
    assert not shown, "\n".join(shown)
    assert all(set(r.controls) == set(claims.CONTROL_KINDS) for r in results)


def test_report_gathers_every_notebooks_claims(tmp_path):
    import json

    from lvlm_kit.reproduce import write_report

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
