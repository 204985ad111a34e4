import math
from dataclasses import fields

import pytest
import torch

from lvlm_kit import Trace, trace
from lvlm_kit.generation import greedy_config
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.lens import Lens
from lvlm_kit.surgery import ResidualRecorder
from lvlm_kit.trace_file import TraceFileError
from lvlm_kit.tracing import (
    _decode_prefixes,
    _decode_with_offsets,
    chunk_steps,
    reduce_steps,
    topk_last,
    word_token_id,
)

PROMPT = "Describe the image."


@pytest.fixture(scope="module")
def llava_trace(tiny_llava, image) -> Trace:
    return trace(tiny_llava, image, PROMPT, 12, keep_hidden=True, dola_compat=True)


@pytest.mark.parametrize("which", ["tiny_llava", "tiny_llama"])
def test_trace_tokens_equal_plain_greedy_generate(which, request, image):
    loaded = request.getfixturevalue(which)
    img = image if loaded.is_vision else None
    tr = trace(loaded, img, PROMPT, 12)
    inputs, _ = prepare_inputs(loaded, img, PROMPT)
    plain = loaded.model.generate(**inputs, generation_config=greedy_config(loaded.model, 12))
    assert tr.token_ids.tolist() == plain[0, inputs["input_ids"].shape[1] :].tolist()
    assert tr.n_tokens == 12 and tr.n_layers == 4


def test_trace_values(llava_trace, tiny_llava):
    tr = llava_trace
    K, L = tr.n_tokens, tr.n_layers
    assert tr.token_prob.shape == (K, L + 1) and tr.js.shape == (K, L)
    assert tr.topk_ids.shape == (K, L + 1, 10) and tr.hidden.shape == (K, L + 1, 64)
    # Greedy: the emitted token is the last layer's top-1, rank 0, and its top-1 prob.
    assert tr.token_rank[:, -1].tolist() == [0] * K
    assert torch.equal(tr.topk_ids[:, -1, 0], tr.token_ids)
    torch.testing.assert_close(tr.token_prob[:, -1], tr.topk_probs[:, -1, 0])
    assert bool(((tr.js >= 0) & (tr.js <= math.log(2))).all())
    assert bool((tr.entropy <= math.log(tiny_llava.anatomy.vocab_size) + 1e-5).all())
    assert (tr.topk_probs[:, :, :-1] >= tr.topk_probs[:, :, 1:]).all()
    assert tr.js_dola.dtype == torch.float64
    assert int(tr.image_positions.sum()) == 16
    assert tr.tokens == [tr.decode(i) for i in tr.token_ids]
    assert tr.generated_text.replace(" ", "") == "".join(
        t for t in tr.tokens if t not in ("</s>", "<pad>")
    ).replace(" ", "")


def test_trace_probs_match_model_softmax(llava_trace, tiny_llava, image):
    # Step 0 is the prefill: its last-layer lens is the model's own next-token softmax.
    inputs, _ = prepare_inputs(tiny_llava, image, PROMPT)
    with torch.inference_mode():
        probs = tiny_llava.model(**inputs).logits[0, -1].softmax(-1)
    first = llava_trace.token_ids[0]
    assert llava_trace.token_prob[0, -1].item() == pytest.approx(probs[first].item(), abs=1e-6)


def test_chunking_does_not_change_results(llava_trace, tiny_llava):
    lens = Lens(tiny_llava.anatomy)
    big = reduce_steps(lens, llava_trace.hidden, llava_trace.token_ids, chunk_mb=1024)
    tiny = reduce_steps(lens, llava_trace.hidden, llava_trace.token_ids, chunk_mb=1e-6)
    # Ids and ranks are exact; floats may differ in the last ulp (BLAS blocks by batch size).
    for key in big:
        for other in (tiny[key], getattr(llava_trace, key)):
            if big[key].is_floating_point():
                torch.testing.assert_close(big[key], other, atol=1e-6, rtol=1e-5)
            else:
                assert torch.equal(big[key], other), key


