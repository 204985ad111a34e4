import json

import pytest
import torch
from transformers import GPT2Config

from lvlm_kit import load_model, trace
from lvlm_kit import loading as loading_mod
from lvlm_kit.loading import check_quantization_runs, quantization_config


def test_local_llava_round_trip(saved_llava, tiny_llava, image):
    loaded = load_model(saved_llava)
    assert loaded.is_vision and loaded.anatomy.n_layers == 4
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    a = trace(loaded, image, "Describe the image.", 6)
    b = trace(tiny_llava, image, "Describe the image.", 6)
    assert torch.equal(a.token_ids, b.token_ids)
    torch.testing.assert_close(a.token_prob, b.token_prob)


def test_local_causal_lm(saved_llama, tiny_llama):
    loaded = load_model(str(saved_llama), dtype="bfloat16")
    assert not loaded.is_vision and loaded.model.dtype == torch.bfloat16
    assert loaded.anatomy.model_type == "llama"
    tr = trace(loaded, None, "describe the image", 4)
    assert tr.token_prob.dtype == torch.float32


def test_bad_dtype_and_quantization(saved_llava):
    with pytest.raises(ValueError, match="dtype='float8' is unknown"):
        load_model(saved_llava, dtype="float8")
    with pytest.raises(ValueError, match="quantization='3bit' is unknown"):
        load_model(saved_llava, quantization="3bit")


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the no-GPU error path")
@pytest.mark.parametrize("q", ["4bit", "8bit"])
def test_quantization_without_gpu_is_one_clear_error(saved_llava, q):
    with pytest.raises(RuntimeError, match="needs bitsandbytes on a CUDA GPU.*quantization=None"):
        load_model(saved_llava, quantization=q)
    with pytest.raises(RuntimeError, match="CUDA"):
        check_quantization_runs(q)


def test_quantization_configs():
    four = quantization_config("4bit", torch.float16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_use_double_quant and four.bnb_4bit_compute_dtype == torch.float16
    assert quantization_config("8bit").load_in_8bit
    assert quantization_config(None) is None


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist' does not exist"):
        load_model(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(tmp_path)


def test_hub_id_offline_gives_clear_error():
    with pytest.raises(OSError, match="could not load a model config for 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


def test_unsupported_architecture_fails_before_loading_weights(tmp_path):
    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
    with pytest.raises(NotImplementedError, match="'gpt2' is not supported.*Supported: llava"):
        load_model(tmp_path)


def test_shortcut(monkeypatch, saved_llava, tmp_path):
    monkeypatch.setitem(loading_mod.SHORTCUTS, "testbed", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="lvlm_kit.testbed.train"):
        load_model("testbed")
    monkeypatch.setitem(loading_mod.SHORTCUTS, "testbed", saved_llava)
    assert load_model("testbed").name == "testbed"
