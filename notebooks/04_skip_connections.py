# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Skip connections during generation (paper §4, Fig. 5)
#
# **Paper claims.** skip.1 (jump from the critical layers to the mutation layers, dropping the stable middle) keeps the output almost unchanged, hallucinations included; skip.2 (skip only the mutation layers) keeps the description and corrects some hallucinations; skip.3 (jump from the critical layers to the last few layers) is similar but hallucinates more. Layer lists are derived from detected stages.
#
# Run on LLaVA-1.5-7B (GPU):
# `papermill 04_skip_connections.ipynb out.ipynb -p MODEL llava-hf/llava-1.5-7b-hf -p QUANTIZATION 4bit -p DATA /path/to/AMBER`

# %%
# Setup: locally the kit is installed by `make reproduce` / `make test`. In Colab, first
# clone the lvlm-kit repository to /content/lvlm-kit; this cell then installs it.
import sys

if "google.colab" in sys.modules:
    import subprocess

    kit = "/content/lvlm-kit"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", kit], check=True)

# %% tags=["parameters"]
MODEL = "testbed"  # hub id (llava-hf/llava-1.5-7b-hf), local folder, or "testbed"
QUANTIZATION = None  # None, "4bit" or "8bit" (bitsandbytes, CUDA only)
DEVICE = "auto"  # "auto" (GPU if any), "cpu", "cuda", or an accelerate device map
DTYPE = "auto"  # "auto": float32 on the CPU, the checkpoint's on a GPU; or "bfloat16", ...
LENS_NORM = "final_norm"  # "final_norm" (default) or "raw" (the paper authors' code)
DATA = "testbed"  # "testbed", an AMBER-layout folder, or a folder of images
PROMPT = "Please describe this image in detail."
MAX_NEW_TOKENS = 48
N_IMAGES = 8
SEED = 0
OUTPUT_DIR = None  # default: <repo>/outputs/04_skip_connections

# %% [markdown]
# Check the parameters (a bad value stops here, before anything loads), load the model named by `MODEL` (the embedded testbed by default) and make the output folder; figures and `metrics.json` are written there.

# %%
import torch

from lvlm_kit import data, notebook, plots, trace

OUTPUT_DIR, lm = notebook.start(
    "04_skip_connections",
    MODEL=MODEL,
    QUANTIZATION=QUANTIZATION,
    DEVICE=DEVICE,
    DTYPE=DTYPE,
    LENS_NORM=LENS_NORM,
    DATA=DATA,
    PROMPT=PROMPT,
    MAX_NEW_TOKENS=MAX_NEW_TOKENS,
    N_IMAGES=N_IMAGES,
    SEED=SEED,
    OUTPUT_DIR=OUTPUT_DIR,
)

# %% [markdown]
# ## 1. Detect the stages

# %%
import pandas as pd
from tqdm.auto import tqdm

from lvlm_kit.stages import detect_stages, token_kind

import difflib

from lvlm_kit.generation import generate_texts
from lvlm_kit.hallucination import score_generative
from lvlm_kit.stages import PRESETS, skip_preset

amber = data.resolve_amber(DATA, OUTPUT_DIR, N_IMAGES, SEED)
images = [amber.image_path(q) for q in amber.queries]
traces = [
    trace(lm, im, PROMPT, MAX_NEW_TOKENS, lens_norm=LENS_NORM) for im in tqdm(images, desc="trace")
]
st = detect_stages(traces)
presets = {}
for name in PRESETS:
    try:
        presets[name] = skip_preset(st, name)
    except ValueError as err:
        print(f"{name}: {err}")
print(
    f"critical layer {st.critical_layer}, mutation layers {st.mutation_layers}; skipped decoder layers: {presets}"
)

# %% [markdown]
# ## 2. Generate with each skip preset

# %%
texts = {"plain": [t.generated_text for t in traces]}
for name, layers in presets.items():
    texts[name] = generate_texts(
        lm, images, [PROMPT] * len(images), MAX_NEW_TOKENS, skip=layers, desc=name
    )
pd.DataFrame({name: t[:3] for name, t in texts.items()})

# %% [markdown]
# ## 3. Fig. 5: what each preset keeps and what it hallucinates

# %%
results = {}
for name, t in texts.items():
    s = score_generative([{"id": q["id"], "response": r} for q, r in zip(amber.queries, t)], amber)
    overlap = sum(
        difflib.SequenceMatcher(None, a.split(), b.split()).ratio()
        for a, b in zip(t, texts["plain"])
    ) / len(t)
    results[name] = {**s.as_dict(), "overlap_with_plain": overlap, "skipped": presets.get(name, [])}
notebook.show(plots.decoding_bars(results), OUTPUT_DIR, "fig5_skip_presets")
pd.DataFrame(results).T

# %% [markdown]
# ## Headline numbers (recorded to `OUTPUT_DIR/metrics.json`)

# %%
metrics = notebook.record(
    {
        "critical_layer": st.critical_layer,
        "mutation_layers": st.mutation_layers,
        "presets": results,
    },
    OUTPUT_DIR,
)
if "skip1" in results:
    print(
        f"skip.1 keeps the output (word overlap {results['skip1']['overlap_with_plain']:.2f}): "
        f"{'shown' if results['skip1']['overlap_with_plain'] >= 0.8 else 'NOT shown'} on {MODEL}."
    )
if "skip2" in results:
    print(
        f"skip.2 lowers CHAIR ({results['plain']['chair']:.3f} -> {results['skip2']['chair']:.3f}): "
        f"{'shown' if results['skip2']['chair'] < results['plain']['chair'] else 'NOT shown'} on {MODEL}."
    )
if "skip1" in results and "skip3" in results:
    print(
        f"skip.3 hallucinates more than skip.1 (CHAIR {results['skip3']['chair']:.3f} vs "
        f"{results['skip1']['chair']:.3f}): "
        f"{'shown' if results['skip3']['chair'] > results['skip1']['chair'] else 'NOT shown'} on {MODEL}."
    )
metrics