@pytest.mark.parametrize("steps", [1, 5, 9])
def test_reducing_while_generating_keeps_results_and_frees_residuals(
    steps, tiny_llava, image, monkeypatch
):
    # chunk_mb sized for `steps` steps per chunk. When 12 steps of residuals (5 x 64 float32
    # each) do not fit in it, trace reduces each chunk during generate() as soon as its
    # tokens are known and holds no more than one chunk; otherwise it reduces after.
    V, L1 = tiny_llava.anatomy.vocab_size, tiny_llava.anatomy.n_layers + 1
    chunk_mb = steps * 4 * (L1 + 6) * V / 2**20
    assert chunk_steps(chunk_mb, L1, V) == steps
    streams = 12 * L1 * 64 * 4 > chunk_mb * 2**20
    assert streams == (steps < 9)
    held, calls = [], []
    stacked = ResidualRecorder.stacked

    def spy(self, start=0, stop=None):
        held.append(sum(step is not None for step in self.steps))
        calls.append((start, stop))
        return stacked(self, start, stop)

    monkeypatch.setattr(ResidualRecorder, "stacked", spy)
    kw = dict(watch=["red"], dola_compat=True, skip=[1])
    whole = trace(tiny_llava, image, PROMPT, 12, chunk_mb=1024, **kw)
    assert calls == [(0, 12)]  # one chunk, after the generation
    held.clear(), calls.clear()
    chunked = trace(tiny_llava, image, PROMPT, 12, chunk_mb=chunk_mb, **kw)
    assert calls == [(a, min(a + steps, 12)) for a in range(0, 12, steps)]
    assert max(held) == (steps if streams else 12)
    for key in ("token_ids", "topk_ids", "token_rank"):
        assert torch.equal(getattr(whole, key), getattr(chunked, key)), key
    for key in ("topk_probs", "token_prob", "entropy", "js", "js_dola", "watch_probs"):
        a, b = getattr(whole, key), getattr(chunked, key)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    held.clear()
    kept = trace(tiny_llava, image, PROMPT, 12, chunk_mb=chunk_mb, keep_hidden=True, **kw)
    assert max(held) == 12 and kept.hidden.shape == (12, L1, 64)
    assert torch.equal(kept.js, chunked.js)


def test_save_load_round_trip_exact(llava_trace, tmp_path):
    path = llava_trace.save(tmp_path / "sub" / "t.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.safetensors"]
    back = Trace.load(path)
    for f in fields(Trace):
        a, b = getattr(llava_trace, f.name), getattr(back, f.name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), f.name
        else:
            assert a == b, f.name


def test_save_without_optional_arrays(tiny_llama, tmp_path):
    tr = trace(tiny_llama, None, PROMPT, 3)
    assert tr.hidden is None and tr.js_dola is None
    back = Trace.load(tr.save(tmp_path / "t.safetensors"))
    assert back.hidden is None and torch.equal(back.js, tr.js)


