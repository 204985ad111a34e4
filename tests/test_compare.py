"""One run against a reference (lvlm_kit.compare) and the claims built on it (16-20)."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_llava

from lvlm_kit import claims, compare, runs
from lvlm_kit.data import export_amber, read_amber


@pytest.fixture(scope="module")
def amber(tmp_path_factory):
    return read_amber(export_amber(tmp_path_factory.mktemp("amber") / "a", n_images=4, seed=1))


def test_token_agreement_is_the_shared_prefix_share():
    ref = torch.tensor([1, 2, 3, 4])
    assert compare.token_agreement(ref, ref) == 1.0
    assert compare.token_agreement(ref, torch.tensor([1, 2, 5, 4])) == 0.5  # after a change
    assert compare.token_agreement(ref, torch.tensor([1, 2])) == 0.5  # stopped early
    assert compare.token_agreement(ref, torch.tensor([9, 2, 3, 4])) == 0.0


def test_lens_kl_is_zero_against_itself_and_positive_against_another_model(tiny_llava, image):
    tokens = torch.tensor([5, 6, 7, 8])
    same = compare.lens_kl(tiny_llava, tiny_llava, image, "describe the image.", tokens)
    assert same.shape == (tiny_llava.anatomy.n_layers + 1,)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    other = make_tiny_llava(seed=3)
    kl = compare.lens_kl(tiny_llava, other, image, "describe the image.", tokens)
    assert (kl > 1e-4).all() and np.isfinite(kl).all()


def test_lens_kl_reads_every_continuation_position(tiny_llava, image):
    """The KL at the last layer equals the mean over positions of a direct computation."""
    from lvlm_kit.inputs import prepare_inputs

    other = make_tiny_llava(seed=3)
    tokens = torch.tensor([5, 6, 7])
    kl = compare.lens_kl(tiny_llava, other, image, "describe the image.", tokens)
    logps = []
    for m in (tiny_llava, other):
        inputs, _ = prepare_inputs(m, image, "describe the image.")
        n = inputs["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], tokens[:-1][None]], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.no_grad():
            logits = m.model(**inputs).logits[0, n - 1 :]
        logps.append(torch.log_softmax(logits.float(), -1))
    direct = (logps[0].exp() * (logps[0] - logps[1])).sum(-1).mean()
    assert kl[-1] == pytest.approx(float(direct), abs=1e-5)


def test_self_comparison_keeps_everything_and_random_weights_do_not(tiny_llava, amber):
    prompt = amber.queries[0]["query"]
    ref = runs.run(tiny_llava, amber, prompt, 6, name="full")
    assert len(ref.traces) == 4 and ref.memory_bytes > 0
    assert ref.counts.nouns.shape == ref.counts.covered.shape == ref.counts.truth.shape == (4,)
    same = compare.compare(tiny_llava, ref, tiny_llava, ref, amber, prompt)
    assert (same.token_agreement == 1).all() and np.allclose(same.lens_kl, 0, atol=1e-6)
    assert same.worst_lens_kl == pytest.approx(0, abs=1e-6)
    control_model = claims.random_control(tiny_llava, 0)
    control_run = runs.run(control_model, amber, prompt, 6, name="random")
    control = compare.compare(tiny_llava, ref, control_model, control_run, amber, prompt)
    assert control.lens_kl.shape == (4, tiny_llava.anatomy.n_layers + 1)
    assert control.worst_lens_kl == pytest.approx(control.lens_kl.mean(0).max())
    table = compare.summary_table(ref, [same, control])
    assert list(table.index) == ["full", "full", "random"]
    assert list(table.loc["random"].iloc[:3]) == pytest.approx(
        [
            control_run.memory_bytes / 2**20,
            control.token_agreement.mean(),
            control.worst_lens_kl,
        ]
    )
    assert (
        table.iloc[0]["token agreement"] == 1 and table.iloc[0]["worst-layer lens KL (nats)"] == 0
    )
    assert table.loc["random", "critical layer"] == control_run.stages.critical_layer
    assert table.loc["random", "CHAIR"] == pytest.approx(control_run.chair, nan_ok=True)
    cfg = claims.ClaimConfig(n_boot=200, n_boot_stages=20)
    same_tokens = claims.quant_same_tokens(same, {"re-initialised": control}, cfg)
    assert same_tokens.key == "quant_same_tokens[full]" and same_tokens.model.value == 1.0
    lens = claims.quant_lens_close(same, {"re-initialised": control}, cfg)
    assert lens.model.value == pytest.approx(0, abs=1e-6) and lens.model.holds == "yes"
    stages = claims.quant_stages_kept(same, {"re-initialised": control}, cfg)
    assert stages.model.value == 0 and stages.model.holds == "yes"
    halluc = claims.quant_hallucination_kept(same, {"re-initialised": control}, cfg)
    assert halluc.model.value == 0 and "Cover" in halluc.notes[0]
    with pytest.raises(ValueError, match="same images"):
        c = ref.counts
        two = runs.Counts(c.nouns[:2], c.hallucinated[:2], c.covered[:2], c.truth[:2])
        short = runs.Run("x", ref.traces[:2], ref.stages, two, 1)
        compare.compare(tiny_llava, ref, tiny_llava, short, amber, prompt)
