"""Every supported family, end to end, on a tiny random-weight model of its real classes.

For each family (:mod:`tests.families`): the model and its processor load through
``load_model`` from a saved folder, the last-layer lens equals the model's own logits, the
image-token positions are exactly where the model puts image features, ``trace`` emits
the tokens of plain greedy ``generate``, and skipping layers with the KV cache gives the
tokens of a no-cache recompute.
"""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
import transformers
from conftest import contrast_step, run_notebook
from families import FAMILIES, save_tiny
from packaging.version import Version

from lvlm_kit import load_model, trace
from lvlm_kit.anatomy import FAMILIES as KIT_FAMILIES
from lvlm_kit.anatomy import UNSUPPORTED, check_supported, resolve_anatomy
from lvlm_kit.generation import greedy_config
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.loading import HeadMismatchError, LoadedModel, check_head
from lvlm_kit.processors import _without_video, torchvision_available
from lvlm_kit.surgery import ResidualRecorder, skip_layers

PROMPT = "Describe the image."
VISION = [name for name in FAMILIES if KIT_FAMILIES[name].kind == "vision"]


HAS_TORCHVISION = torchvision_available()
NEEDS_TORCHVISION = (
    "needs torchvision, which does not import beside this torch; make test runs it in .venv-tv"
)


def _skip_without_torchvision(name: str) -> None:
    if "torchvision" in KIT_FAMILIES[name].packages and not HAS_TORCHVISION:
        pytest.skip(f"{name}: {NEEDS_TORCHVISION}")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    _skip_without_torchvision(name)
    folder = save_tiny(name, tmp_path_factory.mktemp(name))
    return name, load_model(folder, dtype="float32")


def _image(seed: int, size: tuple[int, int] = (60, 80)) -> np.ndarray:
    return (np.random.RandomState(seed).rand(*size, 3) * 255).astype(np.uint8)


def _inputs(lm, seed=1, size=(60, 80)):
    return prepare_inputs(lm, _image(seed, size) if lm.is_vision else None, PROMPT)[0]


def _generate(lm, inputs, n=8, use_cache=True):
    cfg = greedy_config(lm.model, n)
    cfg.use_cache = use_cache
    out = lm.model.generate(**inputs, generation_config=cfg)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_every_kit_family_has_a_tiny_model():
    assert sorted(FAMILIES) == sorted(KIT_FAMILIES)


def test_cross_attention_families_are_refused_with_the_reason():
    with pytest.raises(NotImplementedError, match="cross-attention"):
        check_supported("mllama")
    assert set(UNSUPPORTED) == {"mllama", "idefics"}


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the error raised without torchvision")
def test_a_family_that_needs_torchvision_says_so_before_loading(tmp_path):
    import transformers

    transformers.Mistral3Config().save_pretrained(tmp_path)  # a config, no weights
    with pytest.raises(RuntimeError, match=r"'mistral3' needs the package\(s\) \['torchvision'\]"):
        load_model(tmp_path)


def test_cache_slots_keep_each_layers_attention_type():
    from types import SimpleNamespace

    from lvlm_kit.surgery import cache_slots

    s, f = "sliding_attention", "full_attention"
    hybrid = SimpleNamespace(n_layers=6, layer_types=(s, f, s, f, s, f))
    assert cache_slots(hybrid, [0, 3]) == {1: 1, 2: 0, 4: 2, 5: 3}
    uniform = SimpleNamespace(n_layers=4, layer_types=None)
    assert cache_slots(uniform, [0, 2]) == {1: 0, 3: 1}
    with pytest.raises(ValueError, match="Keep at least one 'sliding_attention' layer"):
        cache_slots(hybrid, [0, 2, 4])


def test_last_layer_lens_equals_the_models_logits(family):
    name, lm = family
    inputs = _inputs(lm)
    with torch.inference_mode(), ResidualRecorder(lm.anatomy, all_positions=True) as rec:
        logits = lm.model(**inputs).logits[0]  # [seq, V]
    residuals = rec.stacked()[0]  # [L+1, seq, d]
    lensed = lm.lens().logits(residuals[-1], layer=lm.anatomy.n_layers)
    torch.testing.assert_close(lensed, logits.float(), atol=1e-4, rtol=1e-4)
    transform = (lm.anatomy.softcap, lm.anatomy.logit_scale)
    aya_scales = Version(transformers.__version__) >= Version("5.25")
    if name in ("paligemma", "gemma2", "gemma3_text"):
        assert transform == (30.0, None)  # these heads soft-cap
    elif name in ("cohere", "cohere2") or (name == "aya_vision" and aya_scales):
        assert transform == (None, 0.25)  # these scale (Aya Vision from transformers 5.25)
    else:
        assert transform == (None, None)  # Gemma 3's LVLM head does neither