def test_corrupt_and_missing_files(llava_trace, tmp_path):
    path = llava_trace.save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFileError, match="cut.safetensors.*truncated or corrupt"):
        Trace.load(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a trace at all")
    with pytest.raises(TraceFileError, match="junk.safetensors"):
        Trace.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Trace.load(tmp_path / "nope.safetensors")


def test_to_frame(llava_trace):
    df = llava_trace.to_frame()
    K, L1 = llava_trace.token_prob.shape
    assert len(df) == K * L1
    row = df[(df.token_index == 2) & (df.layer == 1)].iloc[0]
    assert row.prob == pytest.approx(llava_trace.token_prob[2, 1].item())
    assert row.js_next == pytest.approx(llava_trace.js[2, 1].item())
    assert df[df.layer == L1 - 1].js_next.isna().all()


def test_bad_arguments(tiny_llava, image):
    with pytest.raises(ValueError, match="max_new_tokens"):
        trace(tiny_llava, image, PROMPT, 0)
    with pytest.raises(ValueError, match="norm policy"):
        trace(tiny_llava, image, PROMPT, 2, lens_norm="bogus")


def test_trace_builds_the_lens_once_per_model_and_norm(image, monkeypatch):
    from conftest import make_tiny_llava

    from lvlm_kit import lens as lens_mod

    built = []
    init = lens_mod.Lens.__init__

    def counting(self, *args, **kwargs):
        built.append(args[1:] or kwargs.get("norm"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(lens_mod.Lens, "__init__", counting)
    loaded = make_tiny_llava()
    for _ in range(3):
        trace(loaded, image, "Describe the image.", 3)
    trace(loaded, image, "Describe the image.", 3, lens_norm="raw")
    assert len(built) == 2


@pytest.mark.parametrize("V", [32000, 32064, 5003, 300])
def test_topk_last_equals_torch_topk(V):
    g = torch.Generator().manual_seed(V)
    x = torch.randn(3, 7, V, generator=g)
    x[0, 0, -1] = 50.0  # the largest entry in the short last block
    x[1, 2, :10] = torch.arange(10.0) + 20  # the whole top-10 in one block
    values, ids = topk_last(x, 10)
    want = x.topk(10, dim=-1)
    assert torch.equal(values, want.values) and torch.equal(ids, want.indices)
    assert ids.shape == (3, 7, 10)


def _trained_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "a small café next to the naïve boat 🚤 and two fish 🐟.",
        "the boat's sail, isn't it?",
    ]
    tok = Tokenizer(models.BPE())
    if kind == "bytes":  # GPT-2 style: characters split across byte tokens
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # sentencepiece style: "▁" marks a word start
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    tok.train_from_iterator(
        corpus * 5, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet)
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("kind", ["bytes", "metaspace"])
def test_linear_offsets_equal_prefix_decoding(kind):
    tok = _trained_tokenizer(kind)
    g = torch.Generator().manual_seed(0)
    texts = ["a small café next to the naïve boat 🚤 and two fish 🐟.", "isn't it the boat's sail?"]
    sequences = [tok.encode(t) for t in texts]
    sequences += [torch.randint(0, len(tok), (40,), generator=g).tolist() for _ in range(20)]
    for ids in sequences:
        assert _decode_with_offsets(tok, ids) == _decode_prefixes(tok, ids)
    text, offsets = _decode_with_offsets(tok, sequences[0])
    last = tok.decode(sequences[0][-1:]).strip()  # "." or "🐟." as one token
    assert text.strip() == texts[0] and text[offsets[-1] :] == last


@pytest.mark.parametrize("which", ["tiny_llava", "tiny_llama"])
def test_recorded_residuals_equal_hidden_states_at_every_step(which, request, image):
    # The recorder keeps decode-step outputs without copying them: they must still hold
    # what each step computed once generation is over (HF's raw pre-norm states, except the
    # last entry, which HF returns after the final norm).
    loaded = request.getfixturevalue(which)
    inputs, _ = prepare_inputs(loaded, image if loaded.is_vision else None, PROMPT)
    config = greedy_config(loaded.model, 6)
    config.output_hidden_states = config.return_dict_in_generate = True
    with ResidualRecorder(loaded.anatomy) as rec, torch.inference_mode():
        out = loaded.model.generate(**inputs, generation_config=config)
    got = rec.stacked()  # [K, L+1, d]
    want = torch.stack([torch.stack([h[0, -1] for h in step]) for step in out.hidden_states])
    assert got.shape == want.shape == (6, loaded.anatomy.n_layers + 1, got.shape[-1])
    torch.testing.assert_close(got[:, :-1], want[:, :-1], atol=0, rtol=0)
    normed = loaded.anatomy.final_norm(got[:, -1])
    torch.testing.assert_close(normed, want[:, -1], atol=1e-6, rtol=1e-6)


def test_forced_tokens_are_read_by_the_other_model(llava_trace, tiny_llava, image):
    from conftest import make_tiny_llava

    # Forcing a model's own greedy tokens changes nothing.
    same = trace(tiny_llava, image, PROMPT, 12, force=llava_trace.token_ids, dola_compat=True)
    assert torch.equal(same.token_ids, llava_trace.token_ids)
    torch.testing.assert_close(same.token_prob, llava_trace.token_prob)
    torch.testing.assert_close(same.js, llava_trace.js)
    # Another model emits exactly those tokens; its lens reads its own residual stream, so
    # the emitted token is not its own top-1 everywhere (greedy, it says something else).
    other = make_tiny_llava(seed=5)
    free = trace(other, image, PROMPT, 12, watch=[int(llava_trace.token_ids[0])])
    forced = trace(other, image, PROMPT, 30, force=llava_trace.token_ids)
    assert free.token_ids.tolist() != llava_trace.token_ids.tolist()
    assert forced.token_ids.tolist() == llava_trace.token_ids.tolist()
    assert forced.generated_text == llava_trace.generated_text and forced.meta["forced"]
    assert int((forced.token_rank[:, -1] > 0).sum()) > 0
    # The prefill step is the same prompt, so step 0's lens equals the free run's.
    torch.testing.assert_close(forced.token_prob[0], free.prob_of(0, int(forced.token_ids[0])))
    with pytest.raises(ValueError, match="max_new_tokens"):
        trace(other, image, PROMPT, 4, force=llava_trace.token_ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trace(other, image, PROMPT, 4, force=[10**6])


def test_a_word_is_watched_by_its_first_token(tiny_llava):
    tok = tiny_llava.tokenizer
    V = tiny_llava.lens().vocab_size
    boat = word_token_id(tok, "boat", V)
    assert boat == tok.encode("boat", add_special_tokens=False)[0]
    with pytest.raises(ValueError, match="'zebra' is not in the model's vocabulary"):
        word_token_id(tok, "zebra", V)
    with pytest.raises(ValueError, match="encodes to no token"):
        word_token_id(tok, "", V)
    with pytest.raises(ValueError, match=f"encodes to id {boat}, outside the vocabulary"):
        word_token_id(tok, "boat", boat)
