import json
import os

import pytest
import torch
from transformers import GPT2Config

from lvlm_kit import load_model, trace
from lvlm_kit import sources as sources_mod


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
    monkeypatch.setitem(sources_mod.SHORTCUTS, "testbed", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="lvlm_kit.testbed.train"):
        load_model("testbed")
    monkeypatch.setitem(sources_mod.SHORTCUTS, "testbed", saved_llava)
    assert load_model("testbed").name == "testbed"


def fill_hub_cache(cache, repo_id: str, folder) -> None:
    """Put ``folder``'s files in a Hugging Face cache (HF_HUB_CACHE layout) as ``repo_id``."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


HUB_IDS = ["llava-hf/llava-1.5-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf", "lmsys/vicuna-7b-v1.5"]


def test_hub_ids_with_dots_load_from_the_cache(saved_llava, saved_llama, tmp_path):
    import subprocess
    import sys

    from transformers import MllamaConfig

    cache = tmp_path / "hub"
    fill_hub_cache(cache, HUB_IDS[0], saved_llava)
    fill_hub_cache(cache, HUB_IDS[1], saved_llava)
    fill_hub_cache(cache, HUB_IDS[2], saved_llama)
    mllama = tmp_path / "mllama"
    MllamaConfig().save_pretrained(mllama)
    fill_hub_cache(cache, "meta-llama/Llama-3.2-11B-Vision-Instruct", mllama)
    script = f"""
from lvlm_kit import load_model
for name in {HUB_IDS!r}:
    lm = load_model(name)
    print(name, lm.anatomy.model_type, lm.anatomy.n_layers, lm.name)
try:
    load_model("meta-llama/Llama-3.2-11B-Vision-Instruct")
except NotImplementedError as exc:
    print("mllama:", exc)
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[:3] == [
        "llava-hf/llava-1.5-7b-hf llava 4 llava-hf/llava-1.5-7b-hf",
        "llava-hf/llava-v1.6-mistral-7b-hf llava 4 llava-hf/llava-v1.6-mistral-7b-hf",
        "lmsys/vicuna-7b-v1.5 llama 4 lmsys/vicuna-7b-v1.5",
    ]
    # The config was found in the cache: the refusal names the architecture and why, not a
    # folder, before any weight is looked for.
    assert lines[3].startswith("mllama: model_type='mllama' cannot be analysed by lvlm_kit")
    assert "cross-attention" in lines[3]


def test_paths_that_look_local_are_never_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("./llava-1.5", "/no/such/folder", "~/no-such-model-folder", tmp_path / "x.y"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            sources_mod.resolve_source(name)
    assert sources_mod.resolve_source("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    (tmp_path / "org" / "m.v1").mkdir(parents=True)  # an existing folder wins over a hub id
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        sources_mod.resolve_source("org/m.v1")


def test_dtype_objects_and_a_gpu_device_map_without_gpu(saved_llama):
    loaded = load_model(str(saved_llama), dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype=torch.int8 is unknown"):
        load_model(str(saved_llama), dtype=torch.int8)
    if not torch.cuda.is_available():
        for device_map in ("cuda", "cuda:1", {"": 0}):
            with pytest.raises(RuntimeError, match="CUDA GPU, and this machine has none"):
                load_model(str(saved_llama), device_map=device_map)