TRANSFORMED = ["paligemma", "gemma2", "gemma3_text", "cohere", "cohere2", "aya_vision"]


@pytest.mark.parametrize("name", TRANSFORMED)
def test_the_head_transform_is_measured_against_the_logits(name, tmp_path, monkeypatch):
    lm = load_model(save_tiny(name, tmp_path), dtype="float32")  # checks at load
    with torch.no_grad():  # logits of a few hundred: a soft-cap of 30 is far from the identity
        lm.anatomy.lm_head.weight.mul_(300.0 / lm.anatomy.lm_head.weight.abs().max())
    lm.forget_lens()
    errors = check_head(lm, lm.lens())
    assert errors["expected"] < 1e-5 and list(errors) == ["expected"]
    # A planted mismatch: the family entry forgets its transform.
    wrong = dataclasses.replace(KIT_FAMILIES[lm.anatomy.model_type], softcap=None, scale=None)
    monkeypatch.setitem(KIT_FAMILIES, lm.anatomy.model_type, wrong)
    planted = LoadedModel(lm.model, lm.processor, resolve_anatomy(lm.model), name)
    kind = "soft-cap 30" if name in TRANSFORMED[:3] else "logit scale 0.25"
    message = (
        rf"{type(lm.model).__name__} .*transformers {re.escape(transformers.__version__)}"
        rf": .*expects the head transform none .*the model's logits match: {kind}"
    )
    with pytest.raises(HeadMismatchError, match=message):
        planted.lens()


@pytest.mark.parametrize("name", ["cohere", "aya_vision"])
def test_a_family_entry_with_the_wrong_transform_fails_at_load(name, tmp_path, monkeypatch):
    folder = save_tiny(name, tmp_path)
    model_type = load_model(folder, dtype="float32").anatomy.model_type
    wrong = dataclasses.replace(KIT_FAMILIES[model_type], scale=None)
    monkeypatch.setitem(KIT_FAMILIES, model_type, wrong)
    with pytest.raises(HeadMismatchError, match="the model's logits match: logit scale 0.25"):
        load_model(folder, dtype="float32")


def test_trace_emits_the_tokens_of_greedy_generate(family):
    _, lm = family
    image = _image(1) if lm.is_vision else None
    tr = trace(lm, image, PROMPT, max_new_tokens=8)
    assert tr.token_ids.tolist() == _generate(lm, _inputs(lm))
    assert tr.token_rank[:, -1].eq(0).all()  # the last layer's top-1 is the emitted token


@pytest.mark.parametrize("layers", [[1, 2], [0], [3]])
def test_skipping_with_the_kv_cache_equals_a_recompute(family, layers):
    _, lm = family
    inputs = _inputs(lm)
    with skip_layers(lm.anatomy, layers):
        cached = _generate(lm, inputs, use_cache=True)
        uncached = _generate(lm, inputs, use_cache=False)
    assert cached == uncached


@pytest.mark.parametrize("size", [(60, 80), (100, 60)])
def test_image_positions_are_where_the_model_puts_image_features(family, size):
    name, lm = family
    if not lm.is_vision:
        return  # a text model has no image tokens
    inputs = _inputs(lm, size=size)
    ids = inputs["input_ids"][0]
    with torch.inference_mode(), ResidualRecorder(lm.anatomy, all_positions=True) as rec:
        lm.model(**inputs)
    first = rec.stacked()[0, 0]  # [seq, d] the decoder's input
    embedded = lm.anatomy.embed_tokens(ids).float()
    # Text positions enter as their (possibly scaled) embeddings; the scale is read at the
    # last position, which is always text (the generation prompt).
    scale = (first[-1] @ embedded[-1]) / (embedded[-1] @ embedded[-1])
    text = torch.isclose(first, scale * embedded, atol=1e-5, rtol=1e-4).all(-1)
    image = lm.anatomy.image_positions(ids)
    assert image.sum() > 0
    assert torch.equal(~text, image), name


