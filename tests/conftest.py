import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Two test workers share the cores with the notebook kernels they start: idle OpenMP threads
# must sleep, not spin (spinning threads of one process starve the other's, many times over).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lvlm_kit import LoadedModel
from lvlm_kit.anatomy import resolve_anatomy
from lvlm_kit.inputs import prepare_inputs
from lvlm_kit.surgery import ResidualRecorder
from lvlm_kit.testbed.model import LlavaShape, build_model, llava_processor
from lvlm_kit.testbed.tokenizer import build_word_tokenizer
from lvlm_kit.tracing import Trace

WORDS = (
    "a an the red blue green boat sun tree cat is are left right of above next to and , "
    "describe image what colour color how many one two three there in"
).split()
TINY = LlavaShape(
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    vision_layers=2,
    vision_heads=2,
    hidden=64,
    layers=4,
    heads=4,
    kv_heads=2,
    intermediate=128,
    max_positions=256,
)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_tiny_llava(seed: int = 0) -> LoadedModel:
    tok = build_word_tokenizer(WORDS)
    model = build_model(TINY, tok, seed=seed)
    return LoadedModel(model, llava_processor(TINY, tok), resolve_anatomy(model), "tiny-llava")


def make_tiny_llama(seed: int = 0) -> LoadedModel:
    tok = build_word_tokenizer(WORDS)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return LoadedModel(model, tok, resolve_anatomy(model), "tiny-llama")


@pytest.fixture(scope="module")
def tiny_llava() -> LoadedModel:
    return make_tiny_llava()


@pytest.fixture(scope="module")
def tiny_llama() -> LoadedModel:
    return make_tiny_llama()


def save_loaded(loaded: LoadedModel, path):
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def saved_llava(tiny_llava, tmp_path_factory):
    return save_loaded(tiny_llava, tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def saved_llama(tiny_llama, tmp_path_factory):
    return save_loaded(tiny_llama, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.RandomState(1).rand(40, 48, 3) * 255).astype(np.uint8)


ROOT = Path(__file__).resolve().parent.parent


def build_wheel(dest: Path) -> Path:
    """Build the kit's wheel from the checkout into ``dest``; return its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dest), str(ROOT)],
        check=True,
    )
    (wheel,) = Path(dest).glob("lvlm_kit-*.whl")
    return wheel


def fake_trace(text_tokens, token_prob, watch_ids=None, watch_probs=None, js=None):
    """A Trace with hand-set arrays (for analyses that only read a Trace)."""
    text, offsets = "", []
    for t in text_tokens:  # "##x" continues the previous word (a subword piece)
        piece = t[2:] if t.startswith("##") else t if not text or t in ".," else " " + t
        offsets.append(len(text) + piece.startswith(" "))
        text += piece
    K, L1 = token_prob.shape
    z = torch.zeros(K, L1)
    return Trace(
        model_name="fake",
        lens_norm="final_norm",
        prompt="",
        prompt_text="",
        generated_text=text,
        tokens=list(text_tokens),
        vocab={},
        token_ids=torch.arange(K),
        topk_ids=torch.zeros(K, L1, 1, dtype=torch.long),
        topk_probs=z[..., None],
        token_prob=token_prob,
        token_rank=z.long(),
        entropy=z,
        js=z[:, 1:] if js is None else js,
        prompt_ids=torch.zeros(1, dtype=torch.long),
        image_positions=torch.zeros(1, dtype=torch.bool),
        offsets=offsets,
        watch_ids=watch_ids,
        watch_probs=watch_probs,
    )


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, tmp_path: Path, parameters: dict, timeout: int = 240) -> None:
    """Execute ``notebooks/<name>.ipynb`` with papermill; the executed copy goes to tmp_path."""
    import papermill as pm

    pm.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.ipynb"),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        execution_timeout=timeout,
        start_timeout=120,
    )


def contrast_step(loaded: LoadedModel, image, prompt: str, contrast):
    """One step through a LayerContrast: ``(its scores [V], lens log-probs [L+1, V])``."""
    inputs, _ = prepare_inputs(loaded, image, prompt)
    with contrast, ResidualRecorder(loaded.anatomy) as rec, torch.inference_mode():
        logits = loaded.model(**inputs).logits[:, -1]
        out = contrast(inputs["input_ids"], logits)
    return out[0], loaded.lens().log_probs(rec.stacked())[0]