@pytest.mark.torchvision
@pytest.mark.skipif(not HAS_TORCHVISION, reason=NEEDS_TORCHVISION)
@pytest.mark.parametrize("name", VISION)
def test_without_torchvision_the_processor_inserts_the_same_image_tokens(name, tmp_path):
    """What a user with torchvision gets (AutoProcessor: torchvision image and video
    processors) against what the kit builds without it (the PIL image processor, no video
    processor): the same token ids, so the same image-token positions. The pixels differ a
    little, as transformers' two resizing backends do: on average by at most half an 8-bit
    grey level, a few pixels by up to 16 levels (measured: 0.004-0.38 and 1-16)."""
    import transformers
    from transformers import AutoProcessor

    folder = save_tiny(name, tmp_path / name)
    full = AutoProcessor.from_pretrained(folder)
    cls, extra = _without_video(type(full))
    images_only = cls.from_pretrained(folder, **extra)
    pil = getattr(transformers, type(full.image_processor).__name__ + "Pil")
    images_only.image_processor = pil.from_pretrained(folder)
    text = "Describe the image."
    if KIT_FAMILIES[name].chat:
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        text = full.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    for size in ((60, 80), (100, 60)):
        a = full(images=_image(1, size), text=text, return_tensors="pt")
        b = images_only(images=_image(1, size), text=text, return_tensors="pt")
        assert torch.equal(a["input_ids"], b["input_ids"]), (name, size)
        std = torch.tensor(full.image_processor.image_std).min()
        diff = (a["pixel_values"] - b["pixel_values"]).abs() * std * 255  # in grey levels
        assert diff.mean() <= 0.5 and diff.max() <= 16.5, (name, size)


@pytest.mark.slow
@pytest.mark.kernels
@pytest.mark.parametrize("name", VISION)
def test_notebook_00_runs_on_the_family(name, tmp_path):
    _skip_without_torchvision(name)
    folder = save_tiny(name, tmp_path / "model")
    out = tmp_path / "out"
    run_notebook(
        "00_quickstart",
        tmp_path,
        {"MODEL": str(folder), "OUTPUT_DIR": str(out), "MAX_NEW_TOKENS": 8},
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_layers"] == 4 and 1 <= metrics["n_tokens"] <= 8, metrics
    assert metrics["last_layer_top1_share"] == 1.0  # the lens's last layer is the model's output
    assert list(out.glob("*.png"))


@pytest.mark.slow
@pytest.mark.kernels
@pytest.mark.parametrize(
    "lvlm, llm", [("qwen2_vl", "qwen2"), ("gemma3", "gemma3_text"), ("aya_vision", "cohere2")]
)
def test_notebook_07_compares_a_family_with_its_text_decoder(lvlm, llm, tmp_path):
    out = tmp_path / "out"
    run_notebook(
        "07_lvlm_vs_llm",
        tmp_path,
        {
            "MODEL": str(save_tiny(lvlm, tmp_path / lvlm)),
            "LLM_MODEL": str(save_tiny(llm, tmp_path / llm)),
            "OUTPUT_DIR": str(out),
            "N_IMAGES": 4,
            "MAX_NEW_TOKENS": 8,
        },
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tokens_with_mutation"]) == {"lvlm", "llm"}
    (claim,) = json.loads((out / "claims.json").read_text())
    assert claim["verdict"] in ("shown", "not shown", "inconclusive")
    assert (out / "js_lvlm_vs_llm.png").is_file()


def test_layer_contrast_decoding_reads_the_familys_layers(family):
    """One anchor-contrast step equals the lens's own arithmetic, and a contrasted
    generation runs to its length (DoLa-style, over the lower half of the layers)."""
    from transformers import LogitsProcessorList

    from lvlm_kit.applications import LayerContrast

    _, lm = family
    inputs = _inputs(lm)
    anchor = LayerContrast(lm, [2], "anchor", alpha=0.5, relative_top=0.05)
    out, logp = contrast_step(lm, _image(1) if lm.is_vision else None, PROMPT, anchor)
    keep = logp[-1] >= logp[-1].max() + math.log(0.05)
    expected = (logp[-1] + 0.5 * logp[2]).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    dola = LayerContrast(lm, [1, 2], "dola")
    with dola, torch.inference_mode():
        cfg = greedy_config(lm.model, 6)
        cfg.eos_token_id = None  # run to the full length
        seq = lm.model.generate(
            **inputs, generation_config=cfg, logits_processor=LogitsProcessorList([dola])
        )
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 6 and len(dola.chosen) == 6
